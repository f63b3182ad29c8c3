"""The (seed, scalar) wire format shared by seed-based clients and strategies.

Backprop-free clients (zeroth-order MeZO steps, forward gradients) never send tensors.
Every round has a *pool* of candidate seeds, derived on both sides from
``(pool-seed, pool-round, pool-size)`` (FedKSeed keeps one pool for the whole run,
``pool-round = 0``; FwdLLM draws a fresh pool per round). The *server* decides which pool
indices each request uses: a draw seed (``zo-draw``, from which the client regenerates
them with :func:`draw_indices`) or an explicit list (``zo-assigned``: FedKSeed-Pro's
importance sampling, FwdLLM's discriminative sampling). A client replies one scalar per
perturbation, in that order, and the model change it stands for is

    delta = -lr * sum_j scalar_j * z(pool[index_j])

with ``z`` from :mod:`kernels` (the same on every device). Replies name no seeds and
carry no metric names: a 28-byte header and the scalars, fp32 or stochastically rounded
integer codes of ``zo-bits`` bits (:class:`ReplyFrame`; 100 perturbations at 4 bits are
a 78-byte frame). A round's aggregated update is a list of (seed, coefficient) pairs
applied with :func:`kernels.accumulate_`; a client that missed rounds replays the
server's history of those lists (see :class:`History`).

Tensors are always visited in sorted-name order (``sorted(state)``), the order the
element indices of ``z`` refer to on the server and on every client.
"""

from __future__ import annotations

import math
import struct
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
DRAW = "zo-draw"  # per message: the seed of the client's pool draws (draw_indices)
BITS = "zo-bits"  # scalar width on the uplink: 32 (fp32) or 16/8/4/2 (stochastic rounding)
DIAG = "zo-diag"  # true: the reply adds its diagnostic metrics (peak RSS, times)
BACKEND = "zo-backend"  # kernels backend, sent only when the strategy sets one (default: auto)
# Records. Histories and assignments are ConfigRecords of raw little-endian bytes whose
# dtypes the format fixes (pool indices: index_dtype(K); coefficients: float32;
# rounds/counts: int32). A reply is one ConfigRecord holding one frame (ReplyFrame).
HISTORY = "zo-history"  # downlink, see History.to_record
ASSIGNED = "zo-assigned"  # downlink {"index": bytes}: the pool indices to use, in order
FRAME = "zo"  # reply {"f": bytes}: ReplyFrame header + packed scalars
SCALAR_BITS = (32, 16, 8, 4, 2)


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


# -- pool draws ---------------------------------------------------------------------------
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


# -- the reply frame -----------------------------------------------------------------------
_HEADER = struct.Struct("<BBIiiHIff")  # version, bits, count, round, base, ask, examples, loss, scale
FRAME_VERSION = 1


def encode_scalars(scalar: np.ndarray, bits: int, rng: np.random.Generator) -> tuple[float, bytes]:
    """``(scale, payload)``: fp32 bytes for 32 bits, else symmetric integer codes
    ``c in [-q, q]`` (``q = 2**(bits-1) - 1``, ``scale = max|s| / q``) by stochastic rounding
    (``E[c * scale] = s``), stored as ``c + q`` little-endian (16, 8) or packed low bits first (4, 2)."""
    s = np.asarray(scalar, dtype=np.float64)
    if bits == 32:
        return 1.0, s.astype("<f4").tobytes()
    q = (1 << (bits - 1)) - 1
    amax = float(np.abs(s).max()) if len(s) else 0.0
    scale = float(np.float32(amax / q))
    if scale > 0:
        v = s / scale
        low = np.floor(v)
        codes = np.clip(low + (rng.random(len(v)) < v - low), -q, q).astype(np.int64)
    else:
        codes = np.zeros(len(s), dtype=np.int64)
    u = (codes + q).astype(np.uint16)
    if bits == 16:
        return scale, u.astype("<u2").tobytes()
    if bits == 8:
        return scale, u.astype(np.uint8).tobytes()
    per = 8 // bits
    u = np.concatenate([u, np.zeros(-len(u) % per, dtype=np.uint16)]).reshape(-1, per)
    packed = np.zeros(len(u), dtype=np.uint16)
    for i in range(per):
        packed |= u[:, i] << (bits * i)
    return scale, packed.astype(np.uint8).tobytes()


def decode_scalars(payload: bytes, count: int, bits: int, scale: float) -> np.ndarray:
    """Inverse of :func:`encode_scalars` (float64); ValueError if the payload does not fit."""
    if bits == 32:
        if len(payload) != 4 * count:
            raise ValueError(f"{len(payload)} payload bytes for {count} fp32 scalars")
        return np.frombuffer(payload, dtype="<f4").astype(np.float64)
    if bits not in SCALAR_BITS:
        raise ValueError(f"scalar width {bits} bits; expected one of {SCALAR_BITS}")
    q = (1 << (bits - 1)) - 1
    need = 2 * count if bits == 16 else -(-count * bits // 8)
    if len(payload) != need:
        raise ValueError(f"{len(payload)} payload bytes for {count} scalars of {bits} bits (expected {need})")
    if bits == 16:
        u = np.frombuffer(payload, dtype="<u2").astype(np.int64)
    elif bits == 8:
        u = np.frombuffer(payload, dtype=np.uint8).astype(np.int64)
    else:
        raw = np.frombuffer(payload, dtype=np.uint8).astype(np.int64)
        per, mask = 8 // bits, (1 << bits) - 1
        u = np.stack([(raw >> (bits * i)) & mask for i in range(per)], axis=1).reshape(-1)[:count]
    if (u > 2 * q).any():
        raise ValueError(f"scalar code above {2 * q}")
    return (u - q) * float(scale)


@dataclass
class ReplyFrame:
    """A seed reply on the wire: a 28-byte little-endian header (version, bits, count,
    round, base round, request, examples, mean train loss, scale) and the packed scalars.
    It names no seeds: its ``count`` scalars belong, in order, to the first ``count``
    pool indices the server assigned to this request (``zo-draw`` or ``zo-assigned``)."""

    round: int
    base: int
    ask: int
    num_examples: int
    loss: float
    scalar: np.ndarray  # float64, as the server decodes them
    bits: int = 32

    def to_bytes(self, rng: np.random.Generator) -> bytes:
        scale, payload = encode_scalars(self.scalar, self.bits, rng)
        head = _HEADER.pack(
            FRAME_VERSION, self.bits, len(self.scalar), self.round, self.base, self.ask, self.num_examples, self.loss, scale
        )
        return head + payload

    @classmethod
    def from_bytes(cls, raw: bytes) -> ReplyFrame:
        if not isinstance(raw, bytes) or len(raw) < _HEADER.size:
            raise ValueError(f"a frame needs at least {_HEADER.size} bytes")
        version, bits, count, rnd, base, ask, n, loss, scale = _HEADER.unpack_from(raw)
        if version != FRAME_VERSION:
            raise ValueError(f"frame version {version}, expected {FRAME_VERSION}")
        if not math.isfinite(scale):
            raise ValueError("non-finite scale")
        scalar = decode_scalars(raw[_HEADER.size :], count, bits, scale)
        return cls(rnd, base, ask, n, float(loss), scalar, bits)


def frame_record(frame: ReplyFrame, rng: np.random.Generator) -> ConfigRecord:
    return ConfigRecord({"f": frame.to_bytes(rng)})


@dataclass
class SeedReply:
    """A validated seed reply."""

    index: np.ndarray  # (N,) int64 pool indices (the request's assigned ones)
    scalar: np.ndarray  # (N,) float64
    weight: int  # num-examples
    metrics: dict


def check_seed_reply(
    msg: Message, rnd: int, assigned: Mapping[int, np.ndarray], ask: int | None = None, max_examples: int = 10**9
) -> tuple[SeedReply | None, str | None]:
    """Validate a seed reply; ``(SeedReply, None)`` or ``(None, reason)``.

    ``assigned`` maps each request number sent to this client this round to its pool
    indices; ``ask`` (if given) is the request being answered. Rejected: a Flower error;
    a reply of another kind or with tensors; a malformed frame; a reply for another
    round or request (stale), or to a request never sent; a base round other than
    ``rnd - 1``; no scalars, or more than the request was assigned (steps x
    perturbations); a non-finite scalar; a bad example count.
    """
    if msg.has_error():
        return None, f"client error: {msg.error.reason.strip().splitlines()[0] if msg.error.reason else msg.error.code}"
    content = msg.content
    if FRAME not in content.config_records:
        kind = content.config_records.get(wire.WIRE, {}).get("kind")
        return None, f"update kind is {kind!r}, expected '{wire.KIND_SEEDS}' (a '{FRAME}' frame record)"
    if wire.ARRAYS in content.array_records:
        return None, "a seed reply must not carry tensors"
    try:
        frame = ReplyFrame.from_bytes(content[FRAME].get("f"))
    except (ValueError, TypeError, struct.error) as err:
        return None, f"malformed frame: {err}"
    if not 0 < frame.num_examples <= max_examples:
        return None, f"'{wire.NUM_EXAMPLES}' must be an integer in [1, {max_examples}], got {frame.num_examples}"
    want_ask = frame.ask if ask is None else ask
    if frame.round != rnd or frame.ask != want_ask:
        return None, f"stale reply: for round {frame.round} request {frame.ask}, expected round {rnd} request {want_ask}"
    if frame.base != rnd - 1:
        return None, f"stale reply: trained from global round {frame.base}, expected {rnd - 1}"
    index = assigned.get(frame.ask)
    if index is None:
        return None, f"no request {frame.ask} was sent to this client in round {rnd}"
    count = len(frame.scalar)
    if not 0 < count <= len(index):
        return None, f"{count} pairs; expected 1 to {len(index)} (steps x perturbations)"
    if not np.isfinite(frame.scalar).all():
        return None, "non-finite scalar in pairs"
    metrics: dict[str, Any] = {}
    if wire.METRICS in content.metric_records:  # diagnostics, on the rounds the server asks
        metrics.update(dict(content[wire.METRICS]))
    metrics.update(
        {
            wire.NUM_EXAMPLES: frame.num_examples,
            wire.TRAIN_LOSS: frame.loss,
            wire.SERVER_ROUND: frame.round,
            ASK: frame.ask,
            BASE_ROUND: frame.base,
        }
    )
    return SeedReply(np.asarray(index[:count], dtype=np.int64), frame.scalar, frame.num_examples, metrics), None


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
