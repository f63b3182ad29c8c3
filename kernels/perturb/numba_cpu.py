"""Numba CPU backend: the Python driver of :mod:`kernels.perturb.numba_kernels`.

One kernel launch covers every fp32 tensor of a call, through a table of their data
pointers, global offsets and sizes, and its work items (tensor, tile). fp16/bf16
tensors are staged through fp32 buffers of ``STAGE`` elements (runs of consecutive small
ones share a buffer); fp64 tensors take ``z`` from the kernel and the fp64 update from
torch. Threads: as many as torch uses (``torch.get_num_threads()``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import torch

from kernels.perturb.gaussian16 import table
from kernels.perturb.numba_kernels import KIND, TILE, accumulate_tiles, perturb_tiles
from kernels.perturb.reference import CHUNK
from kernels.rng import split_seed

STAGE = CHUNK  # elements per fp16/bf16 staging buffer and per fp64 piece


def _table(entries: list[tuple[torch.Tensor, int]]):
    """(flat fp32 tensor, global offset) pairs -> addrs, offsets, sizes (T,), items (W, 2)."""
    addrs = np.array([t.data_ptr() for t, _ in entries], dtype=np.int64)
    offsets = np.array([o for _, o in entries], dtype=np.int64)
    sizes = np.array([t.numel() for t, _ in entries], dtype=np.int64)
    first, last = offsets // TILE, (offsets + sizes - 1) // TILE
    counts = last - first + 1  # tiles each tensor touches
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    tiles = np.arange(counts.sum()) - starts + np.repeat(first, counts)
    items = np.stack([np.repeat(np.arange(len(entries)), counts), tiles], axis=1)  # (W, 2)
    return addrs, offsets, sizes, items


def _plan(params: Sequence[torch.Tensor]):
    """Split the tensors: fp32 (flat, offset) entries for one launch; staged groups of
    consecutive fp16/bf16 pieces (<= STAGE elements, one global offset each); fp64 pieces."""
    fp32, staged, fp64 = [], [], []
    group, group_offset, group_size, offset = [], 0, 0, 0
    for p in params:
        flat = p.detach().view(-1)
        n = flat.numel()
        if n and group and flat.dtype in (torch.float32, torch.float64):  # keep groups contiguous
            staged.append((group_offset, group))
            group, group_size = [], 0
        if n and flat.dtype == torch.float32:
            fp32.append((flat, offset))
        for s in range(0, n if flat.dtype != torch.float32 else 0, STAGE):
            piece = flat[s : s + STAGE]
            if flat.dtype == torch.float64:
                fp64.append((piece, offset + s))
                continue
            if group_size + piece.numel() > STAGE:
                staged.append((group_offset, group))
                group, group_size = [], 0
            if not group:
                group_offset = offset + s
            group.append(piece)
            group_size += piece.numel()
        offset += n
    if group:
        staged.append((group_offset, group))
    return fp32, staged, fp64


def _run(params: Sequence[torch.Tensor], launch, fp64_delta) -> None:
    """launch(*table) updates fp32 tensors in place; fp64_delta(offset, n) -> fp64 delta."""
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        fp32, staged, fp64 = _plan(params)
        if fp32:
            launch(*_table(fp32))
        for offset, pieces in staged:
            buf = torch.cat([x.float() for x in pieces])  # (sum of sizes,) fp32
            launch(*_table([(buf, offset)]))
            for x, y in zip(pieces, buf.split([x.numel() for x in pieces])):
                x.copy_(y)  # round to nearest even
        for piece, offset in fp64:
            piece.add_(fp64_delta(offset, piece.numel()))
    finally:
        if torch.get_num_threads() != threads:  # numba's first OpenMP launch resets it
            torch.set_num_threads(threads)


def draw(seed: int, start: int, numel: int, dist: str) -> torch.Tensor:
    """``z(seed)`` at global indices start .. start + numel - 1 -> (numel,) fp32 (CPU)."""
    z = torch.zeros(numel)
    if numel:  # 0 + 1 * z = z exactly
        perturb_tiles(*_table([(z, start)]), *split_seed(seed), np.float32(1.0), KIND[dist], table())
    return z


class NumbaBackend:
    """Fast CPU backend (numba); CPU tensors only."""

    name = "numba"

    def supports(self, params: Sequence[torch.Tensor]) -> bool:
        return all(p.device.type == "cpu" for p in params)

    def perturb_(self, params: Sequence[torch.Tensor], seed: int, alpha: float, dist: str) -> None:
        k0, k1 = split_seed(seed)
        a, kind, values = np.float32(alpha), KIND[dist], table()
        _run(
            params,
            lambda *items: perturb_tiles(*items, k0, k1, a, kind, values),
            lambda off, n: draw(seed, off, n, dist).double().mul_(alpha),
        )

    def accumulate_(
        self, params: Sequence[torch.Tensor], seeds: Sequence[int], coeffs: Sequence[float], dist: str
    ) -> None:
        keys = np.array([split_seed(s) for s in seeds], dtype=np.int64).reshape(-1, 2)  # (S, 2)
        c32, kind, values = np.asarray(coeffs, dtype=np.float32), KIND[dist], table()

        def fp64_delta(off: int, n: int) -> torch.Tensor:
            acc = torch.zeros(n, dtype=torch.float64)
            for s, c in zip(seeds, coeffs):
                acc.add_(draw(s, off, n, dist).double().mul_(c))
            return acc

        _run(params, lambda *items: accumulate_tiles(*items, keys, c32, kind, values), fp64_delta)
