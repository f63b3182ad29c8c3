"""Aggregated round updates and the server's history of them (client catch-up)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord

from kernels import accumulate_
from strategies.seeds.pool import index_dtype, pack, seed_pool, unpack


@dataclass
class RoundUpdate:
    """One round's aggregated update: ``w += sum_k coeff[k] * z(pool(round)[index[k]])``."""

    round: int
    pool_round: int
    index: np.ndarray  # (S,) unique pool indices
    coeff: np.ndarray  # (S,) float32, exactly what the server applied

    def apply_(self, params: Sequence[torch.Tensor], pool_seed: int, pool_size: int, dist: str, backend: str) -> None:
        seeds = seed_pool(pool_seed, pool_size, self.pool_round)[self.index.astype(np.int64)]
        accumulate_(list(params), [int(s) for s in seeds], [float(c) for c in self.coeff], dist=dist, backend=backend)

    @property
    def nbytes(self) -> int:
        return int(self.index.nbytes + self.coeff.nbytes + 12)


@dataclass
class History:
    """The server's per-round updates, newest last, kept while they are worth sending.

    A client whose state is the global state after round ``b`` reaches round ``t - 1``
    by applying the updates of rounds ``b+1 .. t-1`` in order. Entries are dropped from
    the front once the kept ones together are bigger than the full trainable state
    (from then on the state itself is the cheaper downlink).
    """

    entries: list[RoundUpdate] = field(default_factory=list)

    def append(self, update: RoundUpdate, state_bytes: int) -> None:
        self.entries.append(update)
        while self.entries and sum(e.nbytes for e in self.entries) > state_bytes:
            self.entries.pop(0)

    def since(self, base: int, upto: int) -> list[RoundUpdate] | None:
        """Updates of rounds ``base+1 .. upto``, or ``None`` if some were dropped."""
        wanted = [e for e in self.entries if base < e.round <= upto]
        rounds = [e.round for e in wanted]
        return wanted if rounds == list(range(base + 1, upto + 1)) else None

    # -- wire -------------------------------------------------------------------------
    @staticmethod
    def arrays(entries: Sequence[RoundUpdate], pool_size: int) -> dict[str, np.ndarray]:
        idt = index_dtype(pool_size)
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        return {
            "round": np.asarray([e.round for e in entries], dtype="<i4"),
            "pool_round": np.asarray([e.pool_round for e in entries], dtype="<i4"),
            "count": np.asarray([len(e.index) for e in entries], dtype="<i4"),
            "index": cat([e.index for e in entries], idt),
            "coeff": cat([e.coeff for e in entries], np.dtype("<f4")),
        }

    @staticmethod
    def from_arrays(a: Mapping[str, np.ndarray]) -> list[RoundUpdate]:
        bounds = np.concatenate([[0], np.cumsum(a["count"])]).astype(np.int64)
        if bounds[-1] != len(a["index"]) or len(a["index"]) != len(a["coeff"]):
            raise ValueError("history record: counts do not match the indices and coefficients")
        return [
            RoundUpdate(int(r), int(pr), a["index"][lo:hi].astype(np.int64), a["coeff"][lo:hi].astype(np.float32))
            for r, pr, lo, hi in zip(a["round"], a["pool_round"], bounds[:-1], bounds[1:])
        ]

    @classmethod
    def to_record(cls, entries: Sequence[RoundUpdate], pool_size: int) -> ConfigRecord:
        return pack(**cls.arrays(entries, pool_size))

    @classmethod
    def from_record(cls, record: ConfigRecord, pool_size: int) -> list[RoundUpdate]:
        dtypes = {"round": "<i4", "pool_round": "<i4", "count": "<i4", "index": index_dtype(pool_size), "coeff": "<f4"}
        return cls.from_arrays({k: unpack(record, k, dt) for k, dt in dtypes.items()})

    # -- checkpoint -------------------------------------------------------------------
    def state_dict(self, prefix: str = "history") -> dict[str, np.ndarray]:
        return {f"{prefix}/{k}": v for k, v in self.arrays(self.entries, 1 << 32).items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray], prefix: str = "history") -> None:
        keys = ("round", "pool_round", "count", "index", "coeff")
        if not all(f"{prefix}/{k}" in state for k in keys):
            self.entries = []
            return
        self.entries = self.from_arrays({k: np.asarray(state[f"{prefix}/{k}"]) for k in keys})
