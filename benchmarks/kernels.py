"""Suite ``kernels``: seeded-perturbation throughput, as ratios measured in one run.

It prints the machine first (CPU model, the instruction-set extensions LLVM sees, numba
and its threading layer, whether SVML is in use), then every case's rate in G elements/s
as the median and spread (min..max) over ``repeats`` repetitions. The cases run
round-robin inside each repetition and every ratio is taken within a repetition, then
summarised, so a burst of load on a shared machine moves numerator and denominator
together and figures from two machines can be compared.

Cases (fp32, in place, ``P`` elements, ``threads`` threads for torch and numba):

- ``memory pass``: ``p.add_(scalar)``, one read and one write of ``p``: the memory-bound
  limit of any in-place update;
- ``torch normal_+add_``: ``z.normal_(); p.add_(z, alpha=a)``, the baseline;
- ``gaussian16`` / ``gaussian`` / ``rademacher``: ``kernels.perturb_`` (numba backend) on
  one tensor (``gaussian16``: the normal quantized to 65,536 levels, one table lookup per
  value; ``gaussian``: the exact fp64 Box-Muller);
- ``gaussian16, smollm2 shapes``: the same over SmolLM2-135M's 272 tensors;
- ``accumulate_ S seeds`` (gaussian16, and gaussian): reported as ``S * P / seconds``
  (seed replay);
- ``... draw``: ``z`` generated into a tile buffer in cache, no tensor touched: the
  generator's own rate (whole tiles of a tensor are updated while drawing, without the
  buffer, so ``perturb_`` may pass it).

Targets (issue 15), met by the fast Gaussian ``gaussian16``: >= 0.5x the memory pass,
rademacher >= 0.8x; both >= 6x torch ``normal_``+``add_``; ``accumulate_`` with 16
seeds >= 4x the single-seed rate. The Box-Muller ``gaussian`` is reported beside them. Run with ``anther-bench kernels`` or ``python -m benchmarks.kernels [--elements N]
[--threads T] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

TARGETS = [  # (ratio name, threshold)
    ("gaussian16 / memory pass", 0.5),
    ("rademacher / memory pass", 0.8),
    ("gaussian16 / torch normal_+add_", 6.0),
    ("rademacher / torch normal_+add_", 6.0),
    ("accumulate_ / gaussian16", 4.0),
]
PERTURB = ("gaussian16", "gaussian", "rademacher")  # the dists measured


def smollm2_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of SmolLM2-135M (Llama: 30 layers, d=576, ffn=1536, kv=192, tied)."""
    d, ffn, kv = 576, 1536, 192
    layer = [(d, d), (kv, d), (kv, d), (d, d), (ffn, d), (ffn, d), (d, ffn), (d,), (d,)]
    return [(49152, d)] + layer * 30 + [(d,)]


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    """What makes kernel figures from two machines comparable."""
    import llvmlite.binding as llvm
    import numba

    from kernels.perturb.numba_kernels import LANES

    features = llvm.get_host_cpu_features()
    simd = [f for f in ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512vl", "neon", "sve")
            if features.get(f, False)]
    return {
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical CPUs, {platform.machine()}; LLVM target {llvm.get_host_cpu_name()})",
        "simd": ", ".join(simd) or "none reported",
        "numba": f"{numba.__version__}, threading layer {numba.threading_layer()}, "
                 f"SVML {'in use' if numba.config.USING_SVML else 'not in use'} (the kernels call no math library)",
        "kernels": f"LLVM vector IR, {LANES} counters per block",
        "torch": torch.__version__,
    }


def _draw_loop():
    """A parallel loop that fills tile buffers with z (no tensor): the generator's rate."""
    import numpy as np
    from numba import njit, prange

    from kernels.perturb.numba_kernels import TILE, draw_tile

    @njit(parallel=True, nogil=True)
    def draw(tiles, kind, table):  # (tiles * TILE) values of z(1), one buffer per tile
        total = 0.0
        for t in prange(tiles):
            z = np.empty(TILE, np.float32)
            draw_tile(z, t * TILE, 1, 0, kind, table)
            total += z[t % TILE]
        return total

    return draw, TILE


def cases(elements: int, seeds: int) -> dict[str, tuple[Callable[[], object], float]]:
    """name -> (one call, elements of work per call)."""
    import kernels
    from kernels.perturb.gaussian16 import table
    from kernels.perturb.numba_kernels import KIND

    p = torch.zeros(elements)  # (P,) fp32
    z, gen = torch.empty_like(p), torch.Generator().manual_seed(0)
    shapes = smollm2_shapes()
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    draw, tile = _draw_loop()
    tiles = elements // tile
    out: dict[str, tuple[Callable[[], object], float]] = {
        "memory pass": (lambda: p.add_(1e-3), elements),
        "torch normal_+add_": (lambda: (z.normal_(generator=gen), p.add_(z, alpha=1e-3)), elements),
    }
    for dist in PERTURB:
        out[dist] = (lambda d=dist: kernels.perturb_([p], 1, 1e-3, d, backend="numba"), elements)
    if sum(sizes) <= elements:
        views = [t.view(s) for t, s in zip(p[: sum(sizes)].split(sizes), shapes)]
        out["gaussian16, smollm2 shapes"] = (
            lambda: kernels.perturb_(views, 1, 1e-3, "gaussian16", backend="numba"), sum(sizes)
        )
    seed_list, coeffs = list(range(seeds)), [1e-3 * (k + 1) for k in range(seeds)]
    for dist in ("gaussian16", "gaussian"):
        out[_acc(seeds, dist)] = (
            lambda d=dist: kernels.accumulate_([p], seed_list, coeffs, d, backend="numba"), seeds * elements
        )
    for dist in PERTURB:
        out[f"{dist} draw"] = (lambda d=dist: draw(tiles, KIND[d], table()), tiles * tile)
    return out


def _acc(seeds: int, dist: str) -> str:
    return f"accumulate_ {seeds} seeds" + ("" if dist == "gaussian16" else f" {dist}")


def measure(calls: dict[str, tuple[Callable[[], object], float]], repeats: int) -> dict[str, list[float]]:
    """G elements/s of each case in each repetition (round-robin, one warm-up call each)."""
    for fn, _ in calls.values():
        fn()
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, work) in calls.items():
            t = time.perf_counter()
            fn()
            rates[name].append(work / (time.perf_counter() - t) / 1e9)
    return rates


def ratios(rates: dict[str, list[float]], seeds: int) -> dict[str, list[float]]:
    """Per-repetition ratios: every case against the memory pass and against torch, and
    the two that explain the rest (seed replay vs one seed; perturb vs its generator)."""
    pairs = {f"{n} / {d}": (n, d) for d in ("memory pass", "torch normal_+add_") for n in rates if n != d}
    for dist in ("gaussian16", "gaussian"):
        pairs[f"accumulate_ / {dist}"] = (_acc(seeds, dist), dist)
        pairs[f"{dist} / {dist} draw"] = (dist, f"{dist} draw")
    pairs["gaussian16 / gaussian"] = ("gaussian16", "gaussian")
    return {k: [a / b for a, b in zip(rates[n], rates[d])] for k, (n, d) in pairs.items()}


def _summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.3f}  ({min(xs):.3f} .. {max(xs):.3f})"


def run(
    elements: int = 135_000_000, threads: int = 2, seeds: int = 16, repeats: int = 5
) -> dict[str, dict[str, list[float]]]:
    """Measure, print the machine, rates, ratios and targets; return {"rates", "ratios"}."""
    torch.set_num_threads(threads)  # the numba backend follows torch's thread count
    calls = cases(elements, seeds)
    rates = measure(calls, repeats)
    rel = ratios(rates, seeds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for key, value in machine().items():
        print(f"{key + ':':9} {value}")
    print(f"suite kernels: P={elements:,} fp32, threads={threads}, {repeats} repetitions, load average {load:.2f}")
    print(f"{'case (G elements/s; accumulate_: S*P/s)':34} {'median':>8}  (min .. max)   / memory pass   / torch")
    for name, xs in rates.items():
        to_mem, to_torch = rel.get(f"{name} / memory pass"), rel.get(f"{name} / torch normal_+add_")
        cells = [f"{statistics.median(r):8.3f}" if r else f"{'1':>8}" for r in (to_mem, to_torch)]
        print(f"{name:34} {_summary(xs)}  {cells[0]}  {cells[1]}")
    print(f"{'ratio (per repetition)':34} {'median':>8}  (min .. max)")
    explain = ["gaussian16 / gaussian", "gaussian / memory pass", "accumulate_ / gaussian",
               "gaussian16 draw / memory pass", "gaussian16 / gaussian16 draw", "gaussian / gaussian draw"]
    for name in [t for t, _ in TARGETS] + explain:
        print(f"{name:34} {_summary(rel[name])}")
    for name, threshold in TARGETS:
        got = statistics.median(rel[name])
        print(f"target: {name} >= {threshold:g} -> {got:.2f} {'PASS' if got >= threshold else 'FAIL'}")
    return {"rates": rates, "ratios": rel}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, default=135_000_000, help="elements perturbed (default: SmolLM2-135M's)")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and numba (default 2)")
    parser.add_argument("--seeds", type=int, default=16, help="seeds of the accumulate_ case (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions; median and spread are reported (default 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    run(a.elements, a.threads, a.seeds, a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
