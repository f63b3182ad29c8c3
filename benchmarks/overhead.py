"""Suite ``overhead``: what a ClientApp call costs beyond its local training.

For ``calls`` train messages to the real ClientApp handler, the reply's own timings
give ``call-s`` (whole handler: state load, data, training, encoding) and ``train-s``
(pure local training). Overhead = ``(call-s - train-s) / train-s``, measured in the
same run with the per-process backbone cache (the default) and without it (the
backbone reloaded and re-wrapped for every message, as FlowerTune does).
"""

from __future__ import annotations

import os
import statistics
from contextlib import contextmanager
from dataclasses import dataclass

from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.handlers import handle_train
from client.config import ClientConfig, DataConfig, ModelConfig
from client.data_source import label_names
from client.partitioners import IidConfig
from client.runtime import clear_cache, get_runtime
from strategies import wire
from strategies.codecs import get_codec
from strategies.kinds.delta import state_content


@dataclass
class OverheadResult:
    mode: str
    call_s: float
    train_s: float

    @property
    def overhead(self) -> float:
        return (self.call_s - self.train_s) / self.train_s


@contextmanager
def _cache(enabled: bool):
    old = os.environ.get("ANTHER_NO_BACKBONE_CACHE")
    os.environ["ANTHER_NO_BACKBONE_CACHE"] = "0" if enabled else "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ANTHER_NO_BACKBONE_CACHE", None)
        else:
            os.environ["ANTHER_NO_BACKBONE_CACHE"] = old


def _message(cfg: ClientConfig, state, rnd: int) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    content = state_content(state, get_codec("fp32"))
    content[wire.CONFIG] = ConfigRecord({wire.SERVER_ROUND: rnd})
    return Message(content, dst_node_id=1, message_type="train")


def measure(cfg: ClientConfig, calls: int, cached: bool) -> OverheadResult:
    """Median call and train seconds over ``calls`` handler invocations."""
    names = label_names(cfg)
    state = get_runtime(cfg, len(names)).initial_state
    calls_s, train_s = [], []
    with _cache(cached):
        clear_cache()
        for i in range(calls):
            ctx = Context(run_id=1, node_id=1, node_config={wire.PARTITION_ID: i % cfg.num_clients}, state=RecordDict(), run_config={})
            reply = handle_train(_message(cfg, state, i + 1), cfg, ctx)
            m = reply.content[wire.METRICS]
            calls_s.append(float(m[wire.CALL_SECONDS]))
            train_s.append(float(m[wire.TRAIN_SECONDS]))
    skip = 1 if cached and calls > 1 else 0  # the first cached call pays the one load
    return OverheadResult(
        "cached" if cached else "reload", statistics.median(calls_s[skip:]), statistics.median(train_s[skip:])
    )


def run(model: str = "minilm", local_steps: int = 10, calls: int = 6, threads: int = 1) -> list[OverheadResult]:
    import torch

    torch.set_num_threads(threads)  # as a simulated client (resources.client_cpus=1)
    cfg = ClientConfig(
        model=ModelConfig(name=model),
        data=DataConfig(),
        partition=IidConfig(),
        num_clients=10,
        local_steps=local_steps,
        batch_size=16,
        lr=1e-3,
    )
    results = [measure(cfg, calls, cached=True), measure(cfg, max(2, calls // 2), cached=False)]
    print(f"suite overhead: model={model} local_steps={local_steps} batch=16 threads={threads} (median of calls)")
    print(f"{'mode':8} {'call s':>8} {'train s':>8} {'overhead/train':>15}")
    for r in results:
        print(f"{r.mode:8} {r.call_s:8.3f} {r.train_s:8.3f} {r.overhead:15.1%}")
    cached, reload = results
    print(f"ratio: call time without cache / with cache = {reload.call_s / cached.call_s:.2f}x")
    print(f"target: cached overhead <= 10% of local training -> {'PASS' if cached.overhead <= 0.10 else 'FAIL'}")
    return results
