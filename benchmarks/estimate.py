"""Suite ``estimate``: the pre-flight memory estimate (:mod:`client.estimate`) against
the measured peak of a real client, for every method on each model, fp32 and nf4.

Each case runs in a fresh process through the real ClientApp: the "init" query (loads
the backbone, builds the method), then one train call of ``--steps`` local steps (split
training: the start message and one gradient message per step); measured = the highest
per-call peak RSS the client reports (``client_peak_rss_mb`` in ``metrics.jsonl``).
Batches are the estimate's worst case: every row fills ``model.max_length`` (AG News
rows with the description repeated, so that no batch is trimmed shorter). The estimate
is computed in this process from the same config, with the runtime baseline measured
once here. Printed: estimate, measured, their ratio, and whether it is within 20%.

Run: ``anther-bench estimate [--models tiny-bert,tiny-llama,minilm,smollm2-135m]
[--quants none,nf4] [--methods lora,prompt,...] [--batch 8] [--seq 128] [--steps 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks.memory import ROOT, bench_data, client_context, init_state, run_child

MODELS = "tiny-bert,tiny-llama,minilm,smollm2-135m"
METHODS = "lora,prompt,prefix,adapter,ia3,bitfit,zo_seed,forward_grad,split"
SEEDS_STRATEGY = {"zo_seed": "fedkseed", "forward_grad": "fwdllm"}
TOLERANCE = 0.20


def long_rows():
    """AG News rows long enough to fill any ``max_length`` up to 512 tokens."""
    from dataclasses import replace

    data = bench_data()
    return replace(data, text_columns=tuple(data.text_columns) + ("description",) * 6) if data.source == "file" else data


def case_config(model: str, quant: str, method: str, batch: int, seq: int, steps: int):
    from client.config import ClientConfig, ModelConfig, QuantConfig
    from client.methods import METHODS as REGISTRY
    from client.partitioners import IidConfig

    kw = {"cut": 1} if method == "split" else {}
    task = "causal_lm" if model in ("smollm2-135m", "tiny-llama") else "auto"
    return ClientConfig(model=ModelConfig(name=model, task=task, max_length=seq), quant=QuantConfig(mode=quant),
                        data=long_rows(), partition=IidConfig(), method=REGISTRY[method].config(**kw), num_clients=10,
                        local_steps=steps, batch_size=batch, lr=1e-3)


def _seeds_downlink(method: str, state, steps: int):
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from strategies.registry import STRATEGIES, build_strategy

    name = SEEDS_STRATEGY[method]
    strategy = build_strategy(STRATEGIES[name].config(name=name), rounds=1, local_steps=steps)

    class Grid:
        identity_of = {1: 0}

        def get_node_ids(self):
            return [1]

    (msg,) = strategy.configure_train(1, ArrayRecord({k: Array(a.numpy()) for k, a in state.items()}),
                                      ConfigRecord(), Grid())
    return msg


def child(model: str, quant: str, method: str, batch: int, seq: int, steps: int) -> dict:
    """One real client of this case in this (fresh) process: its highest per-call peak."""
    import torch
    from flwr.app import ConfigRecord, Message, RecordDict

    from client.handlers import handle_train
    from strategies import wire
    from strategies.kinds import activations as sk
    from strategies.kinds.base import wire_record

    cfg = case_config(model, quant, method, batch, seq, steps)
    ctx = client_context()
    state = init_state(cfg, ctx)
    peaks: list[float] = []

    def call(content: RecordDict, config: dict | None = None) -> Message:
        if config is not None:
            content[wire.CONFIG] = ConfigRecord(config)
        msg = content if isinstance(content, Message) else Message(content, dst_node_id=1, message_type="train")
        reply = handle_train(msg, cfg, ctx)
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
        if wire.METRICS in reply.content.metric_records:
            peaks.append(float(reply.content[wire.METRICS][wire.PEAK_RSS_MB]))
        return reply

    t0 = time.perf_counter()
    if method in SEEDS_STRATEGY:
        call(_seeds_downlink(method, state, steps))
    elif method == "split":
        start = RecordDict({wire.ARRAYS: state, wire.WIRE: wire_record(wire.KIND_DELTA, "fp32")})
        reply = call(start, {wire.SERVER_ROUND: 1, sk.PHASE: sk.START, sk.STEP: 0})
        for k in range(1, steps + 1):
            grad = torch.randn(reply.content[sk.SPLIT][sk.HIDDEN].numpy().shape) * 1e-4
            config = {wire.SERVER_ROUND: 1, sk.PHASE: sk.GRAD, sk.STEP: k, sk.LOSS: 1.0}
            reply = call(sk.tensors_content({sk.GRADIENT: grad}, "fp32", config, wire.CONFIG))
    else:
        call(RecordDict({wire.ARRAYS: state, wire.WIRE: wire_record(wire.KIND_DELTA, "fp32")}),
             {wire.SERVER_ROUND: 1})
    return {"peak_mb": max(peaks), "train_s": time.perf_counter() - t0}


def run(args: argparse.Namespace) -> None:
    import subprocess
    import sys

    from client.estimate import estimate
    from strategies.runconfig import ConfigError

    if "smollm2-135m" in args.models:
        subprocess.run([sys.executable, "-c", "from client.backbones import cached_folder, _build_smollm2;"
                        "cached_folder('smollm2-135m', _build_smollm2)"], check=True, cwd=ROOT)
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # as in the measured children (and the runtime baseline's)
    print(f"batch {args.batch} x {args.seq} tokens, {args.steps} steps; RSS in MiB; runtime = the client's baseline "
          "(a tiny model's train call on the same data, measured here)")
    print(f"{'model':13} {'quant':5} {'method':12} {'runtime':>8} {'estimate':>9} {'measured':>9} {'est/meas':>9}  "
          "within 20%")
    worst = 0.0
    for model in args.models.split(","):
        for quant in args.quants.split(","):
            for method in args.methods.split(","):
                cfg = case_config(model, quant, method, args.batch, args.seq, args.steps)
                try:
                    est = estimate(cfg, 4)
                except ConfigError as err:
                    print(f"{model:13} {quant:5} {method:12} not applicable: {err}")
                    continue
                child_args = [model, quant, method, "--batch", str(args.batch), "--seq", str(args.seq),
                              "--steps", str(args.steps)]
                got = run_child("benchmarks.estimate", child_args, f"{model}/{quant}/{method}",
                                {"MALLOC_MMAP_THRESHOLD_": "65536"})
                ratio = est.peak_mb / got["peak_mb"]
                worst = max(worst, abs(ratio - 1))
                print(f"{model:13} {quant:5} {method:12} {est.runtime_mb:8.0f} {est.peak_mb:9.0f} {got['peak_mb']:9.0f} {ratio:9.2f}  "
                      f"{'yes' if abs(ratio - 1) <= TOLERANCE else 'NO'}", flush=True)
    print(f"largest deviation: {worst:.0%} (target: within {TOLERANCE:.0%})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="anther-bench estimate", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--quants", default="none,nf4")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "QUANT", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.batch, args.seq, args.steps)))
        return
    run(args)


if __name__ == "__main__":
    main()
