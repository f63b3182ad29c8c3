"""Seed pools, the server's pool draws, and raw little-endian arrays in records.

A round's pool of candidate seeds is derived on both sides from ``(pool-seed,
pool-round, pool-size)``; a request's pool indices come from a draw seed (integer
arithmetic only: the server regenerates exactly what a client used, on any machine).
Tensors are visited in sorted-name order (:func:`ordered`), the order the element
indices of ``z`` refer to on the server and on every client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord

def seed_pool(pool_seed: int, size: int, pool_round: int = 0) -> np.ndarray:
    """``size`` seeds in ``[0, 2**63)`` (int64), the same on every machine."""
    rng = np.random.default_rng([int(pool_seed) & 0xFFFFFFFF, int(pool_round), 0x5EED])
    return rng.integers(0, np.iinfo(np.int64).max, size=int(size), dtype=np.int64)


def index_dtype(pool_size: int) -> np.dtype:
    """The narrowest unsigned dtype for pool indices (uint16 up to 65,536 seeds), little-endian."""
    return np.dtype("<u2" if pool_size <= 1 << 16 else "<u4")


def pack(**arrays: np.ndarray) -> ConfigRecord:
    """Arrays as raw little-endian bytes (their dtypes are fixed by the format)."""
    return ConfigRecord({k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes() for k, v in arrays.items()})


def unpack(record: ConfigRecord, key: str, dtype: Any) -> np.ndarray:
    """One array of :func:`pack`; raises ValueError if the bytes do not fit ``dtype``."""
    raw = record[key]
    dt = np.dtype(dtype).newbyteorder("<")
    if not isinstance(raw, bytes) or len(raw) % dt.itemsize:
        raise ValueError(f"'{key}' is not a whole number of {dt} values")
    return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))


def ordered(state: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Tensors in the canonical (sorted-name) order of the seeded element indices."""
    return [state[k] for k in sorted(state)]


_MASK = (1 << 64) - 1


def _mix_array(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _mix(x: int) -> int:
    return int(_mix_array(np.asarray([x & _MASK], dtype=np.uint64))[0])


def draw_seed(pool_seed: int, rnd: int, ident: int, ask: int = 0) -> int:
    """The seed of one request's pool draws (run, round, client, request), in [0, 2**63)."""
    x = 0x5EED
    for v in (pool_seed, rnd, ident, ask):
        x = _mix(x ^ (int(v) & _MASK) + 0x9E3779B97F4A7C15)
    return x >> 1


def draw_indices(draw: int, m: int, pool_size: int) -> np.ndarray:
    """``m`` pool indices from ``draw``: successive seeded permutations of the pool, so
    indices repeat only after all ``pool_size`` were used. Integer arithmetic only: the
    server regenerates exactly the indices a client used, on any machine (int64)."""
    out: list[np.ndarray] = []
    block, have = 0, 0
    while have < m:
        keys = _mix_array(np.arange(pool_size, dtype=np.uint64) + np.uint64(_mix(draw ^ (block << 40))))
        perm = np.argsort(keys, kind="stable")[: m - have]
        out.append(perm)
        have, block = have + len(perm), block + 1
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)
