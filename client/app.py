"""The Anther ClientApp (Flower component ``client.app:app``).

query  "hello": reply with this node's identity (partition id) — used for seeded sampling.
query  "init":  reply with the initial trainable state (deterministic from the seed).
train:          load the global trainable state, run the method's local steps on the local
                data, reply with the encoded update and metrics (examples, loss, times,
                peak RSS). A failure becomes a Flower error reply naming the client and
                the reason; the server counts it and aggregates the rest.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import memory
from client.batches import batch_iterator
from client.config import ClientConfig
from client.data_source import encoded_partition, label_names, local_dataset
from client.runtime import get_runtime
from client.seed_sync import seed_reply, sync_to_base
from strategies import wire
from strategies.codecs import get_codec
from strategies.seeds import ASK
from strategies.runconfig import unflatten

log = logging.getLogger("anther.client")
CLIENT_ERROR = 1  # Flower Error code for a failed local step
RUN_CONFIG_ENV = "ANTHER_RUN_CONFIG"  # set by the simulator for custom ClientApps


def _identity(context: Context) -> int:
    return int(context.node_config.get("partition-id", context.node_id))


def _partition_key(context: Context) -> tuple:
    keep = ("partition-id", "data-path")
    return tuple(sorted((k, v) for k, v in context.node_config.items() if k in keep))


def _wire_record(codec: str) -> ConfigRecord:
    return ConfigRecord({"kind": wire.KIND_DELTA, "codec": codec})


def handle_query(msg: Message, cfg: ClientConfig, context: Context) -> Message:
    op = msg.content[wire.CONFIG]["op"] if wire.CONFIG in msg.content.config_records else "hello"
    metrics = MetricRecord({wire.PARTITION_ID: _identity(context)})
    content = RecordDict({wire.METRICS: metrics})
    if op == "init":
        rt = get_runtime(cfg, len(label_names(cfg)))
        content[wire.ARRAYS] = get_codec("fp32").encode(rt.initial_state)
        content[wire.WIRE] = _wire_record("fp32")
    return Message(content, reply_to=msg)


def handle_train(msg: Message, cfg: ClientConfig, context: Context) -> Message:
    t0 = time.perf_counter()
    memory.reset_peak()
    rt = get_runtime(cfg, len(label_names(cfg)))
    round_cfg = dict(msg.content[wire.CONFIG]) if wire.CONFIG in msg.content.config_records else {}
    seeds = getattr(rt.method, "kind", wire.KIND_DELTA) == wire.KIND_SEEDS
    if seeds:
        round_cfg = sync_to_base(rt.method, lambda: rt.initial_state, msg, round_cfg)
    else:
        codec_in = get_codec(str(msg.content.config_records.get(wire.WIRE, {}).get("codec", "fp32")))
        rt.method.load_trainable_state(codec_in.decode(msg.content[wire.ARRAYS]))
    rnd = int(round_cfg.get(wire.SERVER_ROUND, 0))
    ask = int(round_cfg.get(ASK, 0))
    ident = _identity(context)
    data = encoded_partition(cfg, _partition_key(context), rt.backbone.task, rt.backbone.tokenizer)
    gen = torch.Generator().manual_seed(hash((cfg.seed, rnd, ident)) & 0x7FFFFFFF)  # batches: same for every ask
    steps = cfg.local_steps
    if cfg.method.local_epochs > 0:
        steps = cfg.method.local_epochs * -(-len(data) // cfg.batch_size)
    with torch.random.fork_rng():  # dropout and seed draws: per (seed, round, client[, ask])
        torch.manual_seed(gen.initial_seed() if not ask else hash((cfg.seed, rnd, ident, ask)) & 0x7FFFFFFF)
        update = rt.method.local_train(batch_iterator(data, cfg.batch_size, gen), steps, round_cfg)
    metrics = {
        wire.NUM_EXAMPLES: len(data),
        wire.PARTITION_ID: ident,
        **{k: float(v) for k, v in update.metrics.items()},
        wire.PEAK_RSS_MB: memory.peak_rss_mb(),
        wire.CALL_SECONDS: time.perf_counter() - t0,
    }
    if seeds:
        return seed_reply(msg, update, round_cfg, metrics)
    codec_out = get_codec(cfg.codec)
    content = RecordDict(
        {
            wire.ARRAYS: codec_out.encode(update.state),
            wire.METRICS: MetricRecord(metrics),
            wire.WIRE: _wire_record(codec_out.name),
        }
    )
    return Message(content, reply_to=msg)


def _env_run_config() -> dict[str, Any]:
    raw = os.environ.get(RUN_CONFIG_ENV)
    return json.loads(raw) if raw else {}


def client_config(context: Context, override: dict[str, Any] | None = None) -> ClientConfig:
    """The ClientConfig for this run: simulator env < Flower run_config < ``override``."""
    return unflatten(ClientConfig, {**_env_run_config(), **dict(context.run_config), **(override or {})})


def _guarded(handler, msg: Message, cfg_override: dict[str, Any] | None, context: Context) -> Message:
    try:
        return handler(msg, client_config(context, cfg_override), context)
    except Exception as err:  # noqa: BLE001 - every failure becomes a logged error reply
        who = f"client {_identity(context)}"
        log.warning("%s failed: %s: %s", who, type(err).__name__, err)
        reason = f"{who}: {type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        return Message(Error(code=CLIENT_ERROR, reason=reason), reply_to=msg)


def build_client_app(run_config: dict[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run_config is ``run_config`` merged over Flower's."""
    app = ClientApp()

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return _guarded(handle_query, msg, run_config, context)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return _guarded(handle_train, msg, run_config, context)

    return app


app = build_client_app()

__all__ = ["app", "build_client_app", "client_config", "handle_train", "handle_query"]
