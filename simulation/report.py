"""``report.png``: accuracy and loss against rounds and against uploaded bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: list[dict[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
    """(x, y) of ``key`` where it was measured; x: round, cumulative uploaded MiB
    ("bytes"), simulated hours since the start ("sim_time"), or cumulative simulated kJ
    ("energy")."""
    xs, ys = [], []
    cum = energy = 0.0
    for r in rows:
        cum += r["bytes_up"]
        energy += r.get("sim_energy_j") or 0.0
        if r.get(key) is not None:
            xs.append({"round": r["round"], "bytes": cum / 2**20, "sim_time": (r.get("sim_elapsed_s") or 0.0) / 3600,
                       "energy": energy / 1000}[x])
            ys.append(r[key])
    return xs, ys


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: Path, title: str = "") -> Path:
    """One figure, 2x2 panels, one line per run (label -> metrics rows); two more
    (accuracy vs simulated time and energy) when a run simulated devices."""
    simulated = any("sim_elapsed_s" in r for rows in runs.values() for r in rows)
    fig, axes = plt.subplots(3 if simulated else 2, 2, figsize=(11, 11 if simulated else 7.5))
    panels = [
        ("eval_accuracy", "round", "test accuracy", "round"),
        ("eval_accuracy", "bytes", "test accuracy", "cumulative uploaded MiB"),
        ("eval_loss", "round", "loss (solid: test, dashed: train)", "round"),
        ("eval_loss", "bytes", "test loss", "cumulative uploaded MiB"),
    ] + ([("eval_accuracy", "sim_time", "test accuracy", "simulated hours on the devices"),
          ("eval_accuracy", "energy", "test accuracy", "simulated energy of the clients (kJ)")] if simulated else [])
    totals = [sum(r.get("bytes_up", 0) for r in rows) for rows in runs.values()]
    log_bytes = min(totals, default=0) > 0 and max(totals) / min(totals) > 100  # e.g. seeds vs LoRA deltas
    for ax, (key, x, ylabel, xlabel) in zip(axes.flat, panels):
        for label, rows in runs.items():
            xs, ys = _series(rows, key, x)
            if x == "bytes" and log_bytes:  # round 0 (nothing uploaded) has no place on a log axis
                xs, ys = zip(*[(a, b) for a, b in zip(xs, ys) if a > 0]) if any(a > 0 for a in xs) else ([], [])
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=label)
            if key == "eval_loss" and x == "round":
                txs, tys = _series(rows, "train_loss", x)
                ax.plot(txs, tys, ls="--", color=line.get_color(), alpha=0.7)
        if x == "bytes" and log_bytes:
            ax.set_xscale("log")
            xlabel += " (log scale)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, title: str = "") -> Path:
    """Write ``<run_dir>/report.png`` from its metrics.jsonl."""
    run_dir = Path(run_dir)
    return plot_runs({run_dir.name: read_metrics(run_dir)}, run_dir / "report.png", title)
