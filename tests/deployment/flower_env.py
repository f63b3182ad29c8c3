"""What the deployment tests share: the App copy, free ports, Flower's environment, rows."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Only what the App needs; not the venv, git data, caches or outputs.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".pytest_cache", "__pycache__", "*.egg-info", "outputs", "multirun", ".anther-cache",
    "tests", "docs", ".ci",
)


def copy_app(dst: Path) -> Path:
    """A copy of the App (flwr run may migrate pyproject.toml; the repo stays untouched)."""
    shutil.copytree(REPO, dst, ignore=COPY_IGNORE)
    return dst


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(**extra: str) -> dict[str, str]:
    """This environment for Flower's processes: its binaries first, no per-run uv env, offline."""
    env = dict(os.environ)
    env.pop("ANTHER_RUN_CONFIG", None)  # the simulator's side channel; deployment uses Flower's run_config
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # flower-superexec, flwr-serverapp, flwr-clientapp
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # reuse this venv, no per-run uv env
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",  # several torch processes share a small machine
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def kill_stragglers(procs: list, timeout: float) -> None:
    """Wait up to ``timeout`` s for already-signalled psutil processes, then SIGKILL the rest."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=max(0.1, timeout))
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows written so far (a line being written ends the list)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
