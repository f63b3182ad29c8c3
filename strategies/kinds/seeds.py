"""The ``seeds`` kind: (seed, scalar) pairs up, never tensors (FedKSeed, FwdLLM).

Down (built by the :class:`~strategies.seed_strategy.SeedStrategy`): the round config
(pool, learning rate, distribution, pair budget, the request's pool draws, scalar width)
and what brings the client to the global state after round ``t-1``: the full trainable
state, or the history of aggregated (seed, coefficient) updates since round ``b``
(``zo-sync-from``). The client's own copy is at round ``c`` (per process, tagged with
the run id): it applies the rounds after ``max(b, c)``. A copy older than ``b`` cannot be
caught up from this history, except from the initial state (``b = 0``), which every
client rebuilds deterministically; otherwise the call fails with a clear reason and the
server sends the full state next time.

Up: one frame (:class:`strategies.seeds.ReplyFrame`), the scalars in the order of the
assigned seeds behind a header echoing the round, request and base round, with the
example count and mean train loss; the other metrics ride along only when the server
asks (``zo-diag``). The strategy screens a reply against the seeds it assigned
(``check_reply``) and may ask the same clients again (``configure_followup``: FwdLLM's
variance control); its aggregated metrics (``unique-seeds``, ``requests``, ...) join
the round's metrics row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from strategies import seeds as sd
from strategies import wire
from strategies.codecs import Codec
from strategies.kinds.base import RoundExchange, UpdateKind, wire_codec


class CatchUpError(RuntimeError):
    """The local state is too old for the history the server sent."""


def sync_to_base(method: Any, initial_state: Callable[[], dict], msg: Message, round_cfg: dict) -> dict:
    """Bring ``method``'s parameters to the global state the round trains from.
    ``initial_state()`` is only called when the parameters must restart from round 0
    and have been touched since they were loaded.

    Returns the round config completed with the pool indices the server assigned
    explicitly (``zo-assigned``), if any.
    """
    content = msg.content
    run = str(msg.metadata.run_id)
    base = int(round_cfg[sd.BASE_ROUND])
    if wire.ARRAYS in content.array_records:
        method.load_trainable_state(wire_codec(msg).decode(content[wire.ARRAYS]))
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
            if not method.pristine:
                method.load_trainable_state(initial_state())
            have = 0
        params = method.seed_params()
        pool_seed = int(round_cfg[sd.POOL_SEED])
        dist, backend = str(round_cfg[sd.DIST]), str(round_cfg.get(sd.BACKEND, "auto"))
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


def seed_reply(msg: Message, update: Any, round_cfg: Mapping[str, Any], metrics: dict[str, Any]) -> Message:
    """The reply frame of ``update.pairs`` (see the module docstring)."""
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


class SeedsKind(UpdateKind):
    """(seed, scalar) pairs: paired with the seed strategies (FedKSeed, FedKSeed-Pro, FwdLLM)."""

    name = wire.KIND_SEEDS
    # A seed reply's norm is its scalars': their size follows the client's own gradient
    # norm, which label skew spreads far more than Adam-normalised LoRA updates. The
    # bound stays, 100x wider, for garbage (1e30 scalars); robust=clip bounds the rest.
    norm_slack = 100.0

    def screen(self, ex: RoundExchange, reply: Message, ask: int) -> str | None:
        parsed, reason = ex.strategy.check_reply(ex.round, reply, ask)
        if parsed is not None:
            ex.norms[id(reply)] = float(np.linalg.norm(np.asarray(parsed.scalar, dtype=np.float64)))
            reply.content[wire.METRICS] = MetricRecord(
                {k: v for k, v in parsed.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            )
        return reason

    def followups(self, ex: RoundExchange, valid: list[Message], latest: list[Message]) -> list[Message]:
        return list(ex.strategy.configure_followup(ex.round, valid, ex.grid))

    def row_metrics(self, aggregated: Mapping[str, Any] | None) -> dict[str, Any]:
        return {k.replace("-", "_"): v for k, v in dict(aggregated or {}).items()}

    def prepare(self, method: Any, initial_state: Callable[[], dict], msg: Message, round_cfg: dict) -> dict:
        return sync_to_base(method, initial_state, msg, round_cfg)

    def reply(self, msg: Message, update: Any, round_cfg: Mapping[str, Any], metrics: dict[str, Any], codec: Codec) -> Message:
        return seed_reply(msg, update, round_cfg, metrics)
