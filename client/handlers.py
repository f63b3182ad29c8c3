"""What the Anther ClientApp does with each message (the Flower component, ``client.app:app``,
is a light front that calls these here or in a warm worker; :mod:`client.app`).

query  "hello": reply with this node's identity (partition id) — used for seeded sampling.
query  "init":  reply with the initial trainable state (deterministic from the seed).
train:          the method's update kind serves it: by default it brings the method to the
                global state, the method runs its local steps on the local data, and the
                kind encodes the reply with the metrics (examples, loss, times, peak RSS);
                split training answers one exchange of a step per message. A failure becomes a Flower error
                reply naming the client and the reason; the server counts it and
                aggregates the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from client import memory
from client.attacks import clipped_update, craft_reply, craft_update, flips_labels, is_attacker, stays_silent
from client.batches import batch_iterator
from client.budget import budget_mb, check, device_facts, node_option
from client.config import ClientConfig
from client.data_source import encoded_partition, label_names
from client.flops import FlopCount
from client.runtime import get_runtime
from strategies import wire
from strategies.codecs import get_codec
from strategies.kinds import ClientCall, serving_kind
from strategies.kinds.delta import state_content
from strategies.runconfig import unflatten
from strategies.seeds import ASK

log = logging.getLogger("anther.client")
CLIENT_ERROR = 1  # Flower Error code for a failed local step
RUN_CONFIG_ENV = "ANTHER_RUN_CONFIG"  # set by the simulator for custom ClientApps
STEP_SEEDS = 1 << 16  # requests below this are whole-round calls; split steps seed dropout from here


def _pooled_identity(msg: Message | None, context: Context) -> int | None:
    """The client a pooled simulation's message is for (``wire.CLIENT_ID``), else None.
    A node with its own data (``data-path``: a deployed device) is always itself."""
    if msg is None or "data-path" in context.node_config or not msg.has_content():
        return None
    ident = msg.content.config_records.get(wire.CONFIG, {}).get(wire.CLIENT_ID)
    return None if ident is None else int(ident)


def _identity(context: Context, msg: Message | None = None) -> int:
    pooled = _pooled_identity(msg, context)
    return pooled if pooled is not None else int(context.node_config.get(wire.PARTITION_ID, context.node_id))


def _partition_key(context: Context, msg: Message | None = None) -> tuple:
    pooled = _pooled_identity(msg, context)
    if pooled is not None:
        return ((wire.PARTITION_ID, pooled),)
    keep = (wire.PARTITION_ID, "data-path")
    return tuple(sorted((k, v) for k, v in context.node_config.items() if k in keep))


@contextmanager
def client_state(context: Context, msg: Message) -> Iterator[RecordDict]:
    """The state this client keeps between messages (e.g. an error-feedback residual,
    split training's progress). On a pool node, each client's records are kept apart in
    the node's state under ``"<identity>/"`` and only that client's are visible."""
    ident = _pooled_identity(msg, context)
    if ident is None:
        yield context.state
        return
    prefix = f"{ident}/"
    mine = [k for k in context.state if k.startswith(prefix)]
    state = RecordDict({k[len(prefix):]: context.state[k] for k in mine})
    yield state
    for k in mine:
        del context.state[k]
    for k, record in state.items():
        context.state[prefix + k] = record


def _train_shape(cfg: ClientConfig, context: Context, round_cfg: dict[str, Any]) -> tuple[int, int]:
    """(local steps, batch size) of one train call, checked against the device's memory
    budget before the model loads: the server's assignment (simulated devices); else, on a
    deployed node under ``assign=resource_aware``, the node's own choice
    (:func:`client.budget.node_option`); else the run's own."""
    if wire.ASSIGN_BATCH_SIZE in round_cfg or wire.ASSIGN_LOCAL_STEPS in round_cfg:
        shape = (int(round_cfg.get(wire.ASSIGN_LOCAL_STEPS, cfg.local_steps)),
                 int(round_cfg.get(wire.ASSIGN_BATCH_SIZE, cfg.batch_size)))
    else:
        chosen = (node_option(cfg, len(label_names(cfg)), budget_mb(context.node_config), dict(context.run_config))
                  if context.run_config.get("deployed") else None)
        if chosen is not None:
            return chosen  # checked against the budget while choosing
        shape = (cfg.local_steps, cfg.batch_size)
    _within_budget(cfg, context, batch_size=shape[1], local_steps=shape[0])
    return shape


def _within_budget(cfg: ClientConfig, context: Context, batch_size: int | None = None,
                   local_steps: int | None = None) -> None:
    """On a device with a memory budget: the pre-flight estimate, before the model is loaded
    (:mod:`client.budget`; raises OverBudget, which becomes this client's error reply)."""
    budget = budget_mb(context.node_config)
    if budget is not None:
        check(cfg, len(label_names(cfg)), budget, batch_size, local_steps)


def handle_query(msg: Message, cfg: ClientConfig, context: Context) -> Message:
    op = msg.content[wire.CONFIG]["op"] if wire.CONFIG in msg.content.config_records else "hello"
    content = RecordDict()
    if op == "init":
        _train_shape(cfg, context, {})  # what this node would train fits its budget (or the error reply says why)
        rt = get_runtime(cfg, len(label_names(cfg)))
        content = state_content(rt.initial_state, get_codec("fp32"))
    content[wire.METRICS] = MetricRecord({wire.PARTITION_ID: _identity(context, msg)})
    if op == "hello" and (facts := device_facts(context.node_config)) is not None:
        content[wire.DEVICE] = ConfigRecord(facts)  # e.g. rank_assignment=by_device on a deployment
    return Message(content, reply_to=msg)


def _round_seed(seed: int, rnd: int, ident: int, ask: int = 0) -> int:
    """The torch seed of one client call: batch order (per round and client, the same
    for every request of a round) and dropout (per request)."""
    return hash((seed, rnd, ident) if not ask else (seed, rnd, ident, ask)) & 0x7FFFFFFF


def handle_train(msg: Message, cfg: ClientConfig, context: Context) -> Message:
    """One train message: the method's update kind serves it (by default: reach the
    global state, train locally, reply; see the module docstring)."""
    t0 = time.perf_counter()
    memory.reset_peak()
    round_cfg = dict(msg.content[wire.CONFIG]) if wire.CONFIG in msg.content.config_records else {}
    local_steps, batch_size = _train_shape(cfg, context, round_cfg)
    rt = get_runtime(cfg, len(label_names(cfg)))
    kind = serving_kind(rt.method.kind, msg.content.config_records.get(wire.WIRE, {}).get(wire.KIND_KEY))
    ident = _identity(context, msg)
    attacking = is_attacker(cfg.attack, ident, cfg.num_clients, cfg.seed)
    stays_silent(cfg.attack, attacking, ident)
    data = encoded_partition(cfg, _partition_key(context, msg), rt.backbone.task, rt.backbone.tokenizer,
                             flips_labels(cfg.attack, attacking))
    steps = cfg.method.steps(local_steps, len(data), batch_size)

    def batches(rnd: int) -> Iterator[dict[str, torch.Tensor]]:  # per (seed, round, client): the same for every request
        return batch_iterator(data, batch_size, torch.Generator().manual_seed(_round_seed(cfg.seed, rnd, ident)))

    def train(round_cfg: dict[str, Any]) -> Any:
        rnd, ask = int(round_cfg.get(wire.SERVER_ROUND, 0)), int(round_cfg.get(ASK, 0))
        keep_start = kind.name == wire.KIND_DELTA and (attacking or cfg.dp.name == "client")
        start = {k: v.detach().clone() for k, v in rt.method.trainable_state().items()} if keep_start else None
        with torch.random.fork_rng():  # dropout: per (seed, round, client[, request]); never the caller's RNG
            torch.manual_seed(_round_seed(cfg.seed, rnd, ident, ask))
            update = rt.method.local_train(batches(rnd), steps, round_cfg)
        if cfg.dp.name == "client" and start is not None:
            update = clipped_update(update, start, cfg.dp.clip)
        return craft_update(cfg.attack, update, start, (cfg.seed, rnd, ident)) if attacking else update

    def batch(rnd: int, k: int) -> dict[str, torch.Tensor]:
        return next(itertools.islice(batches(rnd), k, None))

    @contextmanager
    def seeded(rnd: int, k: int) -> Iterator[None]:
        with torch.random.fork_rng():
            torch.manual_seed(_round_seed(cfg.seed, rnd, ident, STEP_SEEDS + k))
            yield

    flops = FlopCount() if cfg.device.active else None

    def metrics(update_metrics: Mapping[str, float]) -> dict[str, Any]:
        counted = {wire.FLOPS: float(flops.total), wire.QUANTIZED: int(cfg.quant.mode != "none")} if flops else {}
        return {
            wire.NUM_EXAMPLES: len(data),
            wire.PARTITION_ID: ident,
            **{k: float(v) for k, v in update_metrics.items()},
            wire.PEAK_RSS_MB: memory.peak_rss_mb(),
            wire.CALL_SECONDS: time.perf_counter() - t0,
            **counted,
        }

    with client_state(context, msg) as state, flops if flops is not None else contextlib.nullcontext():
        call = ClientCall(msg=msg, method=rt.method, round_cfg=round_cfg, state=state, codec=get_codec(cfg.codec),
                          steps=steps, initial_state=lambda: rt.initial_state, train=train, batch=batch, seeded=seeded,
                          metrics=metrics)
        reply = kind.serve(call)
    if not attacking:
        return reply
    return craft_reply(cfg.attack, reply, (cfg.seed, int(round_cfg.get(wire.SERVER_ROUND, 0)), ident))


def _env_run_config() -> dict[str, Any]:
    raw = os.environ.get(RUN_CONFIG_ENV)
    return json.loads(raw) if raw else {}


def client_config(context: Context, override: dict[str, Any] | None = None) -> ClientConfig:
    """The ClientConfig for this run: simulator env < Flower run_config < ``override``."""
    return unflatten(ClientConfig, {**_env_run_config(), **dict(context.run_config), **(override or {})})


def guarded(handler, msg: Message, cfg_override: dict[str, Any] | None, context: Context) -> Message:
    try:
        return handler(msg, client_config(context, cfg_override), context)
    except Exception as err:  # noqa: BLE001 - every failure becomes a logged error reply
        who = f"client {_identity(context, msg)}"
        log.warning("%s failed: %s: %s", who, type(err).__name__, err)
        reason = f"{who}: {type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        return Message(Error(code=CLIENT_ERROR, reason=reason), reply_to=msg)
