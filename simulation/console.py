"""The console and the run log of ``anther-sim``.

The console shows Anther's own lines only: the partition table, the start-up phases,
the per-round progress, warnings that matter and the summary. Everything, third-party
logs included, goes to ``<run_dir>/cli.log`` with timestamps; ``-v`` shows third-party
logs on the console too. When stderr is not a terminal, lines are never wrapped.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from server.progress import PACKAGES as OURS
from server.progress import ROUNDS_LOGGER

LOG_NAME = "cli.log"
log = logging.getLogger("anther.sim")


def make_console() -> Console:
    """stderr console; no wrapping when piped (a log line stays one line)."""
    probe = Console(stderr=True)
    return Console(stderr=True, soft_wrap=not probe.is_terminal)


def _ours(name: str) -> bool:
    return name.split(".", 1)[0] in OURS


class ConsoleHandler(logging.Handler):
    """Anther's INFO+ records (and, verbose, everyone's) printed through the rich console."""

    def __init__(self, console: Console, verbose: bool) -> None:
        super().__init__(logging.INFO)
        self.console, self.verbose = console, verbose

    def emit(self, record: logging.LogRecord) -> None:
        if not (self.verbose or _ours(record.name) or record.levelno >= logging.CRITICAL):
            return
        if record.name == ROUNDS_LOGGER and self.console.is_terminal:
            return  # the live progress bar shows them
        try:
            msg = escape(record.getMessage())
            if record.levelno >= logging.ERROR:
                self.console.print(f"[bold red]error:[/bold red] {msg}")
            elif record.levelno >= logging.WARNING:
                self.console.print(f"[yellow]warning:[/yellow] {msg}")
            elif _ours(record.name):
                self.console.print(msg, style="dim" if record.name == "anther.phase" else None)
            else:
                self.console.print(f"[dim]{record.name}: {msg}[/dim]")
        except Exception:  # never let the console break a run
            self.handleError(record)


class RunConsole:
    """What the CLI prints, and where a run's log goes."""

    def __init__(self, console: Console | None = None, verbose: bool = False) -> None:
        self.console = console or make_console()
        self.verbose = verbose
        self.t0 = time.perf_counter()

    def phase(self, what: str) -> None:
        """A start-up phase ("loading the backbone", ...) with the time since start."""
        logging.getLogger("anther.phase").info("%5.1f s  %s", time.perf_counter() - self.t0, what)

    def config_error(self, err: BaseException, title: str = "config error") -> None:
        log.debug("config error", exc_info=err)
        print_config_error(err, title, self.console)

    def failure(self, message: str) -> None:
        self.console.print(f"[bold red]{escape(message)}[/bold red]")

    def crash(self, err: BaseException) -> None:
        log.error("the run failed: %s: %s", type(err).__name__, err)
        logging.getLogger("anther.trace").debug("".join(traceback.format_exception(err)))
        where = next((Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)
        if where is not None:
            self.console.print(f"the traceback is in {where}")
        else:
            self.console.print(escape("".join(traceback.format_exception(err))))

    # a Console's print, for callers that take a rich Console
    def print(self, *args, **kwargs) -> None:
        self.console.print(*args, **kwargs)


def print_config_error(err: BaseException, title: str = "config error", console: Console | None = None) -> None:
    (console or make_console()).print(f"[bold red]{title}:[/bold red] {escape(str(err))}")


@contextmanager
def run_console(run_dir: Path, verbose: bool = False) -> Iterator[RunConsole]:
    """Route all logging to ``run_dir/cli.log`` and Anther's lines to the console."""
    rc = RunConsole(verbose=verbose)
    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers[:]
    for h in old_handlers:
        root.removeHandler(h)
    run_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(run_dir / LOG_NAME)
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.addFilter(lambda r: r.levelno >= logging.INFO or _ours(r.name))
    console_handler = ConsoleHandler(rc.console, verbose)
    root.addHandler(file_handler)
    root.addHandler(console_handler)
    root.setLevel(logging.INFO)
    for name in OURS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.captureWarnings(True)  # warnings.warn -> the log file (py.warnings), not the console
    try:
        yield rc
    finally:
        logging.captureWarnings(False)
        for h in (file_handler, console_handler):
            root.removeHandler(h)
        file_handler.close()
        for h in old_handlers:
            root.addHandler(h)
        root.setLevel(old_level)
        sys.stderr.flush()
