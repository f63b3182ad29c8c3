"""Suite ``profile``: measure the machine it runs on and write a device profile YAML.

Run it on your own Pi, phone (Termux) or laptop, then simulate a population of such
devices with ``anther-sim device=file device.path=PROFILE.yaml``.

What it measures, with the configured model's real ClientApp path (``handle_train``,
LoRA by default) on ``--clients`` calls of ``--local-steps`` steps:

- effective training GFLOP/s = the FLOPs one call ran (:mod:`client.flops`, counted
  once) / the median pure training seconds of the calls timed without counting;
- the same with an nf4 backbone (bitsandbytes) for ``flops_quant``, when it loads;
- effective inference GFLOP/s (one forward of a batch, no gradients), printed;
- the training call's peak RSS, printed; ``memory_mb`` is the memory available now.

Links, availability, dropout and energy cannot be measured here: they are copied from
``--like`` (a built-in profile) and marked as such in the file, for you to edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch
import yaml


def _configs(model: str, quant: str, local_steps: int, batch_size: int):
    from client.config import ClientConfig, ModelConfig, QuantConfig

    cfg = ClientConfig(model=ModelConfig(name=model), quant=QuantConfig(mode=quant), local_steps=local_steps,
                       batch_size=batch_size, num_clients=4)
    counted = dataclasses.replace(cfg, device=_laptop_population())  # any active population: the client counts FLOPs
    return cfg, counted


def _laptop_population():
    from simulation.cli import CONFIG_DIR
    from simulation.devices import resolve
    from strategies.population import DeviceConfig

    return DeviceConfig(**resolve({"name": "laptop"}, CONFIG_DIR))


def train_rate(model: str, quant: str, local_steps: int, batch_size: int, calls: int) -> tuple[float, float, float]:
    """(effective training GFLOP/s, FLOPs per call, peak RSS MiB) on this machine."""
    from benchmarks.overhead import _message
    from flwr.app import Context, RecordDict

    from client.handlers import handle_train
    from client.data_source import label_names
    from client.runtime import get_runtime
    from strategies import wire

    cfg, counted = _configs(model, quant, local_steps, batch_size)
    state = get_runtime(cfg, len(label_names(cfg))).initial_state

    def call(c, i):
        ctx = Context(run_id=1, node_id=1, node_config={wire.PARTITION_ID: i % 4}, state=RecordDict(), run_config={})
        return handle_train(_message(c, state, i + 1), c, ctx).content[wire.METRICS]

    first = call(counted, 0)  # counts the FLOPs (and warms the caches)
    flops = float(first[wire.FLOPS])
    seconds = [float(call(cfg, i)[wire.TRAIN_SECONDS]) for i in range(1, calls + 1)]
    return flops / statistics.median(seconds) / 1e9, flops, float(first[wire.PEAK_RSS_MB])


def inference_rate(model: str, batch_size: int, repeats: int = 5) -> float:
    """Effective GFLOP/s of one forward pass of a batch, no gradients."""
    from client.backbones import load_backbone
    from client.config import ModelConfig, QuantConfig
    from client.flops import FlopCount

    spec = ModelConfig(name=model)
    backbone = load_backbone(spec, QuantConfig(), 4)
    ids = torch.randint(0, backbone.model.config.vocab_size, (batch_size, spec.max_length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        with FlopCount() as fc:
            backbone.model(**batch)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            backbone.model(**batch)
            times.append(time.perf_counter() - t)
    return fc.total / statistics.median(times) / 1e9


def run(name: str, out: Path, model: str, like: str, local_steps: int, batch_size: int, calls: int) -> Path:
    from simulation.cli import CONFIG_DIR
    from simulation.devices import resolve

    torch.set_num_threads(psutil.cpu_count(logical=True) or 1)
    fp32, flops, rss = train_rate(model, "none", local_steps, batch_size, calls)
    try:
        quant, _, _ = train_rate(model, "nf4", local_steps, batch_size, calls)
        quant_note = "measured: nf4 backbone (bitsandbytes)"
    except Exception as err:  # noqa: BLE001 - no bitsandbytes on this device: say so, keep the fp32 figure
        quant, quant_note = fp32 / 1.9, f"not measured (nf4 failed: {type(err).__name__}); fp32 / 1.9 as measured on a 2-core EPYC"
    infer = inference_rate(model, batch_size)
    available = psutil.virtual_memory().available / 2**20
    base = resolve({"name": like}, CONFIG_DIR)["profiles"][like]
    numbers = {"memory_mb": round(available), "flops_fp32": round(fp32, 2), "flops_quant": round(quant, 2),
               **{k: base[k] for k in ("uplink_mbps", "downlink_mbps", "availability", "dropout", "joules_per_gflop",
                                       "joules_per_mb")}}
    header = (f"# Written by `anther-bench profile` on {platform.node()} ({platform.machine()}, {psutil.cpu_count()} CPUs, "
              f"torch {torch.__version__}), model {model}, batch {batch_size}, {local_steps} steps per call.\n"
              f"# memory_mb: available now; flops_fp32: measured ({flops / 1e9:.1f} GFLOP per call, peak RSS {rss:.0f} MiB); "
              f"flops_quant: {quant_note}.\n"
              f"# Inference (forward, no gradients): {infer:.1f} GFLOP/s.\n"
              f"# Not measured, copied from the built-in '{like}' profile: links, availability, dropout, energy. Edit them.\n")
    out.write_text(header + yaml.safe_dump({"name": name, "profiles": {name: numbers}}, sort_keys=False))
    print(f"profile {name!r}: training {fp32:.1f} GFLOP/s fp32, {quant:.1f} quantized ({quant_note}); inference "
          f"{infer:.1f} GFLOP/s; training peak RSS {rss:.0f} MiB; {available:.0f} MiB available")
    print(f"wrote {out}; simulate with: anther-sim device=file device.path={out}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anther-bench profile", description=__doc__.split("\n")[0])
    p.add_argument("--name", default=platform.node() or "this-machine", help="the profile's name (default: host name)")
    p.add_argument("--out", type=Path, default=Path("device-profile.yaml"), help="where to write it")
    p.add_argument("--model", default="minilm", help="backbone measured (a model= choice; default minilm)")
    p.add_argument("--like", default="laptop", help="built-in profile whose unmeasured numbers are copied (default laptop)")
    p.add_argument("--local-steps", type=int, default=4, help="steps per timed call (default 4)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--calls", type=int, default=3, help="timed calls; the median is used (default 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    run(a.name, a.out, a.model, a.like, a.local_steps, a.batch_size, a.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
