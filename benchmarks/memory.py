"""Suite ``memory``: client peak RSS on SmolLM2-135M, fp32 vs NF4 vs int8 backbone.

Each mode runs in its own subprocess: a real ClientApp "init" query (which loads the
backbone) and one train call, the way a simulated or deployed client does. Reported:
the process's RSS after imports, the per-call peak the client reports (what
``metrics.jsonl`` records), and the ratios nf4/fp32 and int8/fp32 measured in the same
invocation, also above the import baseline that every Python+torch client pays.

Run: ``anther-bench memory`` or ``python -m benchmarks.memory [--batch 8] [--seq 128]
[--checkpointing] [--steps 2] [--malloc-mmap-threshold 65536]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = ("none", "nf4", "int8")
ROOT = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_data():
    """AG News from ../shared/data when present (the agreed split), else the built-in data."""
    from client.config import DataConfig

    agnews = ROOT.parent / "shared" / "data" / "ag_news_test.csv"
    if not agnews.exists():
        return DataConfig()
    return DataConfig(source="file", path=str(agnews), text_columns=("title", "description"),
                      label_names=("World", "Sports", "Business", "Sci/Tech"), test_size=1600)


def client_context():
    """A Flower Context for partition 0, as a simulated node gets it."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from strategies import wire

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    return Context(run_id=1, node_id=1, node_config={wire.PARTITION_ID: 0}, state=RecordDict(), run_config={})


def init_state(cfg, ctx):
    """The ClientApp's "init" query (loads the backbone): the initial trainable ArrayRecord."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from client.handlers import handle_query
    from strategies import wire

    init = Message(RecordDict({wire.CONFIG: ConfigRecord({"op": "init"})}), dst_node_id=1, message_type="query")
    return handle_query(init, cfg, ctx).content[wire.ARRAYS]


def run_child(module: str, child_args: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """``python -m module --child ...`` in a fresh process; its last JSON line."""
    cmd = [sys.executable, "-m", module, "--child", *child_args]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {}))
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=full_env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {what} failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])


def child(mode: str, batch: int, seq: int, checkpointing: bool, steps: int = 2, method: str = "lora") -> dict:
    """One real ClientApp train call on smollm2-135m with ``quant.mode=mode`` and ``method``.

    The call goes through :func:`client.handlers.handle_train` exactly as in a simulation
    (backbone load, LoRA wrap, causal-LM prompts with the loss on the answer tokens,
    ``steps`` local steps, encoding); its reply carries ``peak-rss-mb``, the per-call
    peak that ``metrics.jsonl`` records as ``client_peak_rss_mb``.
    """
    from flwr.app import ConfigRecord, Message, RecordDict

    from client.handlers import handle_train
    from client.config import ClientConfig, ModelConfig, QuantConfig
    from client.methods import METHODS
    from client.partitioners import IidConfig
    from strategies import wire
    from strategies.codecs import get_codec
    from strategies.kinds.base import wire_record

    import_mb = _peak_mb()
    cfg = ClientConfig(
        model=ModelConfig(name="smollm2-135m", task="causal_lm", max_length=seq),
        quant=QuantConfig(mode=mode),
        data=bench_data(),
        partition=IidConfig(),
        method=METHODS[method].config(gradient_checkpointing=checkpointing),
        num_clients=10,
        local_steps=steps,
        batch_size=batch,
        lr=1e-3,
    )
    ctx = client_context()
    t0 = time.perf_counter()
    state = init_state(cfg, ctx)  # loads the backbone (first call)
    load_s = time.perf_counter() - t0
    msg = Message(
        RecordDict({wire.ARRAYS: state, wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1}),
                    wire.WIRE: wire_record(wire.KIND_DELTA, "fp32")}),
        dst_node_id=1, message_type="train",
    )
    reply = handle_train(msg, cfg, ctx)
    if reply.has_error():
        raise RuntimeError(reply.error.reason)
    m = reply.content[wire.METRICS]
    state = get_codec("fp32").decode(reply.content[wire.ARRAYS])
    return {"mode": mode, "method": method, "trainable": sum(t.numel() for t in state.values()),
            "reply_bytes": sum(a.numpy().nbytes for a in reply.content[wire.ARRAYS].values()), "import_mb": import_mb, "load_s": load_s, "train_s": float(m[wire.TRAIN_SECONDS]),
            "call_peak_mb": float(m[wire.PEAK_RSS_MB]), "process_peak_mb": _peak_mb(),
            "loss": float(m[wire.TRAIN_LOSS])}


def _run_child(mode: str, args: argparse.Namespace) -> dict:
    child_args = [mode, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
    child_args += ["--checkpointing"] if args.checkpointing else []
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)} if args.malloc_mmap_threshold else {}
    return run_child("benchmarks.memory", child_args, mode, env)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; as parent, run each mode in a subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in every run")
    parser.add_argument("--steps", type=int, default=2, help="local steps in the train call")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=65536,
                        help="MALLOC_MMAP_THRESHOLD_ for every run (0: glibc default)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq, args.checkpointing, args.steps)))
        return

    t0 = time.perf_counter()  # make sure the converted cache exists before measuring
    subprocess.run([sys.executable, "-c", "from client.backbones import cached_folder, _build_smollm2;"
                    "cached_folder('smollm2-135m', _build_smollm2)"], check=True, cwd=ROOT)
    print(f"smollm2-135m cache ready in {time.perf_counter() - t0:.1f} s")
    rows = {mode: _run_child(mode, args) for mode in MODES}
    print(f"\nSmolLM2-135M, one ClientApp train call ({args.steps} LoRA steps, batch {args.batch}, max_length "
          f"{args.seq}, causal-LM prompts, loss on the answer), checkpointing={'on' if args.checkpointing else 'off'}, "
          f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold or 'default'}; RSS in MiB")
    print(f"{'quant':6} {'imports':>8} {'call peak':>10} {'above imports':>14} {'load s':>7} {'train s':>8} {'loss':>7}")
    for mode, r in rows.items():
        print(f"{mode:6} {r['import_mb']:8.0f} {r['call_peak_mb']:10.0f} {r['call_peak_mb'] - r['import_mb']:14.0f} "
              f"{r['load_s']:7.2f} {r['train_s']:8.2f} {r['loss']:7.3f}")
    fp32 = rows["none"]
    for mode in ("nf4", "int8"):
        r = rows[mode]
        above = (r["call_peak_mb"] - r["import_mb"]) / (fp32["call_peak_mb"] - fp32["import_mb"])
        print(f"{mode}/fp32: client peak {r['call_peak_mb'] / fp32['call_peak_mb']:.2f}x, above imports {above:.2f}x")

if __name__ == "__main__":
    main()
