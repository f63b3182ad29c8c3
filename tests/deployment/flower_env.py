"""What the deployment tests share: the App copy, free ports, Flower's environment (from
:mod:`simulation.deploy.procs`, which ``anther-deploy`` uses), rows."""

from __future__ import annotations

import json
from pathlib import Path

from simulation.deploy.procs import BIN, REPO, copy_app, free_port, kill_stragglers  # noqa: F401 - for the tests
from simulation.deploy.procs import flower_env as _flower_env


def flower_env(**extra: str) -> dict[str, str]:
    """Flower's environment for a test's processes: several torch processes share a small machine."""
    return _flower_env(**{"OMP_NUM_THREADS": "1", **extra})


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows written so far (a line being written ends the list)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def marked(key: str, token: str) -> list:
    """Processes whose environment carries ``key=token`` (orphans and daemons included)."""
    import os

    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(key) == token:
                found.append(proc)
        except psutil.Error:  # gone, zombie, or not ours to read
            pass
    return found


def stop_marked(key: str, token: str) -> None:
    """SIGTERM, then SIGKILL, every process carrying the marker (twice: a dying parent may spawn)."""
    import psutil

    for _ in range(2):
        victims = marked(key, token)
        for proc in victims:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        kill_stragglers(victims, timeout=10)
