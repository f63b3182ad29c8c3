"""Suite ``kernels``: seeded-perturbation throughput, as ratios measured in one run.

Rows (G elements/s, best of ``repeats`` after a warm-up call, fp32, in place):

- ``torch normal_+add_``: ``z.normal_(); p.add_(z, alpha=a)``, the baseline;
- ``torch add_(z)`` and ``torch add_(scalar)``: memory-bound limits (3 and 2 streams);
- ``reference``: the pure-torch specification, on ``reference_elements`` elements;
- ``numba gaussian`` / ``numba rademacher``: ``kernels.perturb_`` on one tensor;
- ``numba gaussian, smollm2 shapes``: the same over SmolLM2-135M's 272 tensors;
- ``accumulate_ S seeds``: reported as ``S * P / seconds`` (seed replay rate).

Targets (2 cores): gaussian >= 1.2 G/s and >= 6x torch ``normal_``+``add_``;
rademacher >= 2.0 G/s; seed replay ``S * P / s >= 1.0e9``. Run with
``python -m benchmarks.kernels [--elements N] [--threads T]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def smollm2_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of SmolLM2-135M (Llama: 30 layers, d=576, ffn=1536, kv=192, tied)."""
    d, ffn, kv = 576, 1536, 192
    layer = [(d, d), (kv, d), (kv, d), (d, d), (ffn, d), (ffn, d), (d, ffn), (d,), (d,)]
    return [(49152, d)] + layer * 30 + [(d,)]


def _torch_rows(p: torch.Tensor, repeats: int) -> dict[str, float]:
    """The torch baselines on p (P,) fp32, in G elements/s; z (P,) lives only here."""
    z, gen = torch.empty_like(p), torch.Generator().manual_seed(0)
    cases = {
        "torch normal_+add_": lambda: (z.normal_(generator=gen), p.add_(z, alpha=1e-3)),
        "torch add_(z)": lambda: p.add_(z, alpha=1e-3),
        "torch add_(scalar)": lambda: p.add_(1e-3),
    }
    return {name: p.numel() / _best(fn, repeats) / 1e9 for name, fn in cases.items()}


def run(
    elements: int = 135_000_000,
    threads: int = 2,
    seeds: int = 16,
    reference_elements: int = 2_000_000,
    repeats: int = 3,
) -> dict[str, float]:
    """Measure every row in one process; print a table and the ratios; return G/s by row."""
    import kernels

    torch.set_num_threads(threads)  # the numba backend follows torch's thread count
    p = torch.zeros(elements)  # (P,) fp32
    rows = _torch_rows(p, repeats)

    def rate(name: str, fn: Callable[[], object], n: int = elements, work: float = 1.0) -> None:
        rows[name] = work * n / _best(fn, repeats) / 1e9

    small = p[:reference_elements]
    rate("reference gaussian", lambda: kernels.perturb_([small], 1, 1e-3, backend="torch"), small.numel())
    rate("numba gaussian", lambda: kernels.perturb_([p], 1, 1e-3, backend="numba"))
    rate("numba rademacher", lambda: kernels.perturb_([p], 1, 1e-3, "rademacher", backend="numba"))
    shapes = smollm2_shapes()
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    if sum(sizes) <= elements:
        views = [t.view(s) for t, s in zip(p[: sum(sizes)].split(sizes), shapes)]
        rate("numba gaussian, smollm2 shapes", lambda: kernels.perturb_(views, 1, 1e-3, backend="numba"), sum(sizes))
    coeffs = [1e-3 * (k + 1) for k in range(seeds)]
    seed_list = list(range(seeds))
    rate(
        f"accumulate_ {seeds} seeds (S*P/s)",
        lambda: kernels.accumulate_([p], seed_list, coeffs, backend="numba"),
        work=seeds,
    )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"suite kernels: P={elements:,} fp32, threads={threads} (torch and numba), load average {load:.2f}")
    print(f"{'row':38} {'G elem/s':>9}")
    for name, g in rows.items():
        print(f"{name:38} {g:9.3f}")
    base, gauss, rad = rows["torch normal_+add_"], rows["numba gaussian"], rows["numba rademacher"]
    replay = rows[f"accumulate_ {seeds} seeds (S*P/s)"]
    print(f"ratio: numba gaussian / torch normal_+add_  = {gauss / base:6.2f}x  (target >= 6x)")
    print(f"ratio: numba gaussian / reference          = {gauss / rows['reference gaussian']:6.1f}x")
    print(
        f"ratio: numba gaussian / torch add_(scalar)  = {gauss / rows['torch add_(scalar)']:6.2f}   (1.0 = memory bound)"
    )
    print(f"ratio: numba rademacher / torch add_(z)     = {rad / rows['torch add_(z)']:6.2f}")
    checks = [
        ("gaussian >= 1.2 G/s", gauss >= 1.2),
        ("gaussian >= 6x torch normal_+add_", gauss >= 6 * base),
        ("rademacher >= 2.0 G/s", rad >= 2.0),
        (f"seed replay S*P/s >= 1.0e9 ({replay:.2f}e9)", replay >= 1.0),
    ]
    for what, ok in checks:
        print(f"target: {what} -> {'PASS' if ok else 'FAIL'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, default=135_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--reference-elements", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args(argv)
    run(a.elements, a.threads, a.seeds, a.reference_elements, a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
