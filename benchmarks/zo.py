"""Suite ``zo``: bytes and memory of backprop-free clients next to LoRA FedAvg.

Memory: each case runs in its own subprocess — a real ClientApp "init" query (loads the
backbone) and one real train call through :func:`client.handlers.handle_train`, with the
downlink a real strategy builds (FedKSeed for zo_seed, FwdLLM for forward_grad, FedAvg
for LoRA) — and reports the per-call peak RSS the client records in ``metrics.jsonl``.
``inference`` is the same model (LoRA-wrapped) and the same batches, forward only.
Ratios are to that inference peak, measured in the same invocation.

Bytes: the serialized uplink of one client-round (the whole reply: its frame or tensors,
metrics, records) for FedKSeed with ``--tau`` steps and forward_grad with
``--perturbations`` perturbations at each of ``--bits`` scalar widths, FwdLLM's dense
gradient for those perturbations (one fp32 tensor set, what FwdLLM uploads) and LoRA
FedAvg's delta. Seed replies carry their diagnostic metrics only every
``strategy.diag_every`` rounds; both sizes are shown.

Run: ``anther-bench zo [--model smollm2-135m] [--batch 8] [--seq 128] [--steps 2]
[--tau 200] [--perturbations 10] [--bits 32,8,4] [--only memory|bytes]``.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.memory import (
    _peak_mb,
    bench_data,
    client_context,
    init_state,
    run_child,
)

CASES = ("inference", "lora", "zo_seed", "forward_grad", "forward_grad_fd")
STRATEGY = {"lora": "fedavg", "zo_seed": "fedkseed", "forward_grad": "fwdllm", "forward_grad_fd": "fwdllm"}


def _config(model: str, method: str, batch: int, seq: int, steps: int, perturbations: int):
    from client.config import ClientConfig, ModelConfig
    from client.methods.forward_grad import ForwardGradConfig
    from client.methods.lora import LoraConfig
    from client.methods.zo_seed import ZoSeedConfig
    from client.partitioners import IidConfig

    if method in ("inference", "lora"):
        method_cfg = LoraConfig()
    elif method == "zo_seed":
        method_cfg = ZoSeedConfig(zo_eps=1e-3)
    else:  # the strategy sends the perturbations
        method_cfg = ForwardGradConfig(zo_eps=1e-3, fg_mode="fd" if method == "forward_grad_fd" else "jvp")
    return ClientConfig(
        model=ModelConfig(name=model, max_length=seq),
        data=bench_data(),
        partition=IidConfig(),
        method=method_cfg,
        num_clients=10,
        local_steps=steps,
        batch_size=batch,
        lr=1e-3,
    )


def _downlink(method: str, state, steps: int, perturbations: int, bits: int = 32):
    """The round-1 train message a real strategy sends this client."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    from strategies import wire
    from strategies.kinds.base import wire_record
    from strategies.registry import STRATEGIES, build_strategy

    name = STRATEGY[method]
    config = STRATEGIES[name].config
    kw = {"perturbations": perturbations, "lr": 1e-4, "scalar_bits": bits} if name != "fedavg" else {}
    strategy = build_strategy(config(name=name, **kw), rounds=1, local_steps=steps)

    class Grid:
        identity_of = {1: 0}

        def get_node_ids(self):
            return [1]

    arrays = ArrayRecord({k: Array(a.numpy()) for k, a in state.items()})
    (msg,) = strategy.configure_train(1, arrays, ConfigRecord(), Grid())
    if method == "lora":
        msg.content[wire.WIRE] = wire_record(wire.KIND_DELTA, "fp32")
    return msg


def child(case: str, model: str, batch: int, seq: int, steps: int, perturbations: int, bits: int = 32) -> dict:
    """One real ClientApp call (or forward-only passes for ``inference``)."""
    import torch

    from client import memory
    from client.handlers import handle_train
    from client.batches import batch_iterator, forward_loss
    from client.data_source import encoded_partition, label_names
    from client.runtime import get_runtime
    from server.loop import payload_bytes
    from strategies import wire

    import_mb = _peak_mb()
    cfg = _config(model, case, batch, seq, steps, perturbations)
    ctx = client_context()
    state = init_state(cfg, ctx)
    out = {"case": case, "import_mb": import_mb, "trainable": int(sum(a.numpy().size for a in state.values()))}
    if case == "inference":
        rt = get_runtime(cfg, len(label_names(cfg)))
        data = encoded_partition(cfg, ((wire.PARTITION_ID, 0),), rt.backbone.task, rt.backbone.tokenizer)
        batches = batch_iterator(data, batch, torch.Generator().manual_seed(0))
        memory.reset_peak()
        with torch.no_grad():
            for _ in range(steps):
                forward_loss(rt.method.model, next(batches))
        return {**out, "call_peak_mb": memory.peak_rss_mb(), "bytes_up": 0}
    msg = handle_train(_downlink(case, state, steps, perturbations, bits), cfg, ctx)  # round 1: with diagnostics
    if msg.has_error():
        raise RuntimeError(msg.error.reason)
    m = msg.content[wire.METRICS]
    full = payload_bytes(msg)
    if case != "lora":
        del msg.content.metric_records[wire.METRICS]  # what the rounds without diagnostics send
    return {**out, "call_peak_mb": float(m[wire.PEAK_RSS_MB]), "bytes_up": payload_bytes(msg), "bytes_up_diag": full,
            "train_s": float(m[wire.TRAIN_SECONDS])}


def _run(args: argparse.Namespace, case: str, model: str, batch: int, steps: int, perturbations: int, bits: int = 32) -> dict:
    child_args = [case, "--model", model, "--batch", str(batch), "--seq", str(args.seq), "--steps", str(steps),
                  "--perturbations", str(perturbations), "--bits", str(bits)]
    return run_child("benchmarks.zo", child_args, case, {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="anther-bench zo", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="model for the memory cases")
    p.add_argument("--bytes-model", default="minilm", help="model for the bytes cases")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="local steps (memory cases)")
    p.add_argument("--tau", type=int, default=200, help="FedKSeed local steps for the bytes case")
    p.add_argument("--perturbations", type=int, default=10, help="forward_grad perturbations per round")
    p.add_argument("--bits", default="32,8,4", help="scalar widths for the bytes cases (comma-separated)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=("memory", "bytes"), help="run one half of the suite")
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.batch, args.seq, args.steps, args.perturbations, int(args.bits.split(",")[0]))))
        return

    if args.only != "bytes":
        _memory(args)
    if args.only != "memory":
        _bytes(args)


def _memory(args: argparse.Namespace) -> None:
    mem = {c: _run(args, c, args.model, args.batch, args.steps, 2 if "forward" in c else 1) for c in CASES}
    base = mem["inference"]["call_peak_mb"]
    print(f"\nMemory: {args.model}, batch {args.batch}, max_length {args.seq}, {args.steps} local steps; "
          "client per-call peak RSS (MiB)")
    print(f"{'case':14} {'peak':>7} {'/inference':>11} {'above imports':>14}")
    for c, r in mem.items():
        print(f"{c:14} {r['call_peak_mb']:7.0f} {r['call_peak_mb'] / base:10.2f}x {r['call_peak_mb'] - r['import_mb']:14.0f}")


def _bytes(args: argparse.Namespace) -> None:
    n = args.perturbations
    byt = {"lora (FedAvg delta)": _run(args, "lora", args.bytes_model, 1, 1, 1)}
    for bits in (int(b) for b in args.bits.split(",")):
        byt[f"zo_seed (FedKSeed, tau={args.tau}) {bits}b"] = _run(args, "zo_seed", args.bytes_model, 1, args.tau, 1, bits)
        byt[f"forward_grad ({n} perturbations) {bits}b"] = _run(args, "forward_grad", args.bytes_model, 1, 1, n, bits)
    p_train = byt["lora (FedAvg delta)"]["trainable"]
    dense = 4 * p_train + 1024  # FwdLLM: one dense fp32 gradient (+ the same record overhead, generous)
    lora = byt["lora (FedAvg delta)"]["bytes_up"]
    print(f"\nUplink per client-round, {args.bytes_model} ({p_train:,} trainable parameters); bytes")
    print(f"{'case':40} {'bytes':>9} {'LoRA/this':>10} {'dense/this':>11} {'with diagnostics':>17}")
    for name, r in byt.items():
        vs_dense = f"{dense / r['bytes_up']:10.0f}x" if name.startswith("forward_grad") else f"{'-':>11}"
        print(f"{name:40} {r['bytes_up']:>9,} {lora / r['bytes_up']:9.0f}x {vs_dense} {r['bytes_up_diag']:>17,}")
    print(f"{'FwdLLM dense gradient (fp32)':40} {dense:>9,}")


if __name__ == "__main__":
    main()
