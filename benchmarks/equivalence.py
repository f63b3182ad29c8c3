"""Same behaviour before and after a redesign: ``metrics.jsonl`` rows and final state.

    python -m benchmarks.equivalence record before.json --root /path/to/old/checkout
    python -m benchmarks.equivalence record after.json
    python -m benchmarks.equivalence compare before.json after.json

``record`` runs ``experiment=smoke`` once per registered strategy (seed strategies with
their method), each in a fresh process whose imports come from ``--root`` (default: this
checkout), and stores per strategy the ``metrics.jsonl`` rows without the measured
fields (``wall_s``, client times, peak RSS: they differ run to run) and a SHA-256 of
every tensor of the final checkpoint (global and strategy state) plus its sampler
state. ``compare`` prints one line per strategy and exits non-zero on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURED = ("wall_s", "client_train_s", "client_call_s", "client_peak_rss_mb")
CASES = {  # strategy -> the method whose update kind it aggregates
    "fedavg": "lora", "fedprox": "lora", "fedadam": "lora", "fedyogi": "lora", "fedadagrad": "lora",
    "fedavgm": "lora", "fedkseed": "zo_seed", "fedkseed_pro": "zo_seed", "fwdllm": "forward_grad",
}
RUN = "import sys, simulation; simulation.run(sys.argv[1:])"


def _digest_safetensors(path: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    out = {}
    for name, arr in sorted(load_file(str(path)).items()):
        h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
        out[name] = h.hexdigest()[:16]
    return out


def fingerprint(run_dir: Path) -> dict:
    """Rows without measured fields, and digests of the last checkpoint."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]
    ckpt = run_dir / "checkpoints" / json.loads((run_dir / "checkpoints" / "latest.json").read_text())["dir"]
    return {
        "rows": rows,
        "global": _digest_safetensors(ckpt / "global.safetensors"),
        "strategy": _digest_safetensors(ckpt / "strategy.safetensors"),
        "sampler": json.loads((ckpt / "state.json").read_text())["sampler_state"],
    }


def record(out: Path, root: Path, strategies: list[str], extra: list[str] = ()) -> None:
    result = {}
    env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="anther-equiv-") as tmp:
        for strategy in strategies:
            run_dir = Path(tmp) / strategy
            args = ["experiment=smoke", f"strategy={strategy}", f"method={CASES[strategy]}", *extra, f"hydra.run.dir={run_dir}"]
            print(f"{strategy}: running {' '.join(args[:3])} in {root}", flush=True)
            proc = subprocess.run([sys.executable, "-c", RUN, *args], cwd=root, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{strategy} failed:\n{proc.stderr[-3000:]}")
            result[strategy] = fingerprint(run_dir)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    bad = 0
    print(f"{'strategy':<14}{'rows':>6}  {'metrics.jsonl':<14}{'global state':<14}{'strategy state':<16}{'sampler':<8}")
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name:<14} only in {'the first' if name in a else 'the second'} file")
            bad += 1
            continue
        x, y = a[name], b[name]
        same = {k: x[k] == y[k] for k in ("rows", "global", "strategy", "sampler")}
        cells = ["identical" if same[k] else "DIFFERENT" for k in ("rows", "global", "strategy", "sampler")]
        print(f"{name:<14}{len(x['rows']):>6}  {cells[0]:<14}{cells[1]:<14}{cells[2]:<16}{cells[3]:<8}")
        if not same["rows"]:
            for ra, rb in zip(x["rows"], y["rows"]):
                diff = {k: (ra.get(k), rb.get(k)) for k in sorted(set(ra) | set(rb)) if ra.get(k) != rb.get(k)}
                if diff:
                    print(f"    round {ra.get('round')}: {diff}")
        bad += not all(same.values())
    print("all identical" if not bad else f"{bad} strategies differ")
    return int(bad > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.equivalence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run experiment=smoke per strategy and fingerprint each run")
    r.add_argument("out", type=Path, help="JSON file to write")
    r.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to run (default: this one)")
    r.add_argument("--strategies", default=",".join(CASES), help="comma-separated strategies (default: all)")
    r.add_argument("--extra", default="", help="space-separated overrides for every run (e.g. an older smoke preset)")
    c = sub.add_parser("compare", help="compare two recorded fingerprints")
    c.add_argument("a", type=Path, help="first recorded JSON")
    c.add_argument("b", type=Path, help="second recorded JSON")
    args = p.parse_args(argv)
    if args.cmd == "record":
        record(args.out.resolve(), args.root.resolve(), args.strategies.split(","), args.extra.split())
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
