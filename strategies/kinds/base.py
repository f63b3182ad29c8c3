"""The interface every update kind implements, and the round context it sees."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
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
    """

    round: int
    strategy: Any
    grid: Any
    global_state: Mapping[str, np.ndarray]
    codec: Codec
    max_examples: int = 10**9
    failures: int = 0  # clients dropped outside screening (e.g. a failed server-side split step)

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
        """Which of the strategy's aggregated metrics join the round's metrics row."""
        return {}

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


def wire_record(kind: str, codec: str) -> ConfigRecord:
    """The ``wire`` record naming a message's update kind and codec."""
    return ConfigRecord({wire.KIND_KEY: kind, wire.CODEC_KEY: codec})


def wire_codec_name(msg: Message) -> str:
    """The codec a message's tensors were encoded with (fp32 when it does not say)."""
    return str(msg.content.config_records.get(wire.WIRE, {}).get(wire.CODEC_KEY, "fp32"))


def wire_codec(msg: Message) -> Codec:
    return get_codec(wire_codec_name(msg))
