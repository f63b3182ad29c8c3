"""Client side of the seed wire format: catch up to the global state, build the reply.

A seed strategy's downlink brings the client to the global state after round ``t-1``
either as the full trainable state or as the history of aggregated (seed, coefficient)
updates since round ``b`` (``zo-sync-from``). The client's own copy is at round ``c``
(per process, tagged with the run id): it applies the rounds after ``max(b, c)``. A copy
older than ``b`` cannot be caught up from this history, except from the initial state
(``b = 0``), which every client rebuilds deterministically; otherwise the call fails with
a clear reason and the server sends the full state next time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Message, MetricRecord, RecordDict

from client.methods.base import Update
from strategies import seeds as sd
from strategies import wire
from strategies.codecs import get_codec


class CatchUpError(RuntimeError):
    """The local state is too old for the history the server sent."""


def sync_to_base(method: Any, initial_state: Callable[[], dict[str, torch.Tensor]], msg: Message, round_cfg: dict) -> dict:
    """Bring ``method``'s parameters to the global state the round trains from.
    ``initial_state()`` is only called when the parameters must restart from round 0
    and have been touched since they were loaded.

    Returns the round config completed with the pool indices the server assigned
    explicitly (``zo-assigned``), if any.
    """
    content = msg.content
    run = str(msg.metadata.run_id)
    base = int(round_cfg[sd.BASE_ROUND])
    entries: list[sd.RoundUpdate] = []
    if wire.ARRAYS in content.array_records:
        codec = get_codec(str(content.config_records.get(wire.WIRE, {}).get("codec", "fp32")))
        method.load_trainable_state(codec.decode(content[wire.ARRAYS]))
    else:
        sync_from = int(round_cfg[sd.SYNC_FROM])
        size = int(round_cfg[sd.POOL_SIZE])
        entries = sd.History.from_record(content[sd.HISTORY], size) if sd.HISTORY in content.config_records else []
        have = method.synced[1] if method.synced and method.synced[0] == run else None
        if have is None or not sync_from <= have <= base:
            if sync_from != 0:
                raise CatchUpError(
                    f"cannot catch up: local state is at round {have}, the history starts after round {sync_from}"
                )
            if not getattr(method, "pristine", False):
                method.load_trainable_state(initial_state())
            have = 0
        params = method.seed_params()
        pool_seed = int(round_cfg[sd.POOL_SEED])
        dist, backend = str(round_cfg[sd.DIST]), method.cfg.method.kernel_backend
        for entry in entries:
            if entry.round > have:
                entry.apply_(params, pool_seed, size, dist, backend)
    method.synced = (run, base)
    method.pristine = False
    out = dict(round_cfg)
    if sd.ASSIGNED in content.config_records:
        out[sd.ASSIGNED] = sd.unpack(content[sd.ASSIGNED], "index", sd.index_dtype(int(round_cfg[sd.POOL_SIZE])))
    return out


IN_FRAME = (wire.NUM_EXAMPLES, wire.TRAIN_LOSS)


def seed_reply(msg: Message, update: Update, round_cfg: dict, metrics: dict[str, Any]) -> Message:
    """The reply frame: the scalars, in the order of the assigned seeds, at ``zo-bits``
    bits, behind a header echoing the round, request and base round, with the example
    count and mean train loss. The other metrics (peak RSS, times, ...) ride along only
    when the server asks (``zo-diag``)."""
    _, scalar = update.pairs
    draw = int(round_cfg.get(sd.DRAW, 0))
    frame = sd.ReplyFrame(
        round=int(round_cfg.get(wire.SERVER_ROUND, 0)),
        base=int(round_cfg.get(sd.BASE_ROUND, -1)),
        ask=int(round_cfg.get(sd.ASK, 0)),
        num_examples=int(metrics[wire.NUM_EXAMPLES]),
        loss=float(metrics.get(wire.TRAIN_LOSS, float("nan"))),
        scalar=np.asarray(scalar, dtype=np.float64),
        bits=int(round_cfg.get(sd.BITS, 32)),
    )
    rng = np.random.default_rng([draw & 0xFFFFFFFF, draw >> 32, 0x51])  # stochastic rounding, reproducible
    content = RecordDict({sd.FRAME: sd.frame_record(frame, rng)})
    if round_cfg.get(sd.DIAG):
        content[wire.METRICS] = MetricRecord({k: v for k, v in metrics.items() if k not in IN_FRAME})
    return Message(content, reply_to=msg)
