"""``anther-bench deploy``: the same run in the simulator and on the deployment runtime.

One config (tiny model, N clients, all sampled every round) runs three ways in one go:

- ``sim``: ``anther-sim`` (Flower's Simulation Engine, in-process backend);
- ``deploy``: ``anther-deploy local`` on this machine (TLS, node authentication, each
  node's ClientApp running warm in its SuperNode process, pulls every 0.25 s);
- ``deploy-flower``: the same federation with Flower's own settings (a ClientApp process
  importing everything per message, 3 s SuperNode pulls, 1 s SuperExec polls).

It prints the median per-round wall time (rounds 2.., so the first load is not counted),
each deployment's ratio to the simulator, and the bytes each counted per round (the
deployment's must equal the simulator's: the same messages are serialized the same way).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from simulation.deploy import cli
from simulation.deploy.layout import layout


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _per_round(rows: list[dict]) -> float:
    return statistics.median(r["wall_s"] for r in rows if r["round"] >= 2)


def _deploy(root: Path, nodes: int, overrides: list[str], flower_defaults: bool) -> list[dict]:
    env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"} if flower_defaults else {}
    return _rows(cli.local(layout(root), nodes, overrides, "bench", say=lambda s: None, env=env,
                           warm=not flower_defaults, poll_s=3.0 if flower_defaults else 0.25))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="anther-bench deploy", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-bert")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--extra", default="", help="space-separated overrides added to every case")
    args = p.parse_args(argv)
    overrides = [f"model={args.model}", "data.num_examples=240", "data.test_size=60", "local_steps=2", "batch_size=8",
                 f"rounds={args.rounds}", f"num_clients={args.nodes}", f"clients_per_round={args.nodes}",
                 *args.extra.split()]
    import simulation

    work = Path(tempfile.mkdtemp(prefix="anther-bench-deploy-"))
    results = {"sim": _rows(simulation.run([*overrides, f"hydra.run.dir={work / 'sim'}"]))}
    results["deploy"] = _deploy(work / "deploy", args.nodes, overrides, flower_defaults=False)
    results["deploy-flower"] = _deploy(work / "flower", args.nodes, overrides, flower_defaults=True)
    sim = _per_round(results["sim"])
    print(f"\n{args.model}, {args.nodes} clients, {args.rounds} rounds ({' '.join(overrides)})")
    print(f"{'case':<15}{'s/round':>9}{'x sim':>8}{'bytes up/round':>16}{'bytes down/round':>18}{'work s':>8}")
    for name, rows in results.items():
        last = rows[-1]
        print(f"{name:<15}{_per_round(rows):>9.2f}{_per_round(rows) / sim:>8.1f}{last['bytes_up']:>16,}"
              f"{last['bytes_down']:>18,}{last.get('client_call_s') or 0:>8.2f}")
    same = all([r["bytes_up"], r["bytes_down"]] == [s["bytes_up"], s["bytes_down"]]
               for rows in (results["deploy"], results["deploy-flower"]) for r, s in zip(rows, results["sim"]))
    print(f"bytes per round equal to the simulator's in both deployments: {same}")
    print("'work s': the slowest client's time inside its ClientApp call (training, encoding)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
