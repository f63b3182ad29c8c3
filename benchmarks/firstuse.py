"""What a new user waits for: time to a config error, ``experiment=smoke`` end to end
(with where its start-up goes, from the run log's timestamps), its console, and its
accuracy against chance over seeds. Each command runs as a user types it.

    anther-bench firstuse                 # errors x3, smoke x1
    anther-bench firstuse --seeds 0,1,2   # smoke's final accuracy per seed vs chance
    anther-bench firstuse --extra resources.backend=ray   # smoke on Ray (auto runs it in-process)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ERRORS = (["partition.alpha=0"], ["clients_per_round=50", "num_clients=10"], ["strategy._target_=no.such.Class"])
NOISE = re.compile(r"warn|Warning|\bINFO\b|\bDEBUG\b|ClientAppActor|alembic|Traceback|\(raylet\)|pid=", re.I)
MARKS = {  # run-log line -> phase name (what has finished when it appears)
    "importing torch": "start",
    "starting Ray": "imports done",
    "loading the data": "imports (+ Ray) up",
    "loading the backbone": "data partitioned",
    "starting the Simulation Engine": "backbone loaded",
    "getting the initial state": "clients named",
    "round 1/": "round 1 done",
}


def anther_sim(args: list[str], run_dir: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "simulation.cli", *args, f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    return time.perf_counter() - t0, res


def phases(log: Path) -> list[tuple[str, float]]:
    """(phase, seconds since the first line) from the run log's timestamps."""
    out, t0 = [], None
    for line in log.read_text().splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        t0 = t if t0 is None else t0
        for needle, name in MARKS.items():
            if needle in line and name not in dict(out):
                out.append((name, t - t0))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="anther-bench firstuse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs of each config error (the median is reported)")
    p.add_argument("--smoke-runs", type=int, default=1, help="runs of experiment=smoke timed end to end")
    p.add_argument("--seeds", default="", help="comma-separated seeds: smoke's final accuracy per seed vs chance")
    p.add_argument("--extra", default="", help="space-separated overrides added to every smoke run")
    args = p.parse_args(argv)
    extra = args.extra.split()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("time to a config error (s, median of %d; budget 2 s):" % args.repeats)
        for err in ERRORS:
            times, codes = [], set()
            for i in range(args.repeats):
                wall, res = anther_sim(err, root / f"err{i}")
                times.append(wall)
                codes.add(res.returncode)
            print(f"  {' '.join(err):<40} {statistics.median(times):5.2f}  exit {sorted(codes)}")
        for i in range(args.smoke_runs):
            run = root / f"smoke{i}"
            wall, res = anther_sim(["experiment=smoke", *extra], run)
            lines = [ln for ln in res.stderr.splitlines() + res.stdout.splitlines() if ln.strip()]
            noisy = [ln for ln in lines if NOISE.search(ln)]
            summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
            print(f"experiment=smoke end to end: {wall:.1f} s (budget 20 s), exit {res.returncode}, "
                  f"final accuracy {summary.get('final_eval_accuracy')}")
            print(f"  console: {len(lines)} lines, {len(noisy)} not Anther's")
            for ln in noisy[:5]:
                print(f"    {ln[:120]}")
            if (run / "cli.log").exists():
                print("  start-up (s since start): " + ", ".join(f"{n} {t:.1f}" for n, t in phases(run / "cli.log")))
        if args.seeds:
            accs = []
            for seed in args.seeds.split(","):
                run = root / f"seed{seed}"
                _, res = anther_sim(["experiment=smoke", f"seed={seed}", *extra], run)
                s = json.loads((run / "summary.json").read_text())
                metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                first = metrics[0].get("eval_accuracy")
                accs.append(s["final_eval_accuracy"])
                print(f"  seed {seed}: accuracy round 0 {first:.3f} -> final {s['final_eval_accuracy']:.3f}")
            cfg = (root / f"seed{args.seeds.split(',')[0]}" / "config.yaml").read_text()
            classes = int(re.search(r"num_classes: (\d+)", cfg).group(1))
            mean = statistics.mean(accs)
            print(f"experiment=smoke final accuracy over seeds {args.seeds}: mean {mean:.3f} "
                  f"(min {min(accs):.3f}), chance {1 / classes:.3f}, ratio {mean * classes:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
