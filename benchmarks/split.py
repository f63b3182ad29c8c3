"""Suite ``split``: split training's client memory, bytes per step, and exchange overhead.

1. **Client peak RSS** on SmolLM2-135M (causal-LM prompts, batch ``--batch`` x
   ``--seq`` tokens), each case in a fresh process through the real ClientApp: inference
   (the whole model, forward only), full backprop LoRA (one train call of ``--steps``
   steps), and the split client with ``method.cut`` in ``--cuts`` (a ``start`` message,
   then ``grad`` messages carrying a gradient for its activations, ``--steps`` steps).
   Ratios to the full-LoRA client are measured in the same invocation.
2. **Bytes per step** for every activation codec: the serialized payload of one
   activations reply (up) and of one gradient downlink, for minilm on AG News (batch 16
   x 64 tokens) and SmolLM2-135M (batch x seq above), beside one LoRA FedAvg reply.
3. **Per-exchange overhead**: ``--rounds`` rounds of split training of a tiny model
   (10 clients per round, ``--steps-sim`` local steps) through the Simulation Engine on
   each backend; overhead per exchange = (round wall time - server-part time - the
   clients' compute on the critical path) / exchanges.

Run: ``anther-bench split`` or ``python -m benchmarks.split [--cuts 1,3,6] [--batch 8]
[--seq 128] [--steps 2] [--only memory|bytes|overhead]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory import _peak_mb, bench_data, client_context, init_state, run_child

ROOT = Path(__file__).resolve().parents[1]
CODECS = ("fp32", "fp16", "bf16", "int8")


# -- 1. memory ----------------------------------------------------------------------------------
def _cfg(case: str, batch: int, seq: int, steps: int):
    from client.config import ClientConfig, ModelConfig
    from client.methods import METHODS
    from client.partitioners import IidConfig

    method = METHODS["lora"].config() if not case.startswith("split") else METHODS["split"].config(cut=int(case[5:]))
    return ClientConfig(model=ModelConfig(name="smollm2-135m", task="causal_lm", max_length=seq), data=bench_data(),
                        partition=IidConfig(), method=method, num_clients=10, local_steps=steps, batch_size=batch, lr=1e-3)


def child(case: str, batch: int, seq: int, steps: int) -> dict:
    """One client case in this (fresh) process; its peak RSS and times."""
    import torch
    from flwr.app import ConfigRecord, Message, RecordDict

    from client.handlers import handle_train
    from strategies import wire
    from strategies.kinds import activations as sk
    from strategies.kinds.base import wire_record

    import_mb = _peak_mb()
    cfg = _cfg(case, batch, seq, steps)
    ctx = client_context()
    t0 = time.perf_counter()
    state = init_state(cfg, ctx)  # the ClientApp's init query: loads the backbone (or its part)
    load_s = time.perf_counter() - t0

    def train(config: dict, content: RecordDict | None = None) -> Message:
        """One train message to the real ClientApp handler; ``content=None``: the global state."""
        if content is None:
            content = RecordDict({wire.ARRAYS: state, wire.WIRE: wire_record(wire.KIND_DELTA, "fp32")})
        content[wire.CONFIG] = ConfigRecord(config)
        reply = handle_train(Message(content, dst_node_id=1, message_type="train"), cfg, ctx)
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
        return reply

    t0 = time.perf_counter()
    if case == "inference":
        from client.batches import batch_iterator
        from client.data_source import encoded_partition, label_names
        from client.runtime import get_runtime

        rt = get_runtime(cfg, len(label_names(cfg)))
        data = encoded_partition(cfg, (("partition-id", 0),), rt.backbone.task, rt.backbone.tokenizer)
        batches = batch_iterator(data, batch, torch.Generator().manual_seed(0))
        with torch.no_grad():
            for _ in range(steps):
                b = next(batches)
                rt.method.model(**{k: v for k, v in b.items() if k not in ("labels", "logits_to_keep")})
    elif case == "lora":
        train({wire.SERVER_ROUND: 1})
    else:
        reply = train({wire.SERVER_ROUND: 1, sk.PHASE: sk.START, sk.STEP: 0})
        for k in range(1, steps + 1):
            hidden = reply.content[sk.SPLIT][sk.HIDDEN].numpy()
            grad = torch.randn(hidden.shape) * 1e-4  # what the server would send: a gradient of that shape
            config = {wire.SERVER_ROUND: 1, sk.PHASE: sk.GRAD, sk.STEP: k, sk.LOSS: 1.0}
            reply = train(config, sk.tensors_content({sk.GRADIENT: grad}, "fp32", config, wire.CONFIG))
        assert reply.content.config_records[sk.ECHO]["reply"] == sk.FINAL
    return {"case": case, "import_mb": import_mb, "peak_mb": _peak_mb(), "load_s": load_s, "run_s": time.perf_counter() - t0}


def memory(args: argparse.Namespace) -> None:
    import subprocess

    subprocess.run([sys.executable, "-c", "from client.backbones import cached_folder, _build_smollm2;"
                    "cached_folder('smollm2-135m', _build_smollm2)"], check=True, cwd=ROOT)
    cases = ["inference", "lora", *(f"split{c}" for c in args.cuts.split(","))]
    rows = {c: run_child("benchmarks.split", [c, "--batch", str(args.batch), "--seq", str(args.seq), "--steps",
                                               str(args.steps)], c) for c in cases}
    print(f"\n1. Client peak RSS, SmolLM2-135M (30 blocks), batch {args.batch} x {args.seq} tokens, {args.steps} steps, "
          f"one fresh process per case (MiB)")
    print(f"{'case':12} {'imports':>8} {'peak':>7} {'above imports':>14} {'vs LoRA':>8} {'above, vs LoRA':>15} {'load s':>7}")
    lora = rows["lora"]
    for c, r in rows.items():
        above = r["peak_mb"] - r["import_mb"]
        print(f"{c.replace('split', 'split cut='):12} {r['import_mb']:8.0f} {r['peak_mb']:7.0f} {above:14.0f} "
              f"{r['peak_mb'] / lora['peak_mb']:7.2f}x {above / (lora['peak_mb'] - lora['import_mb']):14.2f}x "
              f"{r['load_s']:7.2f}")


# -- 2. bytes ------------------------------------------------------------------------------------
def _payload(content) -> int:
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(content).ByteSize()


def bytes_per_step(args: argparse.Namespace) -> None:
    import torch

    from strategies import wire
    from strategies.kinds import activations as sk

    print("\n2. Bytes of one split step per client (serialized Flower payloads)")
    print(f"{'model':14} {'batch x tokens x hidden':>24} {'codec':>6} {'acts up':>10} {'grad down':>10} {'vs fp32':>8}")
    for model, (b, t, h) in {"minilm": (16, 64, 384), "smollm2-135m": (args.batch, args.seq, 576)}.items():
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(b, t, h, generator=gen)
        raw = {sk.MASK: torch.ones(b, t, dtype=torch.int8), sk.LABELS: torch.zeros(b, dtype=torch.int64)}
        fp32 = None
        for codec in CODECS:
            up = _payload(sk.tensors_content({sk.HIDDEN: hidden}, codec, sk.echo(1, 0, sk.ACTS), raw=raw))
            down = _payload(sk.tensors_content({sk.GRADIENT: hidden * 1e-4}, codec,
                                               {wire.SERVER_ROUND: 1, sk.PHASE: sk.GRAD, sk.STEP: 1, sk.LOSS: 1.0}, wire.CONFIG))
            fp32 = fp32 or up + down
            print(f"{model:14} {f'{b} x {t} x {h}':>24} {codec:>6} {up:10,} {down:10,} {(up + down) / fp32:7.2f}x")


# -- 3. overhead ---------------------------------------------------------------------------------
def overhead(args: argparse.Namespace) -> None:
    import simulation

    print(f"\n3. Per-exchange overhead: tiny-bert (3 blocks, cut 1), 10 clients per round, {args.steps_sim} steps, "
          f"{args.rounds} rounds (the first, with start-up, not counted)")
    print(f"{'backend':10} {'round s':>8} {'exchanges':>9} {'server s':>9} {'client s':>9} {'overhead/exchange s':>20}")
    for backend in ("inprocess", "ray"):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = simulation.run([
                "model=tiny-bert", "model.layers=3", "method=split", "method.cut=1", "strategy=sfl_v2",
                f"rounds={args.rounds}", "num_clients=10", "clients_per_round=10", f"local_steps={args.steps_sim}",
                f"resources.backend={backend}", "eval_every=0", "data.num_examples=600", "data.test_size=100",
                f"hydra.run.dir={tmp}"])
            rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()][2:]
        # the last round also evaluates: leave it out when there are others
        rows = rows[:-1] or rows
        workers = 1 if backend == "inprocess" else 2
        per = []
        for r in rows:
            client = r["client_train_s"] * r["clients"] / workers  # clients' compute, spread over the workers
            per.append((r["wall_s"] - r["server_s"] - client) / r["exchanges"])
        r = rows[-1]
        print(f"{backend:10} {statistics.median(x['wall_s'] for x in rows):8.2f} {r['exchanges']:9d} "
              f"{statistics.median(x['server_s'] for x in rows):9.2f} {statistics.median(x['client_train_s'] for x in rows):9.2f} "
              f"{statistics.median(per):20.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", default="1,3,6")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="client steps in the memory cases")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the overhead runs")
    parser.add_argument("--steps-sim", type=int, default=10, help="local steps in the overhead runs")
    parser.add_argument("--only", choices=("memory", "bytes", "overhead"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq, args.steps)))
        return
    for name, fn in (("memory", memory), ("bytes", bytes_per_step), ("overhead", overhead)):
        if args.only in (None, name):
            fn(args)


if __name__ == "__main__":
    main()
