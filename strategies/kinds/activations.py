"""The ``activations`` kind: split training's round trips (SplitFed V1/V2, U-shaped).

A round is a conversation of one train message per exchange with each sampled client
(``split-phase`` says what a downlink carries, ``split-step`` which local step):

- ``start`` (step 0): the client part of the global state (the run's codec). The client
  loads it, starts its optimizer, and answers with the **acts** of step 0: the cut-layer
  activations of its batch (activation codec), the attention mask, and the labels
  unless U-shaped.
- ``grad`` (step k): the gradient of step k-1's activations (and, vanilla, that step's
  loss). The client recomputes step k-1's forward (same parameters, batch and dropout
  seed), back-propagates, steps its optimizer, and answers with the acts of step k, or,
  after its last step, with **final**: its client part (a delta reply, screened and
  aggregated like LoRA's) and its metrics.
- ``mid`` (U-shaped, step k): the server blocks' output for step k. The client runs its
  last blocks and head, computes the loss with its own labels, keeps the gradients of
  its tail, and answers with **grad**: the gradient of that output, and the loss.

So a vanilla round is ``steps + 1`` exchanges and a U-shaped one ``2 steps + 1``. Between
messages a client keeps its progress, trainable state and optimizer state in its Flower
``Context.state`` (in simulation and deployment alike), never a graph: any process may
serve its next message. Every reply echoes round, step and what it answers; the
strategy (:mod:`strategies.split`) screens it against what it expects from that client
(a stale, replayed or malformed reply is rejected with its reason, and that client
leaves the round), computes the server side, and writes the next downlinks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import activation_codec as ac
from strategies import wire
from strategies.codecs import Codec
from strategies.kinds.base import ClientCall, RoundExchange, UpdateKind, update_norm, wire_record
from strategies.kinds.delta import decode_state, state_content

PHASE, STEP, LOSS = "split-phase", "split-step", "split-loss"  # downlink config keys
START, GRAD, MID = "start", "grad", "mid"  # downlink phases
ACTS, FINAL = "acts", "final"  # reply types (GRAD is one too, U-shaped)
SPLIT, ECHO = "split", "split-echo"  # ArrayRecord of tensors; ConfigRecord {round, step, reply} of a reply
HIDDEN, GRADIENT, MASK, LABELS = "hidden", "grad", "attention-mask", "labels"
PROGRESS, PARAMS, OPTIM, TAIL_GRADS = "split.progress", "split.params", "split.optim", "split.tail-grads"
TAIL_SEEDS = 1 << 20  # the U-shaped tail's dropout seeds: (round, TAIL_SEEDS + step), apart from the front's


class StaleMessage(RuntimeError):
    """A downlink that does not continue this client's conversation of the round."""


def echo(rnd: int, step: int, reply: str) -> ConfigRecord:
    return ConfigRecord({"round": rnd, "step": step, "reply": reply})


def tensors_content(tensors: Mapping[str, torch.Tensor], codec: str, config: Mapping[str, Any], record: str = ECHO,
                    raw: Mapping[str, torch.Tensor] | None = None) -> RecordDict:
    """Content carrying ``tensors`` (activation codec ``codec``), ``raw`` ones (as they
    are) and the ConfigRecord ``record`` (a reply's echo, or a downlink's config)."""
    arrays = ArrayRecord()
    for name, t in tensors.items():
        ac.encode_into(arrays, name, t, codec)
    for name, t in (raw or {}).items():
        arrays[name] = Array(np.ascontiguousarray(t.detach().cpu().numpy()))
    return RecordDict({SPLIT: arrays, record: ConfigRecord(dict(config)), wire.WIRE: wire_record(wire.KIND_ACTIVATIONS, codec)})


# -- client half ---------------------------------------------------------------------------
def _save(call: ClientCall, progress: dict[str, Any]) -> None:
    m = call.method
    call.state[PROGRESS] = ConfigRecord(progress)
    call.state[PARAMS] = ArrayRecord({k: Array(v.numpy()) for k, v in m.trainable_state().items()})
    call.state[OPTIM] = ArrayRecord({k: Array(v.numpy()) for k, v in m.optimizer_state().items()})


def _restore(call: ClientCall, rnd: int, step: int, phase: str) -> dict[str, Any]:
    """This client's progress in round ``rnd``, checked to expect ``phase`` at ``step``."""
    if PROGRESS not in call.state.config_records:
        raise StaleMessage(f"'{phase}' for step {step} of round {rnd}, but this client has no split round in progress")
    progress = dict(call.state[PROGRESS])
    want = (str(call.msg.metadata.run_id), rnd, step, phase)
    have = (progress["run"], progress["round"], progress["step"], progress["expect"])
    if have != want:
        raise StaleMessage(f"'{phase}' for step {step} of round {rnd}, but this client expects '{have[3]}' "
                           f"for step {have[2]} of round {have[1]}")
    m = call.method
    m.load_trainable_state({k: torch.from_numpy(a.numpy()) for k, a in call.state[PARAMS].items()})
    m.load_optimizer_state({k: torch.from_numpy(a.numpy()) for k, a in call.state[OPTIM].items()})
    return progress


def _received(call: ClientCall, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor ``name`` a downlink carries (a gradient, or the server blocks' output),
    checked: codec, dtype, ``shape``, finite values; ValueError naming what is wrong."""
    content = call.msg.content
    codec = str(content.config_records.get(wire.WIRE, {}).get(wire.CODEC_KEY, ""))
    record = content.array_records.get(SPLIT)
    reason = "no tensors" if record is None else ac.check_encoded(record, name, codec, shape)
    if reason is None:
        tensor = ac.decode_from(record, name, codec)
        reason = None if bool(tensor.isfinite().all()) else "non-finite values"
    if reason is not None:
        raise ValueError(f"bad {'gradient' if name == GRADIENT else 'activations'} from the server for this step: {reason}")
    return tensor


def _acts_reply(call: ClientCall, rnd: int, step: int, progress: dict[str, Any]) -> Message:
    m = call.method
    batch = call.batch(rnd, step)
    with call.seeded(rnd, step), torch.no_grad():
        hidden = m.front(batch)
    raw = {MASK: batch["attention_mask"].to(torch.int8)}
    if not m.u_shaped:
        raw[LABELS] = batch["labels"]
    progress.update(step=step if m.u_shaped else step + 1, expect=MID if m.u_shaped else GRAD)
    content = tensors_content({HIDDEN: hidden}, m.activation_codec, echo(rnd, step, ACTS), raw=raw)
    return Message(content, reply_to=call.msg)


def serve_split(call: ClientCall) -> Message:
    """The client half of one split exchange (see the module docstring). The final
    reply's ``train-s`` sums the compute of all the round's exchanges, and its
    ``peak-rss-mb`` is the highest of their per-call peaks."""
    t0 = time.perf_counter()
    reply, progress = _serve(call)
    progress["train-s"] = progress.get("train-s", 0.0) + time.perf_counter() - t0
    peak = call.metrics({}).get(wire.PEAK_RSS_MB)
    if peak is not None:  # the round's peak over all its calls, for the final reply
        progress[wire.PEAK_RSS_MB] = max(float(peak), float(progress.get(wire.PEAK_RSS_MB, 0.0)))
    _save(call, progress)
    return reply


def _serve(call: ClientCall) -> tuple[Message, dict[str, Any]]:
    m, cfg = call.method, call.round_cfg
    rnd, step, phase = int(cfg[wire.SERVER_ROUND]), int(cfg.get(STEP, 0)), str(cfg.get(PHASE, START))
    if phase == START:
        m.load_trainable_state(decode_state(call.msg))
        m.start_round()
        for name in (PROGRESS, PARAMS, OPTIM, TAIL_GRADS):
            if name in call.state:
                del call.state[name]
        progress = {"run": str(call.msg.metadata.run_id), "round": rnd, "step": 0, "expect": START,
                    "loss-sum": 0.0, "seen": 0, "steps": call.steps}
        reply = _acts_reply(call, rnd, 0, progress)
    elif phase == MID:
        progress = _restore(call, rnd, step, MID)
        batch = call.batch(rnd, step)
        b, t = batch["attention_mask"].shape
        hidden = _received(call, HIDDEN, (int(b), int(t), int(m.hidden_size)))
        with call.seeded(rnd, TAIL_SEEDS + step):
            loss, grad = m.back(hidden, batch)
        call.state[TAIL_GRADS] = ArrayRecord({k: Array(v.numpy()) for k, v in m.gradients().items()})
        n = int(batch["attention_mask"].shape[0])
        progress.update({"loss-sum": progress["loss-sum"] + loss * n, "seen": progress["seen"] + n,
                         "expect": GRAD, "step": step + 1})
        content = tensors_content({GRADIENT: grad}, m.activation_codec, {**echo(rnd, step, GRAD), LOSS: loss})
        reply = Message(content, reply_to=call.msg)
    elif phase == GRAD:
        progress = _restore(call, rnd, step, GRAD)
        batch = call.batch(rnd, step - 1)
        if m.u_shaped:
            m.load_gradients({k: torch.from_numpy(a.numpy()) for k, a in call.state[TAIL_GRADS].items()})
        with call.seeded(rnd, step - 1):
            hidden = m.front(batch)
        m.backward_front(hidden, _received(call, GRADIENT, tuple(hidden.shape)))
        m.step()
        if not m.u_shaped:
            n = int(batch["attention_mask"].shape[0])
            progress.update({"loss-sum": progress["loss-sum"] + float(cfg[LOSS]) * n, "seen": progress["seen"] + n})
        if step < int(progress["steps"]):
            reply = _acts_reply(call, rnd, step, progress)
        else:
            progress["expect"] = "done"
            metrics = call.metrics({wire.TRAIN_LOSS: progress["loss-sum"] / max(progress["seen"], 1),
                                    "examples-seen": progress["seen"], wire.TRAIN_SECONDS: progress.get("train-s", 0.0)})
            if wire.PEAK_RSS_MB in metrics:
                metrics[wire.PEAK_RSS_MB] = max(float(metrics[wire.PEAK_RSS_MB]), float(progress.get(wire.PEAK_RSS_MB, 0.0)))
            content = state_content(m.trainable_state(), call.codec)
            content[wire.METRICS] = MetricRecord(metrics)
            content[ECHO] = echo(rnd, step, FINAL)
            reply = Message(content, reply_to=call.msg)
    else:
        raise StaleMessage(f"unknown split phase '{phase}'")
    return reply, progress


# -- server half ---------------------------------------------------------------------------
class ActivationsKind(UpdateKind):
    """Split training: paired with the split strategies (``sfl_v1``, ``sfl_v2``)."""

    name = wire.KIND_ACTIVATIONS

    def complete_downlink(self, ex: RoundExchange, messages: list[Message]) -> None:
        keys = ex.strategy.client_keys(ex.global_state)
        content = state_content({k: torch.from_numpy(np.ascontiguousarray(ex.global_state[k])) for k in keys}, ex.codec)
        for msg in messages:
            msg.content[wire.ARRAYS] = content[wire.ARRAYS]
            msg.content[wire.WIRE] = content[wire.WIRE]

    resamplable = False  # a round's clients train in lock-step with the server's part

    def screen(self, ex: RoundExchange, reply: Message, ask: int) -> str | None:
        reason = ex.strategy.check_reply(ex.round, reply, ask)
        if reason is None and reply.content.config_records.get(ECHO, {}).get("reply") == FINAL:
            ex.norms[id(reply)] = update_norm({k: a.numpy() for k, a in reply.content[wire.ARRAYS].items()}, ex.global_state)
        return reason

    def followups(self, ex: RoundExchange, valid: list[Message], latest: list[Message]) -> list[Message]:
        messages = list(ex.strategy.configure_followup(ex.round, latest, ex.grid))
        ex.failures += ex.strategy.take_server_failures()
        return messages

    def to_aggregate(self, ex: RoundExchange, valid: list[Message]) -> list[Message]:
        return ex.strategy.final_replies(valid)

    def initial_state(self, strategy: Any, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return strategy.compose_initial_state(state)

    def row_metrics(self, aggregated: Mapping[str, Any] | None) -> dict[str, Any]:
        return {k.replace("-", "_"): v for k, v in dict(aggregated or {}).items() if k.startswith("server-")}

    def serve(self, call: ClientCall) -> Message:
        return serve_split(call)

    def prepare(self, method: Any, initial_state: Callable[[], dict], msg: Message, round_cfg: dict) -> dict:
        raise NotImplementedError("the activations kind serves its exchanges in serve()")

    def reply(self, msg: Message, update: Any, round_cfg: Mapping[str, Any], metrics: dict[str, Any], codec: Codec) -> Message:
        raise NotImplementedError("the activations kind serves its exchanges in serve()")
