"""Peak memory of a LoRA step on SmolLM2-135M: fp32 vs NF4 vs int8 backbone.

Each configuration runs in its own subprocess (peak RSS is per process and never goes
down), loads ``smollm2-135m`` with ``quant.mode`` in {none, nf4, int8}, wraps it with a
PEFT LoRA (r=8 on q_proj, v_proj) and runs one causal-LM forward + backward on a
``batch x seq`` batch of random tokens. Reported per run: load time, step time, peak RSS
after the load, peak RSS after the step (``ru_maxrss``), and the ratios nf4/fp32,
int8/fp32 of the step peak measured in the same invocation.

Run: ``python -m benchmarks.memory [--batch 8] [--seq 128] [--checkpointing] [--answer-tokens K]``.
The first run converts the GGUF once (in a separate process, before measuring).
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


def child(mode: str, batch: int, seq: int, checkpointing: bool, answer_tokens: int = 0,
          cap_heap: bool = False) -> dict:
    """Load, wrap with LoRA, run one step; return the measurements.

    ``answer_tokens=K > 0`` scores only the last K tokens (the project's causal_lm task
    puts the loss on the answer): logits are computed for K+1 positions instead of T.
    ``cap_heap`` fixes glibc's mmap threshold first (:func:`client.quantize.cap_heap_retention`).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from client.backbones import load_backbone
    from client.config import ModelConfig, QuantConfig

    if cap_heap:
        from client.quantize import cap_heap_retention

        cap_heap_retention()
    base_mb = _peak_mb()
    t0 = time.perf_counter()
    bb = load_backbone(ModelConfig(name="smollm2-135m", task="causal_lm", max_length=seq),
                       QuantConfig(mode=mode), num_labels=2)
    load_s, load_peak = time.perf_counter() - t0, _peak_mb()

    model = get_peft_model(bb.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                target_modules=list(bb.lora_targets)))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, bb.model.config.vocab_size, (batch, seq), generator=gen)  # (B, T)
    t0 = time.perf_counter()
    if answer_tokens:
        logits = model(input_ids=ids, logits_to_keep=answer_tokens + 1).logits  # (B, K+1, V)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, -answer_tokens:].flatten())
    else:
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    loss.backward()
    step_s = time.perf_counter() - t0
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), "LoRA got no finite grads"
    return {"mode": mode, "import_mb": base_mb, "load_s": load_s, "load_peak_mb": load_peak,
            "step_s": step_s, "peak_mb": _peak_mb(), "loss": float(loss)}


def _run_child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", mode, "--batch", str(args.batch),
           "--seq", str(args.seq), "--answer-tokens", str(args.answer_tokens)]
    cmd += ["--checkpointing"] if args.checkpointing else []
    cmd += ["--cap-heap"] if args.cap_heap else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {mode} failed:\n{res.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; as parent, run each mode in a subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in every run")
    parser.add_argument("--answer-tokens", type=int, default=0,
                        help="loss on the last K tokens only (0: every token, the default)")
    parser.add_argument("--cap-heap", action="store_true",
                        help="fix glibc's mmap threshold in every run (client.quantize.cap_heap_retention)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.seq, args.checkpointing, args.answer_tokens,
                               args.cap_heap)))
        return

    t0 = time.perf_counter()  # make sure the converted cache exists before measuring
    subprocess.run([sys.executable, "-c", "from client.backbones import cached_folder, _build_smollm2;"
                    "cached_folder('smollm2-135m', _build_smollm2)"], check=True, cwd=ROOT)
    print(f"smollm2-135m cache ready in {time.perf_counter() - t0:.1f} s")
    rows = {mode: _run_child(mode, args) for mode in MODES}
    scored = f"last {args.answer_tokens}" if args.answer_tokens else "all"
    print(f"\nSmolLM2-135M LoRA step, batch {args.batch}x{args.seq}, loss on {scored} tokens, "
          f"checkpointing={'on' if args.checkpointing else 'off'}, heap cap={'on' if args.cap_heap else 'off'}; "
          "RSS in MiB")
    print(f"{'quant':6} {'import':>7} {'load peak':>10} {'step peak':>10} {'load s':>7} {'step s':>7} {'loss':>7}")
    for mode, r in rows.items():
        print(f"{mode:6} {r['import_mb']:7.0f} {r['load_peak_mb']:10.0f} {r['peak_mb']:10.0f} "
              f"{r['load_s']:7.2f} {r['step_s']:7.2f} {r['loss']:7.3f}")
    fp32 = rows["none"]
    for mode in ("nf4", "int8"):
        r = rows[mode]
        print(f"{mode}/fp32: step peak {r['peak_mb'] / fp32['peak_mb']:.2f}x, "
              f"load peak {r['load_peak_mb'] / fp32['load_peak_mb']:.2f}x, "
              f"above import {(r['peak_mb'] - r['import_mb']) / (fp32['peak_mb'] - fp32['import_mb']):.2f}x")


if __name__ == "__main__":
    main()
