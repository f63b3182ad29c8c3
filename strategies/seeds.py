"""The (seed, scalar) wire format shared by seed-based clients and strategies.

Backprop-free clients (zeroth-order MeZO steps, forward gradients) never send tensors.
Every round has a *pool* of candidate seeds, derived on both sides from
``(pool-seed, pool-round, pool-size)`` (FedKSeed keeps one pool for the whole run,
``pool-round = 0``; FwdLLM draws a fresh pool per round). A client replies with pool
*indices* and one fp32 scalar per perturbation, and the model change it stands for is

    delta = -lr * sum_j scalar_j * z(pool[index_j])

with ``z`` from :mod:`kernels` (the same on every device). A round's aggregated update
is a list of (seed, coefficient) pairs applied with :func:`kernels.accumulate_`; a client
that missed rounds replays the server's history of those lists (see :class:`History`).

Tensors are always visited in sorted-name order (``sorted(state)``), the order the
element indices of ``z`` refer to on the server and on every client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message

from kernels import accumulate_
from strategies import wire

# Round-config keys a seed strategy sends (server authority: client and server agree).
POOL_SEED = "zo-pool-seed"
POOL_SIZE = "zo-pool-size"
POOL_ROUND = "zo-pool-round"
LR = "zo-lr"
DIST = "zo-dist"
PERTURBATIONS = "zo-perturbations"  # per local step / per batch
MAX_PAIRS = "zo-max-pairs"
BASE_ROUND = "zo-base-round"  # the global round the client must train from (t - 1)
SYNC_FROM = "zo-sync-from"  # history below starts after this round
ASK = "zo-ask"  # FwdLLM: 0 for the first request in a round, 1, 2, ... for "more"
CANDIDATES = "zo-candidates"  # FwdLLM discriminative sampling: candidates per kept perturbation
# Records. Pairs and histories are ConfigRecords of raw little-endian bytes whose dtypes
# the format fixes (pool indices: index_dtype(K); scalars/coefficients: float32;
# rounds/counts: int32): no per-array header, so a reply is its pairs plus ~250 bytes.
PAIRS = "zo-pairs"  # reply {"index": bytes, "scalar": bytes}
HISTORY = "zo-history"  # downlink, see History.to_record
PROBS = "zo-probs"  # downlink ArrayRecord {"p": float32 (K,)} (FedKSeed-Pro)
PREV = "zo-prev"  # downlink history record: the last round's update (discriminative sampling)
PREV_IN_HISTORY = "zo-prev-in-history"  # round config: PREV omitted, it is the history's last entry


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


def encode_pairs(index: np.ndarray, scalar: np.ndarray, pool_size: int) -> ConfigRecord:
    """A reply's (pool index, scalar) pairs: ``index_dtype(K)`` + float32 bytes per pair."""
    return pack(index=np.asarray(index).astype(index_dtype(pool_size)), scalar=np.asarray(scalar, dtype="<f4"))


@dataclass
class SeedReply:
    """A validated seed reply."""

    index: np.ndarray  # (N,) int64 pool indices
    scalar: np.ndarray  # (N,) float64
    weight: int  # num-examples
    metrics: dict


def check_seed_reply(
    msg: Message, rnd: int, ask: int, pool_size: int, max_pairs: int, max_examples: int = 10**9
) -> tuple[SeedReply | None, str | None]:
    """Validate a (seed, scalar) reply; ``(SeedReply, None)`` or ``(None, reason)``.

    Rejected: a Flower error; a reply of another kind or with tensors; a reply for
    another round or request (stale); a base round other than ``rnd - 1``; missing or
    malformed pairs; an index outside the round's pool; more than ``max_pairs`` pairs;
    a non-finite scalar; a bad example count.
    """
    if msg.has_error():
        return None, f"client error: {msg.error.reason.strip().splitlines()[0] if msg.error.reason else msg.error.code}"
    content = msg.content
    kind = content.config_records.get(wire.WIRE, {}).get("kind")
    if kind != wire.KIND_SEEDS:
        return None, f"update kind is {kind!r}, expected '{wire.KIND_SEEDS}'"
    if wire.ARRAYS in content.array_records:
        return None, "a seed reply must not carry tensors"
    if wire.METRICS not in content.metric_records or PAIRS not in content.config_records:
        return None, f"reply needs '{wire.METRICS}' and '{PAIRS}' records"
    metrics = dict(content[wire.METRICS])
    n = metrics.get(wire.NUM_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= max_examples:
        return None, f"'{wire.NUM_EXAMPLES}' must be an integer in [1, {max_examples}], got {n!r}"
    got_round, got_ask, base = metrics.get(wire.SERVER_ROUND), metrics.get(ASK, 0), metrics.get(BASE_ROUND)
    if got_round != rnd or got_ask != ask:
        return None, f"stale reply: for round {got_round} request {got_ask}, expected round {rnd} request {ask}"
    if base != rnd - 1:
        return None, f"stale reply: trained from global round {base}, expected {rnd - 1}"
    pairs = content[PAIRS]
    if set(pairs.keys()) != {"index", "scalar"}:
        return None, f"'{PAIRS}' must hold exactly 'index' and 'scalar', got {sorted(pairs.keys())}"
    try:
        index, scalar = unpack(pairs, "index", index_dtype(pool_size)), unpack(pairs, "scalar", "<f4")
    except (ValueError, TypeError) as err:
        return None, f"malformed pairs: {err}"
    if scalar.shape != index.shape:
        return None, f"pairs must have one scalar per index, got {index.shape[0]} indices and {scalar.shape[0]} scalars"
    if not 0 < len(index) <= max_pairs:
        return None, f"{len(index)} pairs; expected 1 to {max_pairs} (steps x perturbations)"
    if int(index.max()) >= pool_size:
        return None, f"seed index {int(index.max())} is outside the round's pool of {pool_size}"
    if not np.isfinite(scalar).all():
        return None, "non-finite scalar in pairs"
    return SeedReply(index.astype(np.int64), scalar.astype(np.float64), int(n), metrics), None


def weighted_coefficients(replies: Sequence[SeedReply], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique indices and ``scale * sum_c w_c sum_{j: index=k} scalar_cj / sum_c w_c`` (float32).

    With ``scale = -lr`` this is exactly the example-weighted FedAvg of the clients'
    local deltas (each delta is ``-lr * sum_j scalar_j z_j``, linear in ``z``).
    """
    total = float(sum(r.weight for r in replies))
    idx = np.concatenate([r.index for r in replies])
    val = np.concatenate([r.scalar * (r.weight / total) for r in replies])
    uniq, inv = np.unique(idx, return_inverse=True)
    coeff = np.zeros(len(uniq), dtype=np.float64)
    np.add.at(coeff, inv, val)
    return uniq, (scale * coeff).astype(np.float32)
