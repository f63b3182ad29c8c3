"""Suite ``scale``: what a population of N clients costs, beside Flower's own floor.

For each N in ``--sizes``, in one run, each case in its own process (so peak memory is
its own):

- ``flower``: Flower's plain ``run_simulation`` with N SuperNodes, a trivial ClientApp
  (it echoes) and a ServerApp that samples ``--per-round`` nodes per round for
  ``--rounds`` rounds: the floor any simulation on Flower's engine pays;
- ``anther``: ``anther-sim`` on a tiny model (tiny-bert, one local step of batch 4, no
  evaluation) with ``num_clients=N`` (a Dirichlet partition, ``partition=dirichlet_scale``,
  of 4N generated examples), the same rounds and clients per round; its clients run on
  a pool of SuperNodes sized to the round (``ServerConfig.pool``), in-process by default
  (``--backend ray``: Ray workers, each of which generates and partitions the data).

It prints fixed seconds (process start to the first round's first message),
seconds per round (median), and the peak RSS of the whole process tree (sampled every
0.2 s), and the ratios anther / flower. Issue 13's target: 100,000 clients in <= 8 GB
(all processes), start-up and per-round time reported beside Flower's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

_FLOWER = r'''
import json, random, sys, time
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

n, rounds, per_round, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
client, server = ClientApp(), ServerApp()

@client.train()
def echo(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"c": ConfigRecord({"ok": 1})}), reply_to=msg)

@server.main()
def main(grid: Grid, context: Context) -> None:
    marks = []
    rng = random.Random(0)
    while len(grid.get_node_ids()) < n:
        time.sleep(0.5)
    nodes = list(grid.get_node_ids())
    for _ in range(rounds):
        marks.append(time.time())
        msgs = [Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=d, message_type="train")
                for d in rng.sample(nodes, per_round)]
        replies = list(grid.send_and_receive(msgs))
        assert len(replies) == per_round
    marks.append(time.time())
    json.dump({"marks": marks}, open(out, "w"))

run_simulation(server, client, num_supernodes=n, backend_config={"client_resources": {"num_cpus": 1}})
'''


def _watch(proc: subprocess.Popen, peak: list[float], stop: threading.Event) -> None:
    """Peak RSS (MiB) of ``proc`` and all its descendants, sampled every 0.2 s."""
    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            break
        peak[0] = max(peak[0], total / 2**20)
        stop.wait(0.2)


def _run(cmd: list[str], timeout: float) -> tuple[int, float, float]:
    """(return code, wall seconds, peak RSS MiB of the process tree)."""
    peak, stop = [0.0], threading.Event()
    t = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=_watch, args=(proc, peak, stop), daemon=True)
    watcher.start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        err = f"timed out after {timeout:.0f} s"
    stop.set()
    watcher.join()
    if proc.returncode:
        print(f"  failed ({proc.returncode}): {(err or '').strip().splitlines()[-1:] or ''}", file=sys.stderr)
    return proc.returncode, time.time() - t, peak[0]


def flower_case(n: int, rounds: int, per_round: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "flower_floor.py", Path(tmp) / "marks.json"
        script.write_text(_FLOWER)
        rc, wall, peak = _run([sys.executable, str(script), str(n), str(rounds), str(per_round), str(out)], timeout)
        if rc or not out.exists():
            return {"ok": False, "wall_s": wall, "peak_mb": peak}
        m = json.loads(out.read_text())
        marks = m["marks"]
        return {"ok": True, "fixed_s": wall - (marks[-1] - marks[0]),
                "round_s": statistics.median(b - a for a, b in zip(marks, marks[1:])), "wall_s": wall, "peak_mb": peak}


def anther_case(n: int, rounds: int, per_round: int, timeout: float, backend: str = "inprocess") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "simulation.cli", "model=tiny-bert", f"num_clients={n}", f"clients_per_round={per_round}",
               f"rounds={rounds}", "eval_every=0", "local_steps=1", "batch_size=4", "partition=dirichlet_scale",
               f"data.num_examples={max(4 * n, 400)}", "data.test_size=100", f"resources.backend={backend}",
               f"hydra.run.dir={run_dir}"]
        rc, wall, peak = _run(cmd, timeout)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if (run_dir / "metrics.jsonl").exists() else []
        trained = [r for r in rows if r["round"] > 0]
        if rc or len(trained) < rounds:
            return {"ok": False, "wall_s": wall, "peak_mb": peak}
        round_s = statistics.median(r["wall_s"] for r in trained)
        return {"ok": True, "fixed_s": wall - sum(r["wall_s"] for r in trained), "round_s": round_s, "wall_s": wall,
                "peak_mb": peak}


def run(sizes: list[int], rounds: int, per_round: int, timeout: float, flower_max: int = 100_000,
        backend: str = "inprocess") -> dict:
    results = {}
    print(f"suite scale: {rounds} rounds of {per_round} clients; fixed s, median s per round, peak RSS MiB of all processes")
    print(f"{'N':>9} {'case':7} {'fixed s':>10} {'s/round':>8} {'peak MiB':>9}")
    for n in sizes:
        for name, case in (("flower", flower_case), ("anther", anther_case)):
            if name == "flower" and n > flower_max:
                results[(n, name)] = {"ok": False, "wall_s": 0.0, "peak_mb": 0.0}
                print(f"{n:>9,} {name:7} {'not run (--flower-max ' + format(flower_max, ',') + ')':>30}")
                continue
            r = case(n, rounds, min(per_round, n), timeout, **({"backend": backend} if name == "anther" else {}))
            results[(n, name)] = r
            if r["ok"]:
                print(f"{n:>9,} {name:7} {r['fixed_s']:>10.1f} {r['round_s']:>8.2f} {r['peak_mb']:>9.0f}")
            else:
                print(f"{n:>9,} {name:7} {'failed or timed out after ' + format(r['wall_s'], '.0f') + ' s':>30} "
                  f"{r['peak_mb']:>9.0f}")
        f, a = results[(n, "flower")], results[(n, "anther")]
        if f["ok"] and a["ok"]:
            print(f"{n:>9,} {'ratio':7} {a['fixed_s'] / f['fixed_s']:>9.2f}x {a['round_s'] / f['round_s']:>7.2f}x "
                  f"{a['peak_mb'] / f['peak_mb']:>8.2f}x   (anther / flower)")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anther-bench scale", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="populations, comma-separated (default 10000,100000,1000000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--per-round", type=int, default=100, help="clients per round (default 100)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a case is stopped (default 1800)")
    p.add_argument("--flower-max", type=int, default=100_000,
                   help="largest N for Flower's own floor (one SuperNode per client; default 100,000)")
    p.add_argument("--backend", default="inprocess", choices=("inprocess", "ray"),
                   help="Anther's client backend (default inprocess: one process; ray: each worker loads the data)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run([int(x) for x in a.sizes.split(",")], a.rounds, a.per_round, a.timeout, a.flower_max, a.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
