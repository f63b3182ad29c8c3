"""Progress over rounds with the latest accuracy, loss and traffic: a live rich bar on
a terminal, and one log line per round (``anther.rounds``: the run log, and the console
when it is not a terminal)."""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


PACKAGES = ("anther", "client", "server", "strategies", "simulation", "kernels")  # Anther's loggers' roots
ROUNDS_LOGGER = "anther.rounds"  # one line per round: the run log always, the console when piped
log = logging.getLogger(ROUNDS_LOGGER)


class RoundProgress:
    """Context manager: ``update(round, row)`` after each round."""

    def __init__(self, rounds: int, done: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("rounds", total=rounds, completed=done, status="")
        self.up = 0
        self.rounds = rounds
        self.live = self.console.is_terminal or self.console.is_jupyter

    def __enter__(self) -> "RoundProgress":
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.progress.stop()

    def update(self, rnd: int, row: dict[str, Any]) -> None:
        self.up += row["bytes_up"]
        parts = []
        if row.get("eval_accuracy") is not None:
            parts.append(f"acc {row['eval_accuracy']:.3f}")
        if row.get("train_loss") is not None:
            parts.append(f"loss {row['train_loss']:.3f}")
        parts.append(f"up {_fmt_bytes(self.up)}")
        failed = f"fail {row['failures']}" if row.get("failures") else ""
        self.progress.update(self.task, completed=rnd, status=" · ".join(parts + [f"[red]{failed}[/red]"] * bool(failed)))
        log.info("round %d/%d  %s  (%.1f s)", rnd, self.rounds, " · ".join(parts + [failed] * bool(failed)), row.get("wall_s", 0.0))
