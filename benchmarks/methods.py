"""Suite ``methods``: client peak RSS of each parameter-efficient method on SmolLM2-135M
(nf4 by default, batch 8 x 128 tokens), beside LoRA's, measured in the same invocation.

Each method runs in its own subprocess: a real ClientApp "init" query (which loads the
backbone and builds the method) and one train call of ``--steps`` local steps, as in a
simulation (:func:`benchmarks.memory.child`). Reported per method: trainable parameters,
reply bytes (fp32 codec), the per-call peak RSS the client reports, the peak above the
import baseline, and both as ratios to LoRA's. BitFit needs bias terms, which SmolLM2
has none of: it is listed as not applicable (the config error users get).

Run: ``anther-bench methods [--quant nf4] [--methods lora,prompt,prefix,adapter,ia3,bitfit]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.memory import ROOT, child, run_child

DEFAULT_METHODS = "lora,prompt,prefix,adapter,ia3,bitfit"


def _case(method: str, args: argparse.Namespace) -> dict:
    child_args = [method, "--quant", args.quant, "--batch", str(args.batch), "--seq", str(args.seq),
                  "--steps", str(args.steps)]
    return run_child("benchmarks.methods", child_args, method, {"MALLOC_MMAP_THRESHOLD_": "65536"})


def run(args: argparse.Namespace) -> None:
    from client.methods import METHODS
    from client.model_facts import KNOWN
    from strategies.runconfig import ConfigError

    subprocess.run([sys.executable, "-c", "from client.backbones import cached_folder, _build_smollm2;"
                    "cached_folder('smollm2-135m', _build_smollm2)"], check=True, cwd=ROOT)
    rows: dict[str, dict | str] = {}
    for name in args.methods.split(","):
        try:
            METHODS[name].config().check_backbone(KNOWN["smollm2-135m"], argparse.Namespace(max_length=args.seq))
        except ConfigError as err:
            rows[name] = str(err)
            continue
        rows[name] = _case(name, args)
    lora = rows.get("lora")
    print(f"\nSmolLM2-135M, quant={args.quant}, one ClientApp train call ({args.steps} steps, batch {args.batch} x "
          f"{args.seq} tokens, causal-LM prompts); RSS in MiB")
    print(f"{'method':8} {'trainable':>10} {'reply KB':>9} {'imports':>8} {'call peak':>10} {'above':>7} "
          f"{'peak/LoRA':>10} {'above/LoRA':>11}")
    for name, r in rows.items():
        if isinstance(r, str):
            print(f"{name:8} not applicable: {r}")
            continue
        above = r["call_peak_mb"] - r["import_mb"]
        ratios = ""
        if isinstance(lora, dict):
            lora_above = lora["call_peak_mb"] - lora["import_mb"]
            ratios = f"{r['call_peak_mb'] / lora['call_peak_mb']:9.2f}x {above / lora_above:10.2f}x"
        print(f"{name:8} {r['trainable']:10,} {r['reply_bytes'] / 1024:9.1f} {r['import_mb']:8.0f} "
              f"{r['call_peak_mb']:10.0f} {above:7.0f} {ratios}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="nf4", choices=("none", "nf4", "int8"))
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.quant, args.batch, args.seq, False, args.steps, method=args.child)))
        return
    run(args)


if __name__ == "__main__":
    main()
