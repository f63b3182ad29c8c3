"""Numba kernels of the numba CPU backend: every jitted function, in one file.

(numba's on-disk cache is keyed on the defining file only, so the kernels live next to
the generators they inline; :mod:`kernels.perturb.numba_cpu` is the Python driver.)

**Vector path.** The generators are written once as LLVM IR on vectors of ``LANES``
counters (``llvmlite``, wrapped as numba intrinsics), so every CPU gets SIMD code from
LLVM's own lowering for the host: 4-lane fp64 / int64 on AVX2, 8 on AVX-512, 2 on NEON,
with no dependence on SVML or any vendor math library, and no reliance on the
auto-vectoriser (which left the Philox rounds scalar or in emulated 64-bit multiplies).

- Philox4x32-10 keeps each word in a 64-bit lane whose high half is ignored: the
  ``mulhilo`` of a round is one ``zext``-free 32x32->64 multiply (``vpmuludq``/``umull``),
  its high word a shift, its low word the product itself; words are masked only where a
  value is read (the multiply masks for free).
- Gaussian (the reference's fp64 Box-Muller, far inside the 1e-6 budget:
  |error| < 2e-8 before the fp32 rounding):
  ``ln u = ln(x + 1/2) - 32 ln 2`` with ``x + 1/2`` made exactly from the word's bits
  (``2**52 + x`` as a double, minus ``2**52 - 1/2``); the exponent and a mantissa ``m`` in
  ``[sqrt(1/2), sqrt(2))`` come from integer ops on its bits (musl's normalisation),
  ``ln m = 2 atanh(s) = s (2 + s**2 (2/3 + ... + s**2 2/9))``, ``s = (m - 1)/(m + 1)``,
  ``|s| < 0.172``; ``cos, sin (2 pi u)``: quadrant and offset exactly from the integer
  word (``theta = k pi/2 + phi``, ``|phi| <= pi/4``), Taylor series to ``phi**9`` /
  ``phi**10`` (error < 2e-9), the quadrant applied by a blend and sign-bit flips.
- Rademacher: bit ``b`` of a word shifted into the sign of ``1.0f`` (one vector shift,
  and, or per 8 values).
- Gaussian16: each word's two 16-bit halves index the table of
  :mod:`kernels.perturb.gaussian16` (one vector gather per 8 values); the spec's layout
  puts counter ``q`` of a block in lane ``q``, so the 8 gathered vectors are the block's
  64 values in order, with no transpose.

**Scalar path.** :mod:`kernels.perturb.numba_scalar` states the same formulas element
by element; tests hold the two paths together (Rademacher bitwise, Gaussian to 1 fp32
ulp).

**Tiles.** A tile is ``TILE`` consecutive global elements starting at a multiple of
``TILE``. The launch kernels take a table of fp32 tensors (data pointer, global offset,
size) and run ``prange`` over work items (tensor, tile). A tile that lies wholly in its
tensor is updated while it is drawn, block by block (``p += fl(a * z)``, plain fp32
multiply and add, no fused multiply-add, as the reference specifies; Rademacher updates
agree bitwise); a tile at a tensor's edge is drawn into an fp32 buffer (the same
update on zeros, with a = 1) while the tensor's part of it is prefetched, then added. ``accumulate_tiles`` sums every seed's
``fl(c_k * z_k)`` into a tile buffer as it draws (the same block update, on the buffer),
then adds the buffer once, so the tensor is read and written once per tile whatever
the number of seeds.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from kernels.rng import BLOCK_COUNTERS, M0, M1, MASK32, ROUNDS, STREAMS, W0, W1

TILE = 4096  # elements per tile: a multiple of every block below
LANES = 8  # counters per vector block (LLVM splits it into the host's vector registers)
G_BLOCK = 4 * LANES  # gaussian elements per block (4 per counter)
R_BLOCK = 128 * LANES  # rademacher elements per block (128 per counter)
T_BLOCK = 8 * LANES  # gaussian16 elements per block (8 per counter; the spec's block of 8 counters)
KIND = {"gaussian": 0, "rademacher": 1, "gaussian16": 2}  # the kernels' ``kind`` argument
assert LANES == BLOCK_COUNTERS["gaussian16"], "the gaussian16 layout puts one counter per lane"
_KERNEL = {"parallel": True, "cache": True, "nogil": True, "error_model": "numpy"}  # no fastmath: no FMA in updates
_LN2 = math.log(2.0)
_PI_2_32 = math.pi * 2.0**-32  # phi = (2 d + 1) * pi / 2**32
_GAUSSIAN, _RADEMACHER, _GAUSSIAN16 = STREAMS["gaussian"], STREAMS["rademacher"], STREAMS["gaussian16"]
_SIN = (-1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362880.0)  # phi**3 .. phi**9
_COS = (-0.5, 1.0 / 24.0, -1.0 / 720.0, 1.0 / 40320.0, -1.0 / 3628800.0)  # phi**2 .. phi**10
_ATANH = (2.0, 2.0 / 3.0, 2.0 / 5.0, 2.0 / 7.0, 2.0 / 9.0)  # ln m = s * sum_j c_j s**2j
_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD  # sqrt(1/2) as fp64 bits

# --- vector path: LLVM IR on LANES counters -------------------------------------------

_I32, _I64, _F32, _F64 = ir.IntType(32), ir.IntType(64), ir.FloatType(), ir.DoubleType()


def _splat(b: ir.IRBuilder, scalar: ir.Value, n: int) -> ir.Value:
    """A vector of ``n`` copies of ``scalar``."""
    vt = ir.VectorType(scalar.type, n)
    undef = ir.Constant(vt, ir.Undefined)
    one = b.insert_element(undef, scalar, ir.Constant(_I32, 0))
    return b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_I32, n), [0] * n))


class _Vec:
    """IR builder helpers on vectors of ``LANES`` lanes."""

    def __init__(self, b: ir.IRBuilder):
        self.b = b
        self.i64, self.i32 = ir.VectorType(_I64, LANES), ir.VectorType(_I32, LANES)
        self.f64, self.f32 = ir.VectorType(_F64, LANES), ir.VectorType(_F32, LANES)

    def i(self, value: int) -> ir.Constant:
        return ir.Constant(self.i64, [value] * LANES)

    def f(self, value: float) -> ir.Constant:
        return ir.Constant(self.f64, [float(value)] * LANES)

    def splat(self, scalar: ir.Value) -> ir.Value:
        return _splat(self.b, scalar, LANES)

    def call(self, name: str, *args: ir.Value) -> ir.Value:
        """``llvm.<name>.v<LANES>f64(args)``: an fp64 vector intrinsic."""
        mod, full = self.b.module, f"llvm.{name}.v{LANES}f64"
        fn = mod.globals.get(full) or ir.Function(mod, ir.FunctionType(self.f64, [self.f64] * len(args)), full)
        return self.b.call(fn, list(args))

    def fma(self, x, y, z):  # x * y + z, fused where the CPU has FMA (draw only)
        return self.call("fmuladd", x, y, z)

    def poly(self, x, coeffs):  # coeffs[0] + coeffs[1] x + ... (Horner)
        acc = self.f(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.f(c))
        return acc

    def as_f64(self, x):
        return self.b.bitcast(x, self.f64)

    def as_i64(self, x):
        return self.b.bitcast(x, self.i64)


def philox_ir(b: ir.IRBuilder, first, k0, k1, stream: int):
    """Philox4x32-10 of counters ``first + 0 .. LANES - 1`` (i64 values; keys i64 in
    [0, 2**32)) -> 4 word vectors (i64 lanes; only the low 32 bits are the word)."""
    v = _Vec(b)
    c = b.add(v.splat(first), ir.Constant(v.i64, list(range(LANES))))
    c0, c1, c2, c3 = c, b.lshr(c, v.i(32)), v.i(stream), v.i(0)
    mask = v.i(MASK32)
    for _ in range(ROUNDS):
        p0 = b.mul(b.and_(c0, mask), v.i(M0))  # one 32x32->64 multiply per lane
        p1 = b.mul(b.and_(c2, mask), v.i(M1))
        c0 = b.xor(b.xor(b.lshr(p1, v.i(32)), c1), v.splat(k0))
        c2 = b.xor(b.xor(b.lshr(p0, v.i(32)), c3), v.splat(k1))
        c1, c3 = p1, p0
        k0 = b.and_(b.add(k0, ir.Constant(_I64, W0)), ir.Constant(_I64, MASK32))
        k1 = b.and_(b.add(k1, ir.Constant(_I64, W1)), ir.Constant(_I64, MASK32))
    return c0, c1, c2, c3


def _radius_ir(v: _Vec, x):
    """sqrt(-2 ln u), u = (x + 1/2) 2**-32, x the low word of each lane."""
    b = v.b
    big = float(2**52)
    xh = b.fsub(v.as_f64(b.or_(b.and_(x, v.i(MASK32)), v.as_i64(v.f(big)))), v.f(big - 0.5))  # x + 1/2, exact
    ix = b.add(v.as_i64(xh), v.i(0x3FF0000000000000 - _SQRT_HALF_BITS))
    e = b.fsub(v.as_f64(b.or_(b.lshr(ix, v.i(52)), v.as_i64(v.f(big)))), v.f(big + 1023 + 32))  # exponent - 32
    m = v.as_f64(b.add(b.and_(ix, v.i(0xFFFFFFFFFFFFF)), v.i(_SQRT_HALF_BITS)))  # [sqrt(1/2), sqrt(2))
    f = b.fsub(m, v.f(1.0))
    s = b.fdiv(f, b.fadd(f, v.f(2.0)))
    q = v.poly(b.fmul(s, s), [-2.0 * c for c in _ATANH])  # -2 ln m = s * q
    return v.call("sqrt", v.fma(e, v.f(-2.0 * _LN2), b.fmul(s, q)))


def _cos_sin_ir(v: _Vec, x):
    """(cos, sin) of 2 pi u, u = (x + 1/2) 2**-32, reduced exactly on the integer word."""
    b = v.b
    t = b.add(x, v.i(0x20000000))  # bits 30, 31: the nearest quarter turn k
    d = b.sub(b.shl(b.and_(t, v.i(0x3FFFFFFF)), v.i(1)), v.i(0x3FFFFFFF))  # 2 (offset) + 1, |.| < 2**30
    magic = 1.5 * 2.0**52  # d as a double: bits of magic + d, minus magic
    phi = b.fmul(b.fsub(v.as_f64(b.add(d, v.as_i64(v.f(magic)))), v.f(magic)), v.f(_PI_2_32))
    h = b.fmul(phi, phi)
    sn = v.fma(b.fmul(phi, h), v.poly(h, list(_SIN)), phi)
    cs = v.fma(h, v.poly(h, list(_COS)), v.f(1.0))
    odd = b.icmp_signed("<", b.shl(t, v.i(33)), v.i(0))  # k odd: swap
    c, s = b.select(odd, sn, cs), b.select(odd, cs, sn)
    sign = v.i(1 << 63)
    flip_c = b.and_(b.shl(b.xor(t, b.shl(t, v.i(1))), v.i(32)), sign)  # k in {1, 2}
    flip_s = b.and_(b.shl(t, v.i(32)), sign)  # k in {2, 3}
    return v.as_f64(b.xor(v.as_i64(c), flip_c)), v.as_f64(b.xor(v.as_i64(s), flip_s))


def gaussian_ir(b: ir.IRBuilder, out, words, a) -> None:
    """out[0 : G_BLOCK] (a float*) += fl(a * z) for the gaussian z of ``words`` (4
    vectors) and the fp32 value ``a``: a plain fp32 multiply and add (no fused
    multiply-add), as the reference specifies. On zeros with a = 1 this writes z."""
    v = _Vec(b)
    x0, x1, x2, x3 = words
    r0, r1 = _radius_ir(v, x0), _radius_ir(v, x2)
    (c0, s0), (c1, s1) = _cos_sin_ir(v, x1), _cos_sin_ir(v, x3)
    outs = [b.fptrunc(b.fmul(r, w), v.f32) for r, w in ((r0, c0), (r0, s0), (r1, c1), (r1, s1))]
    pair = ir.Constant(ir.VectorType(_I32, 2 * LANES), [j for q in range(LANES) for j in (q, LANES + q)])
    ab, cd = b.shuffle_vector(outs[0], outs[1], pair), b.shuffle_vector(outs[2], outs[3], pair)
    quad = [j for q in range(LANES) for j in (2 * q, 2 * q + 1, 2 * LANES + 2 * q, 2 * LANES + 2 * q + 1)]
    z = b.shuffle_vector(ab, cd, ir.Constant(ir.VectorType(_I32, G_BLOCK), quad))  # element 4q + j
    ptr = b.bitcast(out, z.type.as_pointer())
    b.store(b.fadd(b.load(ptr, align=4), b.fmul(_splat(b, a, G_BLOCK), z)), ptr, align=4)


def rademacher_ir(b: ir.IRBuilder, out, words, a) -> None:
    """out[0 : R_BLOCK] (a float*) += fl(a * z) for z = 1 - 2 * bit of ``words``
    (element 128q + 32j + bit): ``a`` with its sign flipped where z = -1, exact."""
    v32, f32x32 = ir.VectorType(_I32, 32), ir.VectorType(_F32, 32)
    shifts = ir.Constant(v32, [31 - bit for bit in range(32)])  # bit -> the sign bit
    sign, magnitude = ir.Constant(v32, [1 << 31] * 32), _splat(b, b.bitcast(a, _I32), 32)
    for q in range(LANES):
        for j, w in enumerate(words):
            word = b.trunc(b.extract_element(w, ir.Constant(_I32, q)), _I32)
            scaled = b.bitcast(b.xor(b.and_(b.shl(_splat(b, word, 32), shifts), sign), magnitude), f32x32)
            ptr = b.bitcast(b.gep(out, [ir.Constant(_I64, 128 * q + 32 * j)]), f32x32.as_pointer())
            b.store(b.fadd(b.load(ptr, align=4), scaled), ptr, align=4)


def gaussian16_ir(b: ir.IRBuilder, out, words, a, table) -> None:
    """out[0 : T_BLOCK] (a float*) += fl(a * z), z = table[16-bit half of a word]:
    element 16 j + 8 h + q is half h of word j of counter q (``table``: float*)."""
    v = _Vec(b)
    f32 = ir.VectorType(_F32, LANES)
    ptrs_t = ir.VectorType(_F32.as_pointer(), LANES)
    name = f"llvm.masked.gather.v{LANES}f32.v{LANES}p0"
    gather = b.module.globals.get(name) or ir.Function(
        b.module, ir.FunctionType(f32, [ptrs_t, _I32, ir.VectorType(ir.IntType(1), LANES), f32]), name
    )
    every, zero = ir.Constant(ir.VectorType(ir.IntType(1), LANES), [1] * LANES), ir.Constant(f32, [0.0] * LANES)
    base, scale = v.splat(b.ptrtoint(table, _I64)), _splat(b, a, LANES)
    for j, w in enumerate(words):
        for h in range(2):
            index = b.and_(b.lshr(w, v.i(16 * h)), v.i(0xFFFF))
            ptrs = b.inttoptr(b.add(base, b.shl(index, v.i(2))), ptrs_t)  # table + 4 * index
            z = b.call(gather, [ptrs, ir.Constant(_I32, 4), every, zero])
            ptr = b.bitcast(b.gep(out, [ir.Constant(_I64, LANES * (2 * j + h))]), f32.as_pointer())
            b.store(b.fadd(b.load(ptr, align=4), b.fmul(scale, z)), ptr, align=4)


def _f32_at(ctx, b, arr_type, arr, at):
    """The float* of ``arr[at]`` (a numba fp32 array)."""
    return b.gep(ctx.make_array(arr_type)(ctx, b, arr).data, [at])


def _add_block_intrinsic(name: str, stream: int, fill):
    """A numba intrinsic ``name(p, at, first, k0, k1, a)``: p[at : at + block] +=
    fl(a * z) for the z of counters first .. first + LANES - 1 (a: fp32), made while
    the values are drawn."""

    def block(typingctx, p, at, first, k0, k1, a):
        def codegen(ctx, b, sig, args):
            words = philox_ir(b, args[2], args[3], args[4], stream)
            fill(b, _f32_at(ctx, b, sig.args[0], args[0], args[1]), words, args[5])
            return ctx.get_dummy_value()

        return types.void(p, types.int64, types.int64, types.int64, types.int64, types.float32), codegen

    block.__name__ = block.__qualname__ = name
    return intrinsic(block)


gaussian_add_block = _add_block_intrinsic("gaussian_add_block", _GAUSSIAN, gaussian_ir)
rademacher_add_block = _add_block_intrinsic("rademacher_add_block", _RADEMACHER, rademacher_ir)


@intrinsic
def gaussian16_add_block(typingctx, p, at, first, k0, k1, a, table):
    """p[at : at + T_BLOCK] += fl(a * z) for the gaussian16 z of counters first ..
    first + LANES - 1 (``first`` a multiple of 8; table: the (65536,) fp32 table)."""

    def codegen(ctx, b, sig, args):
        words = philox_ir(b, args[2], args[3], args[4], _GAUSSIAN16)
        table = _f32_at(ctx, b, sig.args[6], args[6], ir.Constant(_I64, 0))
        gaussian16_ir(b, _f32_at(ctx, b, sig.args[0], args[0], args[1]), words, args[5], table)
        return ctx.get_dummy_value()

    return types.void(p, types.int64, types.int64, types.int64, types.int64, types.float32, table), codegen


@intrinsic
def gaussian_from_words(typingctx, z, at, w):
    """z[at : at + G_BLOCK] += the gaussian values of given words: w (4 * LANES,) int64,
    word j of counter q at w[j * LANES + q] (tests feed it the edge words)."""

    def codegen(ctx, b, sig, args):
        vt = ir.VectorType(_I64, LANES)
        data = ctx.make_array(sig.args[2])(ctx, b, args[2]).data
        at = [b.gep(data, [ir.Constant(_I64, j * LANES)]) for j in range(4)]
        words = [b.load(b.bitcast(x, vt.as_pointer()), align=8) for x in at]
        gaussian_ir(b, _f32_at(ctx, b, sig.args[0], args[0], args[1]), words, ir.Constant(_F32, 1.0))
        return ctx.get_dummy_value()

    return types.void(z, types.int64, w), codegen


# --- tiles and launches -----------------------------------------------------------------


@intrinsic
def _prefetch(typingctx, arr, index):
    """Hint: fetch the cache line of arr[index] for writing (llvm.prefetch; no fault)."""

    def codegen(ctx, builder, sig, args):
        data = ctx.make_array(sig.args[0])(ctx, builder, args[0]).data
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)  # name mangled per LLVM
        rw_locality_data = [ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), i8p), *rw_locality_data])
        return ctx.get_dummy_value()

    return types.void(arr, index), codegen


@njit(inline="always")
def _prefetch_range(p, lo, hi):
    """Prefetch p[lo:hi], one 64-byte line (16 fp32) per step."""
    for i in range(lo, hi, 16):
        _prefetch(p, np.uint64(i))


@njit(inline="always")
def _add_tile(dst, at, base, k0, k1, a, kind, table):
    """dst[at : at + TILE] += fl(a * z) for global elements base .. base + TILE - 1 of
    distribution ``kind`` (:data:`KIND`)."""
    if kind == 0:
        for o in range(0, TILE, G_BLOCK):
            gaussian_add_block(dst, at + o, (base + o) // 4, k0, k1, a)
    elif kind == 2:
        for o in range(0, TILE, T_BLOCK):
            gaussian16_add_block(dst, at + o, (base + o) // 8, k0, k1, a, table)
    else:
        for o in range(0, TILE, R_BLOCK):
            rademacher_add_block(dst, at + o, (base + o) // 128, k0, k1, a)


@njit(cache=True, nogil=True, error_model="numpy")
def draw_tile(z, base, k0, k1, kind, table):
    """z: (TILE,) fp32 <- z of global elements base .. base + TILE - 1 (0 + fl(1 * z))."""
    z[:] = 0.0
    _add_tile(z, 0, base, k0, k1, np.float32(1.0), kind, table)


@intrinsic
def _f32_ptr(typingctx, address):
    """int64 address -> float32* (for ``numba.carray``)."""
    return types.CPointer(types.float32)(types.int64), lambda ctx, b, sig, args: b.inttoptr(
        args[0], ir.FloatType().as_pointer()
    )


@njit(inline="always")
def _add(p, offset, base, src, a):
    """p[g - offset] += fl(a * src[g - base]) for the global g of tile ``base`` inside p."""
    lo, hi = max(base, offset), min(base + TILE, offset + p.size)
    at, zt = np.uint64(lo - offset), np.uint64(lo - base)  # unsigned: no wraparound test
    for j in range(np.uint64(hi - lo)):
        p[at + j] += a * src[zt + j]


@njit(**_KERNEL)
def perturb_tiles(addrs, offsets, sizes, items, k0, k1, a, kind, table):
    """Tensor i: ``sizes[i]`` fp32 at ``addrs[i]``, global elements from ``offsets[i]``;
    items: (W, 2) int64 rows (tensor, tile). p += a * z, a fp32; kind: :data:`KIND`;
    table: the gaussian16 table (read only for kind 2)."""
    for w in prange(items.shape[0]):
        i, base = items[w, 0], items[w, 1] * TILE
        p, offset = carray(_f32_ptr(addrs[i]), sizes[i]), offsets[i]  # (n_i,) view
        shift = base - offset
        lo, hi = max(shift, 0), min(shift + TILE, p.size)  # the tile's part of p
        if hi - lo == TILE:  # a whole tile: add while drawing, no tile buffer
            _add_tile(p, lo, base, k0, k1, a, kind, table)
        else:  # a tensor's edge: draw the tile, then add its part
            _prefetch_range(p, lo, hi)
            z = np.empty(TILE, np.float32)
            draw_tile(z, base, k0, k1, kind, table)
            _add(p, offset, base, z, a)


@njit(**_KERNEL)
def accumulate_tiles(addrs, offsets, sizes, items, keys, coeffs, kind, table):
    """As :func:`perturb_tiles`; keys: (S, 2) int64 Philox keys; coeffs: (S,) fp32.
    Per item: acc = sum_k fl(c_k * z_k) in order k, then p += acc once."""
    for w in prange(items.shape[0]):
        i, base = items[w, 0], items[w, 1] * TILE
        p, offset = carray(_f32_ptr(addrs[i]), sizes[i]), offsets[i]
        shift = base - offset
        lo, hi = max(shift, 0), min(shift + TILE, p.size)
        _prefetch_range(p, lo, hi)  # read once the seeds are summed; fetch it meanwhile
        acc = np.zeros(TILE, np.float32)
        for k in range(keys.shape[0]):  # acc += fl(c_k * z_k) while drawing z_k
            _add_tile(acc, 0, base, keys[k, 0], keys[k, 1], coeffs[k], kind, table)
        _add(p, offset, base, acc, np.float32(1.0))
