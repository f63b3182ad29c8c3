"""The scalar path of the numba backend: the generators of
:mod:`kernels.perturb.numba_kernels` element by element, in plain numba.

:func:`draw_tile_scalar` fills a tile as :func:`kernels.perturb.numba_kernels.draw_tile`
does, one element at a time, from :func:`_philox`, :func:`radius` and :func:`cos_sin`
(the formulas of the reference, evaluated with cheap fp64 pieces: ``ln`` from the
exponent and ``2 atanh`` of the mantissa, ``cos``/``sin`` from the quadrant and a Taylor
series on the offset; |error| < 2e-8 before the fp32 rounding). It is the readable
statement the vector path is tested against, not a runtime path.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from kernels.perturb.numba_kernels import TILE
from kernels.rng import M0, M1, MASK32, STREAMS, W0, W1

_GEN = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract"}}
_LN2 = math.log(2.0)
_PI_2_32 = math.pi * 2.0**-32  # phi = (2 d + 1) * pi / 2**32
_GAUSSIAN, _RADEMACHER, _GAUSSIAN16 = STREAMS["gaussian"], STREAMS["rademacher"], STREAMS["gaussian16"]


@intrinsic
def _bits(typingctx, x):
    """float64 -> its int64 bit pattern."""
    return types.int64(types.float64), lambda ctx, b, sig, args: b.bitcast(args[0], ir.IntType(64))


@intrinsic
def _float(typingctx, x):
    """int64 bit pattern -> float64."""
    return types.float64(types.int64), lambda ctx, b, sig, args: b.bitcast(args[0], ir.DoubleType())


@njit(inline="always")
def _philox(c, stream, k0, k1):
    """Philox4x32-10 of counter (c mod 2**32, c >> 32, stream, 0); uint32 words in int64."""
    c0, c1, c2, c3 = c & MASK32, c >> 32, stream, 0
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2  # wrap mod 2**64; the masks below recover the words
        c0, c1, c2, c3 = ((p1 >> 32) & MASK32) ^ c1 ^ k0, p1 & MASK32, ((p0 >> 32) & MASK32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return c0, c1, c2, c3


@njit(inline="always", fastmath={"contract"})
def radius(x):
    """sqrt(-2 ln u(x)), u(x) = (x + 1/2) 2**-32, in fp64."""
    b = _bits((x + 0.5) * 2.0**-32)
    e = (b >> 52) - 1023  # u > 0: no sign bit
    m = _float((b & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000)  # [1, 2)
    big = m > 1.4142135623730951
    m = m * 0.5 if big else m
    e = e + 1 if big else e
    f = m - 1.0  # exact
    s = f / (2.0 + f)
    s2 = s * s
    q = ((((2.0 / 9.0) * s2 + 2.0 / 7.0) * s2 + 2.0 / 5.0) * s2 + 2.0 / 3.0) * s2 + 2.0
    return math.sqrt(-2.0 * (e * _LN2 + s * q))


@njit(inline="always", fastmath={"contract"})
def cos_sin(x):
    """(cos, sin) of 2 pi u(x) in fp64, reduced exactly on the integer word."""
    t = x + 0x20000000
    k = (t >> 30) & 3  # nearest quarter turn
    d = (t & 0x3FFFFFFF) - 0x20000000  # offset from it, in [-2**29, 2**29)
    phi = (2 * d + 1) * _PI_2_32
    h = phi * phi
    sn = phi + phi * h * (((h * (1.0 / 362880.0) - 1.0 / 5040.0) * h + 1.0 / 120.0) * h - 1.0 / 6.0)
    cs = 1.0 - 0.5 * h + h * h * (((-h * (1.0 / 3628800.0) + 1.0 / 40320.0) * h - 1.0 / 720.0) * h + 1.0 / 24.0)
    swap = (k & 1) == 1
    c, s = (sn, cs) if swap else (cs, sn)
    c = -c if (k == 1 or k == 2) else c
    s = -s if k >= 2 else s
    return c, s


@njit(**_GEN)
def draw_tile_scalar(z, base, k0, k1, kind, table):
    """z: (TILE,) fp32 <- z of global elements base .. base + TILE - 1, one element at a
    time (the scalar statement of :func:`draw_tile`; kind: 0 gaussian, 1 rademacher,
    2 gaussian16 with its table)."""
    if kind == 2:
        for q in range(TILE // 8):  # counter base // 8 + q: element 64 (q // 8) + 16 j + 8 h + q % 8
            words = _philox(base // 8 + q, _GAUSSIAN16, k0, k1)
            o = 64 * (q // 8) + q % 8
            for j in range(4):
                z[o + 16 * j] = table[words[j] & 0xFFFF]
                z[o + 16 * j + 8] = table[words[j] >> 16]
    elif kind == 0:
        for q in range(TILE // 4):
            x0, x1, x2, x3 = _philox(base // 4 + q, _GAUSSIAN, k0, k1)
            r0, r1 = radius(x0), radius(x2)
            (c0, s0), (c1, s1) = cos_sin(x1), cos_sin(x3)
            z[4 * q], z[4 * q + 1] = np.float32(r0 * c0), np.float32(r0 * s0)
            z[4 * q + 2], z[4 * q + 3] = np.float32(r1 * c1), np.float32(r1 * s1)
    else:
        for q in range(TILE // 128):
            x0, x1, x2, x3 = _philox(base // 128 + q, _RADEMACHER, k0, k1)
            o = 128 * q
            for bit in range(32):
                z[o + bit] = np.float32(1 - 2 * ((x0 >> bit) & 1))
                z[o + 32 + bit] = np.float32(1 - 2 * ((x1 >> bit) & 1))
                z[o + 64 + bit] = np.float32(1 - 2 * ((x2 >> bit) & 1))
                z[o + 96 + bit] = np.float32(1 - 2 * ((x3 >> bit) & 1))
