"""``anther-bench SUITE``: benchmarks that print ratios measured in one run.

Suites: overhead (ClientApp call overhead with vs without the backbone cache),
memory (client peak RSS, fp32 vs nf4/int8 backbones), kernels (seeded perturbation
throughput vs torch normal_ + add_), zo (uplink bytes and client memory of zo_seed and
forward_grad next to LoRA FedAvg), split (split training's client memory, bytes and
exchange overhead), methods (client peak RSS of each PEFT method beside LoRA's), trust (wire cost of the
update codecs, SecAgg+ computation per round), profile (this machine's effective FLOP/s and memory, written
as a device profile for device=file), scale (N clients' fixed and per-round cost and peak memory beside
Flower's own run_simulation with a trivial app), estimate (the pre-flight memory estimate beside
the measured client peak for every method, fp32 and nf4), firstuse (time to a config error, experiment=smoke
end to end with its start-up phases and console, and its accuracy vs chance), deploy (per-round time and
bytes of the same run in the simulator, on anther-deploy's TLS federation and with Flower's default settings).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anther-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    o = sub.add_parser("overhead", help="per-call overhead vs local training, cache on/off")
    o.add_argument("--model", default="minilm", help="backbone (a model= choice; default minilm)")
    o.add_argument("--local-steps", type=int, default=10, help="local steps per ClientApp call (default 10)")
    o.add_argument("--calls", type=int, default=6, help="ClientApp calls timed per case (default 6)")
    o.add_argument("--threads", type=int, default=1, help="torch threads, as one simulated client")
    mem = sub.add_parser("memory", help="client peak RSS of smollm2-135m: fp32 vs nf4 vs int8")
    mem.add_argument("--checkpointing", action="store_true", help="also with gradient checkpointing")
    k = sub.add_parser("kernels", help="seeded perturbation vs the memory-bound pass and torch normal_+add_")
    k.add_argument("--elements", type=int, default=135_000_000, help="elements perturbed (default: SmolLM2-135M's)")
    k.add_argument("--threads", type=int, default=2, help="threads for torch and numba (default 2)")
    k.add_argument("--seeds", type=int, default=16, help="seeds of the accumulate_ case (default 16)")
    k.add_argument("--repeats", type=int, default=5, help="repetitions; median and spread are reported (default 5)")
    z = sub.add_parser("zo", help="bytes and memory of zo_seed / forward_grad vs LoRA FedAvg")
    z.add_argument("--model", default="smollm2-135m", help="backbone (default smollm2-135m)")
    z.add_argument("--tau", type=int, default=200, help="local steps whose (seed, scalar) pairs are counted (default 200)")
    z.add_argument("--perturbations", type=int, default=10, help="perturbations per step for forward_grad (default 10)")
    z.add_argument("--bits", default="32,8,4", help="scalar widths for the bytes cases")
    z.add_argument("--only", choices=("memory", "bytes"), help="run only the memory or only the bytes cases")
    s = sub.add_parser("split", help="split training: client peak RSS by cut, bytes per step per codec, exchange overhead")
    s.add_argument("--cuts", default="1,3,6", help="method.cut values of the memory cases (default 1,3,6)")
    s.add_argument("--only", choices=("memory", "bytes", "overhead"), help="run only one part")
    pm = sub.add_parser("methods", help="client peak RSS of each PEFT method on smollm2-135m (nf4) beside LoRA's")
    pm.add_argument("--quant", default="nf4", choices=("none", "nf4", "int8"), help="backbone quantization (default nf4)")
    pm.add_argument("--methods", default="lora,prompt,prefix,adapter,ia3,bitfit", help="comma-separated methods")
    t = sub.add_parser("trust", help="wire cost of the update codecs; SecAgg+ computation per round")
    t.add_argument("--model", default="minilm", help="backbone whose LoRA state is encoded (default minilm)")
    t.add_argument("--clients", type=int, default=10, help="clients of the SecAgg+ round (default 10)")
    t.add_argument("--only", choices=("codecs", "secagg"), help="run only one part")
    pr = sub.add_parser("profile", help="measure this machine and write a device profile YAML (device=file)")
    pr.add_argument("--name", default="", help="the profile's name (default: host name)")
    pr.add_argument("--out", default="device-profile.yaml", help="where to write it (default device-profile.yaml)")
    pr.add_argument("--model", default="minilm", help="backbone measured (default minilm)")
    pr.add_argument("--like", default="laptop", help="built-in profile whose unmeasured numbers are copied (default laptop)")
    sc = sub.add_parser("scale", help="N clients: fixed and per-round seconds and peak memory, beside Flower's floor")
    sc.add_argument("--sizes", default="10000,100000,1000000", help="populations (default 10000,100000,1000000)")
    sc.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    sc.add_argument("--per-round", type=int, default=100, help="clients per round (default 100)")
    sc.add_argument("--timeout", type=float, default=1800, help="seconds before a case is stopped (default 1800)")
    sc.add_argument("--flower-max", type=int, default=100_000, help="largest N for Flower's floor (default 100,000)")
    sc.add_argument("--backend", default="inprocess", choices=("inprocess", "ray"), help="Anther's client backend")
    e = sub.add_parser("estimate", help="pre-flight memory estimate vs the measured client peak, every method")
    e.add_argument("--models", default="tiny-bert,tiny-llama,minilm,smollm2-135m", help="comma-separated backbones")
    e.add_argument("--quants", default="none,nf4", help="comma-separated quant modes (default none,nf4)")
    e.add_argument("--methods", default="lora,prompt,prefix,adapter,ia3,bitfit,zo_seed,forward_grad,split",
                   help="comma-separated methods")
    f = sub.add_parser("firstuse", help="time to a config error; experiment=smoke end to end, console, accuracy")
    f.add_argument("--repeats", type=int, default=3, help="runs of each config error (the median is reported)")
    f.add_argument("--smoke-runs", type=int, default=1, help="runs of experiment=smoke timed end to end")
    f.add_argument("--seeds", default="", help="comma-separated seeds: smoke's final accuracy per seed vs chance")
    f.add_argument("--extra", default="", help="space-separated overrides added to every smoke run")
    d = sub.add_parser("deploy", help="per-round time and bytes: simulator vs anther-deploy vs Flower's defaults")
    d.add_argument("--model", default="tiny-bert", help="backbone (default tiny-bert)")
    d.add_argument("--nodes", type=int, default=3, help="SuperNodes = clients, all sampled every round (default 3)")
    d.add_argument("--rounds", type=int, default=5, help="rounds; the median of rounds 2.. is reported (default 5)")
    d.add_argument("--extra", default="", help="space-separated overrides added to every case")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.suite == "profile":
        from benchmarks.profile import main as profile_main

        return profile_main([*(["--name", args.name] if args.name else []), "--out", args.out, "--model", args.model,
                             "--like", args.like])
    if args.suite == "scale":
        from benchmarks.scale import main as scale_main

        return scale_main(["--sizes", args.sizes, "--rounds", str(args.rounds), "--per-round", str(args.per_round),
                           "--timeout", str(args.timeout), "--flower-max", str(args.flower_max),
                           "--backend", args.backend])
    if args.suite == "deploy":
        from benchmarks.deploy import main as deploy_main

        return deploy_main(["--model", args.model, "--nodes", str(args.nodes), "--rounds", str(args.rounds),
                            "--extra", args.extra])
    if args.suite == "estimate":
        from benchmarks.estimate import main as estimate_main

        estimate_main(["--models", args.models, "--quants", args.quants, "--methods", args.methods])
        return 0
    if args.suite == "overhead":
        from benchmarks.overhead import run

        run(args.model, args.local_steps, args.calls, args.threads)
    elif args.suite == "kernels":
        from benchmarks.kernels import main as kernels_main

        kernels_main(["--elements", str(args.elements), "--threads", str(args.threads), "--seeds", str(args.seeds),
                      "--repeats", str(args.repeats)])
    elif args.suite == "zo":
        from benchmarks.zo import main as zo_main

        only = ["--only", args.only] if args.only else []
        zo_main(["--model", args.model, "--tau", str(args.tau), "--perturbations", str(args.perturbations),
                 "--bits", args.bits, *only])
    elif args.suite == "memory":
        from benchmarks.memory import main as memory_main

        return int(memory_main(["--checkpointing"] if args.checkpointing else []) or 0)
    elif args.suite == "split":
        from benchmarks.split import main as split_main

        split_main(["--cuts", args.cuts, *(["--only", args.only] if args.only else [])])
    elif args.suite == "trust":
        from benchmarks.trust import main as trust_main

        trust_main(["--model", args.model, "--clients", str(args.clients), *(["--only", args.only] if args.only else [])])
    elif args.suite == "methods":
        from benchmarks.methods import main as methods_main

        methods_main(["--quant", args.quant, "--methods", args.methods])
    elif args.suite == "firstuse":
        from benchmarks.firstuse import main as firstuse_main

        return firstuse_main(["--repeats", str(args.repeats), "--smoke-runs", str(args.smoke_runs),
                              "--seeds", args.seeds, "--extra", args.extra])
    return 0


if __name__ == "__main__":
    sys.exit(main())
