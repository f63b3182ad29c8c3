"""Flower's processes for a deployment: their environment, starting them detached with a
pid record, waiting for their ports, and stopping them with every descendant.

Flower 1.42's SuperLink starts ``flower-superexec`` in a new session, which starts the
ServerApp; a SuperNode starts ``flwr-clientapp`` processes. Killing a process group would
miss those, so :func:`stop` terminates the recorded process and all its descendants, waits,
then SIGKILLs what is left, and checks each pid's start time so a reused pid is never hit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from simulation.deploy.layout import Layout

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Only what the App needs; not the venv, git data, caches or outputs.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".pytest_cache", "__pycache__", "*.egg-info", "outputs", "multirun", ".anther-cache",
    "tests", "docs", ".ci",
)


def copy_app(dst: Path) -> Path:
    """A fresh copy of the App at ``dst`` (``flwr run`` may migrate its pyproject.toml)."""
    if not (REPO / "pyproject.toml").exists():
        raise FileNotFoundError(f"the Flower App's source is not at {REPO} (install Anther from its source tree: pip install -e .)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(REPO, dst, ignore=COPY_IGNORE)
    return dst


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def flower_env(**extra: str) -> dict[str, str]:
    """This environment for Flower's processes: its binaries first, no per-run uv env, offline."""
    env = dict(os.environ)
    env.pop("ANTHER_RUN_CONFIG", None)  # the simulator's side channel; deployment uses Flower's run_config
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # flower-superexec, flwr-serverapp, flwr-clientapp
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # reuse this environment, no per-run uv env
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            # SuperExec (under the SuperLink and each SuperNode) looks for a new task to launch (ServerApp,
            # ClientApp) every second by default; every message of every round waits for it
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": env.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"),
            **extra,
        }
    )
    return env


def home_env(lay: Layout, who: str, **extra: str) -> dict[str, str]:
    """Flower's environment with ``who``'s own FLWR_HOME under the deployment directory."""
    home = lay.home(who)
    home.mkdir(parents=True, exist_ok=True)
    return flower_env(FLWR_HOME=str(home), **extra)


def python_env(lay: Layout, who: str, **extra: str) -> dict[str, str]:
    """:func:`home_env` for a Python process of ours (``python -m ...``): this Anther importable."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return home_env(lay, who, PYTHONPATH=path, **extra)


def start(lay: Layout, who: str, cmd: list[str], env: dict[str, str]) -> psutil.Process:
    """Start ``cmd`` detached (own session, output to ``DIR/logs/<who>.log``) and record it."""
    log = lay.log(who)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=lay.root, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    ps = psutil.Process(proc.pid)
    lay.pid(who).parent.mkdir(parents=True, exist_ok=True)
    lay.pid(who).write_text(json.dumps({"pid": proc.pid, "create_time": ps.create_time(), "cmd": cmd}) + "\n")
    return ps


def recorded(lay: Layout, who: str) -> psutil.Process | None:
    """The live process ``who`` recorded in DIR/pids (None when gone or the pid was reused)."""
    try:
        rec = json.loads(lay.pid(who).read_text())
        ps = psutil.Process(rec["pid"])
        if abs(ps.create_time() - rec["create_time"]) > 1e-3 or ps.status() == psutil.STATUS_ZOMBIE:
            return None
        return ps
    except (OSError, ValueError, KeyError, psutil.Error):
        return None


def started(lay: Layout) -> list[str]:
    return sorted(p.stem for p in (lay.root / "pids").glob("*.json"))


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop(lay: Layout, names: list[str] | None = None, grace_s: float = 10.0) -> list[str]:
    """Stop the recorded processes ``names`` (default: all) and their descendants; return
    what was stopped. SIGTERM first, SIGKILL after ``grace_s``; pid records are removed."""
    victims: list[psutil.Process] = []
    stopped = []
    for who in names if names is not None else started(lay):
        ps = recorded(lay, who)
        if ps is not None:
            try:
                victims += ps.children(recursive=True)
            except psutil.Error:
                pass
            victims.append(ps)
            stopped.append(who)
        lay.pid(who).unlink(missing_ok=True)
    for ps in victims:
        try:
            ps.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    kill_stragglers(victims, grace_s)
    return stopped


def kill_stragglers(victims: list[psutil.Process], timeout: float) -> None:
    """Wait up to ``timeout`` s for already-signalled processes, then SIGKILL the rest."""
    _, alive = psutil.wait_procs(victims, timeout=max(0.1, timeout))
    for ps in alive:
        try:
            ps.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def wait_for(pred, timeout: float, alive: psutil.Process | None = None, every: float = 0.25) -> bool:
    """Poll ``pred()`` until true (True), ``timeout`` s pass or ``alive`` exits (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if alive is not None and (not alive.is_running() or alive.status() == psutil.STATUS_ZOMBIE):
            return False
        time.sleep(every)
    return pred()
