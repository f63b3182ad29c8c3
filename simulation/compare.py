"""Compare runs: one figure of curves and a table of figures of merit.

    python -m simulation.compare outputs/fedavg outputs/fedprox -o curves.png --target 0.86
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from simulation.report import plot_runs, read_metrics


def to_target(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """First round reaching ``target`` accuracy, with bytes uploaded and wall time so far."""
    up = wall = 0.0
    for r in rows:
        up += r["bytes_up"]
        wall += r["wall_s"]
        if r.get("eval_accuracy") is not None and r["eval_accuracy"] >= target:
            return {"round": r["round"], "bytes_up": up, "wall_s": wall}
    return None


def label_of(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        return f"{s.get('strategy')} ({run_dir.name})"
    return run_dir.name


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m simulation.compare", description=__doc__)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("compare.png"))
    p.add_argument("--target", type=float, default=None, help="accuracy to report rounds/bytes/time to")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table instead")
    args = p.parse_args(argv)
    runs = {label_of(d): read_metrics(d) for d in args.runs}
    plot_runs(runs, args.output)
    cols = ["run", "rounds", "final acc", "best acc", "MiB up", "MiB down", "wall s", "peak RSS MB"]
    if args.target is not None:
        cols.append(f"to {args.target:.0%}: round / MiB up / s")
    table = Table(title=f"runs (curves in {args.output})")
    for col in cols:
        table.add_column(col, justify="right")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, rows in runs.items():
        accs = [r["eval_accuracy"] for r in rows if r.get("eval_accuracy") is not None]
        rss = [r["client_peak_rss_mb"] for r in rows if r.get("client_peak_rss_mb")]
        cells = [
            label,
            str(max(r["round"] for r in rows)),
            f"{accs[-1]:.4f}" if accs else "-",
            f"{max(accs):.4f}" if accs else "-",
            f"{sum(r['bytes_up'] for r in rows) / 2**20:.2f}",
            f"{sum(r['bytes_down'] for r in rows) / 2**20:.2f}",
            f"{sum(r['wall_s'] for r in rows):.0f}",
            f"{max(rss):.0f}" if rss else "-",
        ]
        if args.target is not None:
            hit = to_target(rows, args.target)
            cells.append(f"{hit['round']} / {hit['bytes_up'] / 2**20:.2f} / {hit['wall_s']:.0f}" if hit else "not reached")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    if args.markdown:
        print("\n".join(lines))
    else:
        Console().print(table)


if __name__ == "__main__":
    main()
