"""``anther-bench trust``: what the trust features cost, measured in one run.

- codecs: the serialized bytes of one reply (with its metrics) and one downlink of the
  configured model's LoRA state for every codec, as ratios to fp32 (uplinks of the
  compressing codecs carry an update of typical size against the decoded downlink);
- secagg: the SecAgg+ protocol's own computation for one round (all clients' keys,
  shares, encryption and masks, and the server's unmasking, in one process), with no
  dropout and with one client lost after sharing, and its uplink per client vs fp32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def codecs(model: str) -> None:
    import torch
    from flwr.app import MetricRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    from client.config import ClientConfig, ModelConfig
    from client.runtime import get_runtime
    from strategies import wire
    from strategies.codecs import LOSSLESS_CASTS, get_codec
    from strategies.kinds.base import wire_record
    from strategies.kinds.delta import state_content

    state = {k: v.clone() for k, v in get_runtime(ClientConfig(model=ModelConfig(name=model)), 4).initial_state.items()}
    g = torch.Generator().manual_seed(0)
    trained = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    metrics = {wire.NUM_EXAMPLES: 1200, wire.TRAIN_LOSS: 0.5, wire.TRAIN_SECONDS: 1.0, wire.CALL_SECONDS: 1.0,
               wire.PEAK_RSS_MB: 500.0, wire.PARTITION_ID: 3}

    def size(content: RecordDict, with_metrics: bool = True) -> int:
        if with_metrics:
            content[wire.METRICS] = MetricRecord(metrics)
        return recorddict_to_proto(content).ByteSize()

    n = sum(v.numel() for v in state.values())
    print(f"codecs: {model} LoRA state, {n:,} parameters in {len(state)} tensors; update ~ N(0, 1e-3)")
    print(f"{'codec':8s} {'bytes up':>10s} {'vs fp32':>8s} {'bytes down':>11s} {'vs fp32':>8s}")
    base_up = base_down = 0
    for name in (*LOSSLESS_CASTS, "int8", "nf4", "topk"):
        codec = get_codec(name)
        if codec.relative:
            record, _ = codec.encode_update(trained, state)
            up = size(RecordDict({wire.ARRAYS: record, wire.WIRE: wire_record(wire.KIND_DELTA, name, 5)}))
        else:
            up = size(state_content(trained, codec, 5))
        down = size(RecordDict({wire.ARRAYS: codec.encode(state)}), with_metrics=False)
        base_up, base_down = base_up or up, base_down or down
        print(f"{name:8s} {up:>10,d} {base_up / up:>7.2f}x {down:>11,d} {base_down / down:>7.2f}x")


def secagg(clients: int, values: int) -> None:
    from strategies.secagg import WORD, SecAggClient, neighbours, unmasked_sum

    rng = np.random.default_rng(0)
    xs = {i: rng.integers(0, 2**40, values, dtype=np.uint64).astype(WORD) for i in range(1, clients + 1)}
    threshold = max(2, -(-clients // 2))
    print(f"secagg: {clients} clients, {values:,} values, threshold {threshold}, complete graph")
    for drop in ((), (2,)):
        t0 = time.perf_counter()
        graph = neighbours(list(xs), clients - 1, seed=1)
        cs = {i: SecAggClient(i, graph[i], threshold) for i in xs}
        public = {i: c.keys() for i, c in cs.items()}
        routed: dict[int, dict[int, bytes]] = {i: {} for i in xs}
        for i, c in cs.items():
            for j, blob in c.shares({j: public[j] for j in graph[i]}).items():
                routed[j][i] = blob
        alive = [i for i in xs if i not in drop]
        masked = {i: cs[i].masked(xs[i], routed[i]) for i in alive}
        shares = {i: cs[i].unmask(alive, list(drop)) for i in alive}
        total = unmasked_sum(masked, public, graph, shares, {i: sorted(routed[i]) for i in xs}, threshold)
        dt = time.perf_counter() - t0
        assert np.array_equal(total, sum(xs[i] for i in alive))
        print(f"  dropped {list(drop) or 'none'}: {dt:.2f} s per round ({dt / clients * 1000:.0f} ms per client), "
              "sum exact")
    print(f"  uplink per client vs fp32: {8 * (values + 1) / (4 * values):.2f}x (64-bit masked words)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="anther-bench trust")
    p.add_argument("--model", default="minilm")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--only", choices=("codecs", "secagg"))
    args = p.parse_args(argv)
    if args.only != "secagg":
        codecs(args.model)
    if args.only != "codecs":
        from client.config import ClientConfig, ModelConfig
        from client.runtime import get_runtime

        values = sum(v.numel() for v in get_runtime(ClientConfig(model=ModelConfig(name=args.model)), 4).initial_state.values())
        secagg(args.clients, values)
