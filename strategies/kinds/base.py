"""The interface every update kind implements, and the round context it sees."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from strategies import wire
from strategies.codecs import Codec, get_codec


@dataclass
class RoundExchange:
    """What the server side of a kind sees of one round.

    round: the server round. strategy: the run's strategy. grid: the grid showing only
    the round's sampled nodes. global_state: the trainable state the round trains from.
    codec: the run's wire codec. max_examples: the largest plausible ``num-examples``.
    failures: clients the kind dropped outside screening; the loop counts them.
    norms: ``id(reply) -> update norm`` of the replies a kind accepted (the loop bounds
    them against the round's median, :mod:`server.screening`). downlinks: ``node id ->``
    the exact state a kind sent that node, when it differs from ``global_state``.
    """

    round: int
    strategy: Any
    grid: Any
    global_state: Mapping[str, np.ndarray]
    codec: Codec
    max_examples: int = 10**9
    failures: int = 0  # clients dropped outside screening (e.g. a failed server-side split step)
    norms: dict[int, float] = field(default_factory=dict)
    downlinks: dict[int, Mapping[str, np.ndarray]] = field(default_factory=dict)

    def sent(self, node: int) -> Mapping[str, np.ndarray]:
        """The exact state ``node`` was sent, which its update is applied to (a lossy
        codec's rounding of the downlink stays on the client: :mod:`strategies.compress`)."""
        return self.downlinks.get(node, self.global_state)

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape of the global state (what a delta reply must match)."""
        return {k: tuple(v.shape) for k, v in self.global_state.items()}


@dataclass
class ClientCall:
    """What the ClientApp hands the client half of a kind for one train message.

    msg: the downlink. method: the client's method (:class:`client.methods.LocalMethod`).
    round_cfg: the downlink's config record. state: the node's ``Context.state``, kept
    between the run's messages to this node. codec: the run's state codec. steps: the
    local steps of a round. initial_state: the run's initial trainable state. train:
    ``round_cfg -> Update``, the whole local training of a round (data, batch order and
    dropout seeded per round, client and request). batch: ``(round, k) -> batch`` the
    k-th batch of that round's order. seeded: ``(round, k) ->`` a context in which
    torch's RNG is seeded for that step (dropout), the caller's restored after.
    metrics: ``update metrics -> reply metrics`` (examples, identity, memory, time).
    """

    msg: Message
    method: Any
    round_cfg: dict[str, Any]
    state: RecordDict
    codec: Codec
    steps: int
    initial_state: Callable[[], dict]
    train: Callable[[dict[str, Any]], Any]
    batch: Callable[[int, int], dict]
    seeded: Callable[[int, int], AbstractContextManager]
    metrics: Callable[[Mapping[str, float]], dict[str, Any]]


class UpdateKind:
    """One exchange: server half (downlink, screening, follow-ups) and client half
    (reaching the global state, encoding the reply). Subclasses override what differs."""

    name: str = ""
    carries: str | None = None  # a kind that wraps another's updates (secagg: delta) names it
    resamplable: bool = True  # a round may ask further clients after its first ones answered
    norm_slack: float = 1.0  # screen.norm_bound is multiplied by this for the kind's update norms

    # -- server --------------------------------------------------------------------------
    def complete_downlink(self, ex: RoundExchange, messages: list[Message]) -> None:
        """Add what the strategy's train messages still lack (e.g. the encoded state)."""

    def screen(self, ex: RoundExchange, reply: Message, ask: int) -> str | None:
        """Check one reply to request ``ask`` (0 = the round's first); ``None`` if valid,
        else the rejection reason. A valid reply is left decoded for aggregation, with
        its metrics (``num-examples``, ``train-loss``, ...) in its ``metrics`` record."""
        raise NotImplementedError

    def followups(self, ex: RoundExchange, valid: list[Message], latest: list[Message]) -> list[Message]:
        """Further messages of the round after the valid replies so far (``latest``: those
        of the last exchange); empty when the round's exchanges are done."""
        return []

    def to_aggregate(self, ex: RoundExchange, valid: list[Message]) -> list[Message]:
        """Which of the round's valid replies the strategy aggregates (default: all)."""
        return valid

    def initial_state(self, strategy: Any, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The run's initial global state from the one a client sent (default: as it is)."""
        return state

    def row_metrics(self, aggregated: Mapping[str, Any] | None) -> dict[str, Any]:
        """Which of the strategy's aggregated metrics join the round's metrics row
        (default: the privacy wrapper's ``epsilon`` and ``dp-*``, as ``dp_*``)."""
        return {k.replace("-", "_"): v for k, v in dict(aggregated or {}).items() if k == "epsilon" or k.startswith("dp-")}

    # -- client --------------------------------------------------------------------------
    def serve(self, call: ClientCall) -> Message:
        """The reply to one train message; by default one whole local-training call:
        reach the global state (:meth:`prepare`), train, encode the reply (:meth:`reply`)."""
        round_cfg = self.prepare(call.method, call.initial_state, call.msg, call.round_cfg)
        update = call.train(round_cfg)
        return self.reply(call.msg, update, round_cfg, call.metrics(update.metrics), call.codec)

    def prepare(self, method: Any, initial_state: Callable[[], dict], msg: Message, round_cfg: dict) -> dict:
        """Bring ``method`` to the global state this round trains from; return the round
        config completed with what the downlink carried beside it."""
        raise NotImplementedError

    def reply(self, msg: Message, update: Any, round_cfg: Mapping[str, Any], metrics: dict[str, Any], codec: Codec) -> Message:
        """The reply message for ``update`` (a :class:`client.methods.Update`)."""
        raise NotImplementedError


def wire_record(kind: str, codec: str, rnd: int | None = None) -> ConfigRecord:
    """The ``wire`` record naming a message's update kind and codec (and, in a reply,
    the round it answers)."""
    record = ConfigRecord({wire.KIND_KEY: kind, wire.CODEC_KEY: codec})
    if rnd is not None:
        record[wire.ROUND_KEY] = int(rnd)
    return record


def wire_mismatch(msg: Message, kind: str, rnd: int) -> str | None:
    """Why a reply's ``wire`` record does not fit this exchange (another update kind, or
    another round); None when it fits or says nothing (a plain Flower reply)."""
    record = msg.content.config_records.get(wire.WIRE)
    if record is None:
        return None
    got = record.get(wire.KIND_KEY, kind)
    if got != kind:
        return f"reply is a '{got}' update; this run aggregates '{kind}' updates"
    answered = record.get(wire.ROUND_KEY, rnd)
    if answered != rnd:
        return f"reply answers round {answered!r}, not round {rnd} (stale or replayed)"
    return None


def update_norm(state: Mapping[str, Any], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm (float64) of ``state - reference`` over the tensors ``state`` holds; a
    tensor smaller than its reference (a lower LoRA rank) is compared with its leading
    block."""
    total = 0.0
    for key, value in state.items():
        v = np.asarray(value, dtype=np.float64)
        ref = reference.get(key)
        if ref is not None:
            v = v - np.asarray(ref, dtype=np.float64)[tuple(slice(0, n) for n in v.shape)]
        total += float(np.dot(v.ravel(), v.ravel()))
    return float(np.sqrt(total))


def wire_codec_name(msg: Message) -> str:
    """The codec a message's tensors were encoded with (fp32 when it does not say)."""
    return str(msg.content.config_records.get(wire.WIRE, {}).get(wire.CODEC_KEY, "fp32"))


def wire_codec(msg: Message, run_codec: Codec | None = None) -> Codec:
    """The codec a message names: the run's own (with its settings) when the names
    agree, else that codec with its default settings."""
    name = wire_codec_name(msg)
    return run_codec if run_codec is not None and run_codec.name == name else get_codec(name)
