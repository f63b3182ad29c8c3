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

from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.methods.base import Update
from strategies import seeds as sd
from strategies import wire
from strategies.codecs import get_codec


class CatchUpError(RuntimeError):
    """The local state is too old for the history the server sent."""


def sync_to_base(method: Any, initial_state: dict[str, torch.Tensor], msg: Message, round_cfg: dict) -> dict:
    """Bring ``method``'s parameters to the global state the round trains from.

    Returns the round config completed with the downlink's extra records (Pro
    probabilities, the previous round's update) for the method.
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
            method.load_trainable_state(initial_state)
            have = 0
        params = method.seed_params()
        pool_seed = int(round_cfg[sd.POOL_SEED])
        dist, backend = str(round_cfg[sd.DIST]), method.cfg.method.kernel_backend
        for entry in entries:
            if entry.round > have:
                entry.apply_(params, pool_seed, size, dist, backend)
    method.synced = (run, base)
    out = dict(round_cfg)
    if sd.PROBS in content.array_records:
        out[sd.PROBS] = content[sd.PROBS]["p"].numpy()
    if sd.PREV in content.config_records:
        out[sd.PREV] = sd.History.from_record(content[sd.PREV], int(round_cfg[sd.POOL_SIZE]))
    elif round_cfg.get(sd.PREV_IN_HISTORY):
        out[sd.PREV] = [e for e in entries if e.round == base]
    return out


def seed_reply(msg: Message, update: Update, round_cfg: dict, metrics: dict[str, Any]) -> Message:
    """The (pool index, scalar) reply; it echoes the round, request and base round."""
    index, scalar = update.pairs
    size = int(round_cfg.get(sd.POOL_SIZE, int(index.max()) + 1 if len(index) else 1))
    echo = {
        wire.SERVER_ROUND: int(round_cfg.get(wire.SERVER_ROUND, 0)),
        sd.ASK: int(round_cfg.get(sd.ASK, 0)),
        sd.BASE_ROUND: int(round_cfg.get(sd.BASE_ROUND, -1)),
    }
    content = RecordDict(
        {
            sd.PAIRS: sd.encode_pairs(np.asarray(index), np.asarray(scalar), size),
            wire.METRICS: MetricRecord({**metrics, **echo}),
            wire.WIRE: ConfigRecord({"kind": wire.KIND_SEEDS, "codec": "fp32"}),
        }
    )
    return Message(content, reply_to=msg)
