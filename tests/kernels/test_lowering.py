"""The vector path's IR lowers to SIMD code on every CPU family Anther targets, with no
library calls (no SVML, no libm): compiled here for aarch64 (NEON), x86-64 with AVX-512,
AVX2 and the SSE2 baseline through llvmlite's own LLVM, and run on this host."""

import re

import numpy as np
import pytest

llvm = pytest.importorskip("llvmlite.binding")
from llvmlite import ir  # noqa: E402

from kernels.perturb import numba_kernels as nk  # noqa: E402
from kernels.perturb.gaussian16 import table  # noqa: E402

TARGETS = [  # triple, cpu, features, a register that shows vector code
    ("aarch64-unknown-linux-gnu", "generic", "+neon", r"\bv\d+\.(?:2d|4s)\b"),
    ("x86_64-unknown-linux-gnu", "skylake-avx512", "", r"%zmm\d+"),
    ("x86_64-unknown-linux-gnu", "haswell", "", r"%ymm\d+"),
    ("x86_64-unknown-linux-gnu", "x86-64", "", r"%xmm\d+"),
]


def _block_module(kind: str) -> str:
    """``void block(float* out, i64 first, i64 k0, i64 k1)``: out += one block of ``kind``."""
    mod = ir.Module(name=kind)
    i64 = ir.IntType(64)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ir.FloatType().as_pointer(), i64, i64, i64]), "block")
    b = ir.IRBuilder(fn.append_basic_block())
    words = nk.philox_ir(b, fn.args[1], fn.args[2], fn.args[3], nk.STREAMS[kind])
    one = ir.Constant(ir.FloatType(), 1.0)
    if kind == "gaussian16":  # the table: a module constant here
        values = ir.GlobalVariable(mod, ir.ArrayType(ir.FloatType(), 1 << 16), "table")
        values.initializer = ir.Constant(ir.ArrayType(ir.FloatType(), 1 << 16), [float(x) for x in table()])
        nk.gaussian16_ir(b, fn.args[0], words, one, b.bitcast(values, ir.FloatType().as_pointer()))
    else:
        (nk.gaussian_ir if kind == "gaussian" else nk.rademacher_ir)(b, fn.args[0], words, one)
    b.ret_void()
    return str(mod)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "gaussian16"])
@pytest.mark.parametrize("triple, cpu, features, vector_reg", TARGETS, ids=[t[1] + "-" + t[0].split("-")[0] for t in TARGETS])
def test_vector_ir_lowers_to_simd_without_calls(triple, cpu, features, vector_reg, kind):
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    try:
        target = llvm.Target.from_triple(triple)
    except RuntimeError as e:  # an llvmlite built without this target
        pytest.skip(f"llvmlite has no {triple} target: {e}")
    tm = target.create_target_machine(cpu=cpu, features=features, opt=3)
    mod = llvm.parse_assembly(_block_module(kind))
    mod.triple, mod.data_layout = triple, str(tm.target_data)
    mod.verify()
    asm = tm.emit_assembly(mod)
    calls = [line for line in asm.splitlines() if re.search(r"\b(call|bl|blr|jmp\s+\w*@)\b", line)]
    assert not calls, f"{cpu}: library calls in the kernel: {calls[:3]}"
    assert len(re.findall(vector_reg, asm)) > 50, f"{cpu}: no vector code"


def test_host_block_runs_and_matches_the_numba_kernel():
    """The standalone module, JIT-compiled for this host, writes what draw_tile writes."""
    import ctypes

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    tm = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    mod = llvm.parse_assembly(_block_module("gaussian"))
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    block = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(
        engine.get_function_address("block")
    )
    got = np.zeros(nk.G_BLOCK, np.float32)
    block(got.ctypes.data, 3 * nk.LANES, 17, 5)  # counters 3 LANES ..: elements from 12 LANES
    want = np.empty(nk.TILE, np.float32)
    nk.draw_tile(want, 0, 17, 5, nk.KIND["gaussian"], table())
    np.testing.assert_array_equal(got, want[12 * nk.LANES : 12 * nk.LANES + nk.G_BLOCK])
