"""Run-directory outputs: ``metrics.jsonl`` (one row per round) and ``summary.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ROW_KEYS = (
    "round", "train_loss", "eval_loss", "eval_accuracy", "bytes_up", "bytes_down",
    "clients", "failures", "exchanges", "wall_s", "client_peak_rss_mb",
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; a last line cut short by a crash is dropped (the
    round it belonged to is not checkpointed yet, so a resume writes it again)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON; the file was edited or is damaged") from None
    return rows


class MetricsLog:
    """Append-only ``metrics.jsonl`` that survives resume (rows past a round are dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self.rows = _read_rows(path)

    def truncate_after(self, last_round: int) -> None:
        """Keep rows up to ``last_round`` (a resumed run rewrites later ones)."""
        self.rows = [r for r in self.rows if r["round"] <= last_round]
        self._rewrite()

    def reset(self) -> None:
        self.rows = []
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        missing = [k for k in ROW_KEYS if k not in row]
        assert not missing, f"metrics row lacks {missing}"
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        tmp.replace(self.path)

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The ``summary.json`` object of the DESIGN contract."""
        accs = [r["eval_accuracy"] for r in self.rows if r.get("eval_accuracy") is not None]
        trained = [r for r in self.rows if r["round"] > 0]
        return {
            "rounds": max((r["round"] for r in self.rows), default=0),
            "final_eval_accuracy": accs[-1] if accs else None,
            "best_eval_accuracy": max(accs) if accs else None,
            "total_bytes_up": sum(r["bytes_up"] for r in trained),
            "total_bytes_down": sum(r["bytes_down"] for r in trained),
            "total_failures": sum(r["failures"] for r in trained),
            "wall_s": round(sum(r["wall_s"] for r in self.rows), 3),
            "max_client_peak_rss_mb": max((r["client_peak_rss_mb"] or 0 for r in trained), default=None),
            **({"sim_time_s": trained[-1].get("sim_elapsed_s"),
                "sim_energy_j": round(sum(r.get("sim_energy_j") or 0.0 for r in trained), 3),
                "dropped": sum(r.get("dropped") or 0 for r in trained)} if trained and "sim_elapsed_s" in trained[-1] else {}),
            **extra,
        }


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
