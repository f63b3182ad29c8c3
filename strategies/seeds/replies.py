"""Screening seed replies against the seeds assigned, and their weighted aggregate."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from strategies import wire
from strategies.seeds.frame import ReplyFrame
from strategies.seeds.keys import ASK, BASE_ROUND, FRAME


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
        return None, wire.error_reason(msg)
    content = msg.content
    if FRAME not in content.config_records:
        kind = content.config_records.get(wire.WIRE, {}).get(wire.KIND_KEY)
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


def robust_coefficients(replies: Sequence[SeedReply], scale: float, rule: str = "none",
                        max_norm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`weighted_coefficients` behind a robust rule (``robust=``, seed updates).

    clip: each client's scalars scaled to L2 norm at most ``max_norm`` (0: the round's
    median norm); a client's update ``sum_j scalar_j z_j`` has a norm proportional to its
    scalars' (independent z), so this bounds every client's influence.
    median: per seed, FedAvg's coefficient with the mean over the clients that reported
    the seed replaced by their median: ``(W_k / W) * median_c sum_{j: index=k} scalar_cj``
    (``W_k``: their examples). Where one client alone used a seed it is that client's
    value, so the median protects the seeds several clients share; clip bounds the rest.
    """
    if rule == "none" or not replies:
        return weighted_coefficients(replies, scale)
    if rule == "clip":
        norms = [float(np.linalg.norm(r.scalar)) for r in replies]
        bound = max_norm or float(np.median(norms))
        clipped = [SeedReply(r.index, r.scalar * (min(1.0, bound / n) if n > 0 else 1.0), r.weight, r.metrics)
                   for r, n in zip(replies, norms)]
        return weighted_coefficients(clipped, scale)
    total = float(sum(r.weight for r in replies))
    per_seed: dict[int, list[tuple[float, int]]] = {}
    for r in replies:
        uniq, inv = np.unique(r.index, return_inverse=True)
        sums = np.zeros(len(uniq))
        np.add.at(sums, inv, r.scalar)
        for k, v in zip(uniq.tolist(), sums.tolist()):
            per_seed.setdefault(k, []).append((v, r.weight))
    index = np.asarray(sorted(per_seed), dtype=np.int64)
    coeff = np.asarray([sum(w for _, w in per_seed[k]) / total * float(np.median([v for v, _ in per_seed[k]]))
                        for k in index.tolist()])
    return index, (scale * coeff).astype(np.float32)


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
