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
