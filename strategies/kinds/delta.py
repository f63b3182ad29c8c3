"""The ``delta`` kind: PEFT tensors both ways, through the run's codec.

Down: the global trainable state, encoded once per round with the run's codec (the
strategy's own ``arrays`` are replaced). Up: the client's trainable state after local
training, encoded with its codec, plus its metrics. Screening (a malformed or hostile
update must never reach the aggregate): a Flower error, the expected records, a known
codec, the update kind and round its ``wire`` record names, a plausible example count,
the exact set of tensor names, their shapes and wire dtype, finiteness; then its norm
(against the state its client was sent) goes to the round's norm bound. A valid reply is left holding the decoded fp32 tensors, so any
Flower strategy aggregates it as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from strategies import wire
from strategies.codecs import CODECS, Codec
from strategies.kinds.base import (
    ClientCall, RoundExchange, UpdateKind, update_norm, wire_codec, wire_codec_name, wire_mismatch, wire_record,
)


def state_content(state: Mapping[str, torch.Tensor], codec: Codec, rnd: int | None = None) -> RecordDict:
    """A trainable state as ``arrays`` + ``wire`` records (a reply's names its round)."""
    return RecordDict({wire.ARRAYS: codec.encode(state), wire.WIRE: wire_record(wire.KIND_DELTA, codec.name, rnd)})


def _content(state: Mapping[str, np.ndarray], codec: Codec) -> RecordDict:
    return state_content({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, codec)


def decode_state(msg: Message, run_codec: Codec | None = None) -> dict[str, torch.Tensor]:
    """The fp32 tensors of a message built by :func:`state_content`."""
    return wire_codec(msg, run_codec).decode(msg.content[wire.ARRAYS])


RESIDUAL = "anther-ef-residual"  # Context.state record: what error feedback left unsent


def _residual(state: RecordDict) -> dict[str, np.ndarray] | None:
    record = state.array_records.get(RESIDUAL)
    return {k: a.numpy() for k, a in record.items()} if record is not None else None


def check_reply(
    msg: Message, expected: Mapping[str, tuple[int, ...]], max_examples: int = 10**9, run_codec: Codec | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Validate a delta reply; return ``(decoded fp32 tensors, None)`` or ``(None, reason)``.

    Parameters
    ----------
    msg : Message
        A train reply.
    expected : Mapping[str, tuple[int, ...]]
        Tensor name -> shape of the global trainable state.
    max_examples : int
        Largest plausible ``num-examples`` (guards the weighting against inflation).
    """
    if msg.has_error():
        return None, wire.error_reason(msg)
    content = msg.content
    for key, kind in ((wire.ARRAYS, "array_records"), (wire.METRICS, "metric_records")):
        if key not in getattr(content, kind):
            return None, f"reply has no '{key}' record"
    codec_name = wire_codec_name(msg)
    if codec_name not in CODECS:
        return None, f"unknown codec '{codec_name}'"
    codec = wire_codec(msg, run_codec)
    n = content[wire.METRICS].get(wire.NUM_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= max_examples:
        return None, f"'{wire.NUM_EXAMPLES}' must be an integer in [1, {max_examples}], got {n!r}"
    arrays = content[wire.ARRAYS]
    if codec.relative and reference is None:
        return None, f"codec {codec.name} sends updates against the downlink; this exchange has none to add them to"
    reason = codec.update_layout_reason(arrays, expected) if codec.relative else codec.layout_reason(arrays, expected)
    if reason is not None:
        return None, reason
    try:
        decoded = codec.decode_update(arrays, reference, expected) if codec.relative else codec.decode(arrays)
    except Exception as err:  # noqa: BLE001 - a payload that does not parse is the client's fault
        return None, f"undecodable tensors: {type(err).__name__}: {err}"
    for key, t in decoded.items():
        if not bool(t.isfinite().all()):
            return None, f"tensor '{key}' has non-finite values"
    return decoded, None


class DeltaKind(UpdateKind):
    """PEFT deltas (LoRA, ...): paired with Flower's delta strategies."""

    name = wire.KIND_DELTA

    def complete_downlink(self, ex: RoundExchange, messages: list[Message]) -> None:
        """The global state to every client, or, from a strategy with ``client_state(global,
        node id)`` (heterogeneous ranks), each client's own view of it."""
        personal = getattr(ex.strategy, "client_state", None)
        if personal and len({id(m.content) for m in messages}) < len(messages):
            raise RuntimeError(f"{type(ex.strategy).__name__}.client_state: its configure_train must give every "
                               "message its own content (Flower's FedAvg shares one)")
        shared = None if personal else _content(ex.global_state, ex.codec)
        for msg in messages:
            if shared is None:
                node = msg.metadata.dst_node_id
                ex.downlinks[node] = personal(ex.global_state, node)
            content = shared or _content(ex.downlinks[node], ex.codec)
            msg.content[wire.ARRAYS] = content[wire.ARRAYS]
            msg.content[wire.WIRE] = content[wire.WIRE]

    def initial_state(self, strategy: Any, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        hook = getattr(strategy, "initial_global", None)
        return hook(state) if hook else state

    def screen(self, ex: RoundExchange, reply: Message, ask: int) -> str | None:
        shapes_of = getattr(ex.strategy, "reply_shapes", None)  # e.g. each client's LoRA rank
        expected = shapes_of(ex.shapes, reply) if shapes_of else ex.shapes
        reason = wire_mismatch(reply, self.name, ex.round) if not reply.has_error() else None
        sent = ex.sent(reply.metadata.src_node_id)
        decoded, reason = (None, reason) if reason else check_reply(reply, expected, ex.max_examples, ex.codec, sent)
        if reason is None:
            ex.norms[id(reply)] = update_norm({k: v.numpy() for k, v in decoded.items()}, sent)
            reply.content[wire.ARRAYS] = ArrayRecord({k: Array(v.numpy()) for k, v in decoded.items()})
            if wire.WIRE in reply.content.config_records:
                del reply.content.config_records[wire.WIRE]
        return reason

    def serve(self, call: ClientCall) -> Message:
        """As every kind (load, train, reply); with a relative codec the reply encodes the
        update against the downlink as decoded here, and error feedback keeps what it
        left unsent in the node's ``Context.state``."""
        if not call.codec.relative:
            return super().serve(call)
        reference = decode_state(call.msg, call.codec)
        call.method.load_trainable_state(reference)
        update = call.train(call.round_cfg)
        record, left = call.codec.encode_update(update.state, reference, _residual(call.state))
        if left is not None:
            call.state[RESIDUAL] = ArrayRecord({k: Array(v) for k, v in left.items()})
        content = RecordDict({wire.ARRAYS: record, wire.WIRE: wire_record(self.name, call.codec.name,
                                                                         call.round_cfg.get(wire.SERVER_ROUND))})
        content[wire.METRICS] = MetricRecord(call.metrics(update.metrics))
        return Message(content, reply_to=call.msg)

    def prepare(self, method: Any, initial_state: Callable[[], dict], msg: Message, round_cfg: dict) -> dict:
        method.load_trainable_state(decode_state(msg))
        return round_cfg

    def reply(self, msg: Message, update: Any, round_cfg: Mapping[str, Any], metrics: dict[str, Any], codec: Codec) -> Message:
        content = state_content(update.state, codec, round_cfg.get(wire.SERVER_ROUND))
        content[wire.METRICS] = MetricRecord(metrics)
        return Message(content, reply_to=msg)
