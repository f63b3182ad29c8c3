"""The interface every update kind implements, and the round context it sees."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message

from strategies import wire
from strategies.codecs import Codec, get_codec


@dataclass
class RoundExchange:
    """What the server side of a kind sees of one round.

    round: the server round. strategy: the run's strategy. grid: the grid showing only
    the round's sampled nodes. global_state: the trainable state the round trains from.
    codec: the run's wire codec. max_examples: the largest plausible ``num-examples``.
    """

    round: int
    strategy: Any
    grid: Any
    global_state: Mapping[str, np.ndarray]
    codec: Codec
    max_examples: int = 10**9

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape of the global state (what a delta reply must match)."""
        return {k: tuple(v.shape) for k, v in self.global_state.items()}


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

    def followups(self, ex: RoundExchange, valid: list[Message]) -> list[Message]:
        """Further messages of the round after the valid replies so far (empty: done)."""
        return []

    def row_metrics(self, aggregated: Mapping[str, Any] | None) -> dict[str, Any]:
        """Which of the strategy's aggregated metrics join the round's metrics row."""
        return {}

    # -- client --------------------------------------------------------------------------
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
