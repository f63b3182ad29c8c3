"""``anther-bench SUITE``: benchmarks that print ratios measured in one run.

Suites: overhead (ClientApp call overhead with vs without the backbone cache),
memory (client peak RSS, fp32 vs nf4/int8 backbones), kernels (seeded perturbation
throughput vs torch normal_ + add_), zo (uplink bytes and client memory of zo_seed and
forward_grad next to LoRA FedAvg).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anther-bench", description=__doc__)
    sub = parser.add_subparsers(dest="suite", required=True)
    o = sub.add_parser("overhead", help="per-call overhead vs local training, cache on/off")
    o.add_argument("--model", default="minilm")
    o.add_argument("--local-steps", type=int, default=10)
    o.add_argument("--calls", type=int, default=6)
    o.add_argument("--threads", type=int, default=1, help="torch threads, as one simulated client")
    mem = sub.add_parser("memory", help="client peak RSS of smollm2-135m: fp32 vs nf4 vs int8")
    mem.add_argument("--checkpointing", action="store_true")
    k = sub.add_parser("kernels", help="seeded perturbation throughput vs torch normal_+add_")
    k.add_argument("--elements", type=int, default=135_000_000)
    z = sub.add_parser("zo", help="bytes and memory of zo_seed / forward_grad vs LoRA FedAvg")
    z.add_argument("--model", default="smollm2-135m")
    z.add_argument("--tau", type=int, default=200)
    z.add_argument("--perturbations", type=int, default=10)
    z.add_argument("--bits", default="32,8,4", help="scalar widths for the bytes cases")
    z.add_argument("--only", choices=("memory", "bytes"))
    args = parser.parse_args(argv)
    if args.suite == "overhead":
        from benchmarks.overhead import run

        run(args.model, args.local_steps, args.calls, args.threads)
    elif args.suite == "kernels":
        from benchmarks.kernels import main as kernels_main

        kernels_main(["--elements", str(args.elements)])
    elif args.suite == "zo":
        from benchmarks.zo import main as zo_main

        only = ["--only", args.only] if args.only else []
        zo_main(["--model", args.model, "--tau", str(args.tau), "--perturbations", str(args.perturbations),
                 "--bits", args.bits, *only])
    elif args.suite == "memory":
        from benchmarks.memory import main as memory_main

        return int(memory_main(["--checkpointing"] if args.checkpointing else []) or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
