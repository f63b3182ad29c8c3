"""End to end on Flower's deployment runtime: a real SuperLink and two real SuperNodes.

The test starts ``flower-superlink --insecure`` and two ``flower-supernode --insecure``
processes on free loopback ports, submits the App with ``flwr run`` (through a SuperLink
connection in a private Flower configuration file, ``$FLWR_HOME/config.toml``), and
waits for the ServerApp to write ``metrics.jsonl`` and ``summary.json``. Every process
it started (and their children: SuperExec, ServerApp, ClientApps) is stopped at the end.

Flower 1.42 serves the Control, Fleet and ServerAppIo APIs of the SuperLink on one HTTP
port (``--port``); each SuperNode serves its ClientAppIo API on its own ``--port``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.deployment.flower_env import BIN, copy_app, flower_env, free_port, kill_stragglers, read_rows

pytestmark = pytest.mark.integration

ROUNDS, NODES = 2, 2
STARTUP_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 150.0
RUN_CONFIG = (
    'model.name="tiny-bert" data.num_examples=120 data.test_size=30 batch_size=8 '
    f"num_clients={NODES} clients_per_round={NODES} rounds={ROUNDS} timeout_s=60.0"
)
def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Processes:
    """The processes this test started; each in its own session (process group)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: dict[str, list[psutil.Process]] = {}
        self.serverapps: list[psutil.Process] = []  # flwr-serverapp, launched by the SuperLink's SuperExec

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        with (self.log_dir / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def remember_children(self) -> None:
        """Record descendants now: Flower starts SuperExec in a new session, so killing a
        process group alone would miss it and the ServerApp / ClientApps it launched."""
        for name, proc in self.procs.items():
            try:
                kids = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                continue
            known = {p.pid for p in self.seen.get(name, [])}
            new = [k for k in kids if k.pid not in known]
            self.seen.setdefault(name, []).extend(new)
            for kid in new:
                try:
                    if any("flwr-serverapp" in part for part in kid.cmdline()):
                        self.serverapps.append(kid)
                except psutil.Error:
                    pass

    def serverapp_exited(self) -> bool:
        """A ServerApp was seen and none is running any more."""

        def running(p: psutil.Process) -> bool:
            try:
                return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                return False

        return bool(self.serverapps) and not any(running(p) for p in self.serverapps)

    def dead(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, p in self.procs.items() if p.poll() is not None]

    def logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (last lines) -----\n{_tail(p)}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        self.remember_children()
        victims: list[psutil.Process] = []
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)  # pgid == pid: start_new_session
                except ProcessLookupError:
                    pass
            for child in self.seen.get(name, []):
                try:
                    child.terminate()  # psutil checks the pid was not reused
                    victims.append(child)
                except psutil.Error:
                    pass
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        kill_stragglers(victims, timeout=deadline - time.monotonic())


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return flower_env(FLWR_HOME=str(home))  # per process: Flower config, installed FABs, caches


def _server_logs(cli_out: str, env: dict[str, str]) -> str:
    """The ServerApp's log as the SuperLink stored it (its output is not on the console)."""
    found = re.search(r"Successfully started run (\d+)", cli_out)
    if not found:
        return ""
    try:
        got = subprocess.run(
            [str(BIN / "flwr"), "log", found.group(1), "loopback", "--show"],
            env=env, capture_output=True, text=True, timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "----- flwr log: timed out -----"
    return f"----- flwr log {found.group(1)} --show (last lines) -----\n" + "\n".join(
        (got.stdout + got.stderr).splitlines()[-60:]
    )


def _finished(run_dir: Path) -> bool:
    rows = read_rows(run_dir / "metrics.jsonl")
    if not any(r.get("round") == ROUNDS for r in rows):
        return False
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("rounds") == ROUNDS
    except (OSError, json.JSONDecodeError):
        return False


# Split training: one exchange per step + 1, Context.state carried between them. The
# SuperNode starts a ClientApp process per message (imports + backbone load each time),
# so the split case keeps to one local step (two exchanges per round).
SPLIT = 'method.name="split" method.split.cut=1 strategy.name="sfl_v2" local_steps=1'


# LoRA and FedKSeed over TLS with node authentication: test_deploy_tls.py (anther-deploy).
@pytest.mark.slow  # 140 s on 2 cores; anther-deploy's own test covers the deployment runtime by default
@pytest.mark.parametrize("extra", [SPLIT], ids=["split"])
def test_two_rounds_on_superlink_and_two_supernodes(tmp_path, extra):
    app_dir = copy_app(tmp_path / "app")
    run_dir = tmp_path / "run"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    link_port = free_port()
    node_ports = [free_port() for _ in range(NODES)]
    assert len({link_port, *node_ports}) == NODES + 1

    cli_env = _env(tmp_path / "home" / "cli")
    (tmp_path / "home" / "cli" / "config.toml").write_text(
        '[superlink]\ndefault = "loopback"\n\n'
        f'[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )

    procs = Processes(log_dir)
    cli_out = ""
    try:
        procs.start(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
             "--disable-runtime-dependency-installation"],
            _env(tmp_path / "home" / "superlink"),
            tmp_path,
        )
        for i, port in enumerate(node_ports):
            procs.start(
                f"supernode-{i}",
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                 "--host", "127.0.0.1", "--port", str(port),
                 "--node-config", f"partition-id={i} num-partitions={NODES}"],
                _env(tmp_path / "home" / f"node-{i}"),
                tmp_path,
            )

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(_listening(p) for p in (link_port, *node_ports)):
            if procs.dead() or time.monotonic() > deadline:
                pytest.fail(f"runtime did not start (dead: {procs.dead()})\n{procs.logs()}")
            time.sleep(0.5)

        try:
            submitted = subprocess.run(
                [str(BIN / "flwr"), "run", str(app_dir), "loopback",
                 "--run-config", f'{RUN_CONFIG} {extra} run_dir="{run_dir}"'],
                env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
            )
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"flwr run did not return in 60 s: {err.stdout!r} {err.stderr!r}\n{procs.logs()}")
        cli_out = f"----- flwr run (exit {submitted.returncode}) -----\n{submitted.stdout}\n{submitted.stderr}"
        assert submitted.returncode == 0 and "Successfully started run" in submitted.stdout, (
            f"{cli_out}\n{procs.logs()}"
        )

        deadline = time.monotonic() + RUN_TIMEOUT_S * (2 if extra == SPLIT else 1)
        while not _finished(run_dir):
            procs.remember_children()
            problem = ""
            if procs.dead():
                problem = f"a runtime process exited: {procs.dead()}"
            elif procs.serverapp_exited() and not _finished(run_dir):
                problem = "the ServerApp exited before writing the summary of the last round"
            elif time.monotonic() > deadline:
                problem = f"no summary of round {ROUNDS} after {RUN_TIMEOUT_S:.0f} s"
            if problem:
                rows = read_rows(run_dir / "metrics.jsonl")
                pytest.fail(
                    f"{problem} (rounds written: {[r.get('round') for r in rows]})\n{cli_out}\n"
                    f"{procs.logs()}\n{_server_logs(cli_out, cli_env)}"
                )
            time.sleep(1.0)

        rows = read_rows(run_dir / "metrics.jsonl")
        assert [r["round"] for r in rows] == list(range(ROUNDS + 1)), rows
        for r in rows[1:]:
            assert r["clients"] == NODES and r["failures"] == 0, r
            assert r["bytes_up"] > 0 and r["bytes_down"] > 0, r
            assert r["exchanges"] == (2 if extra == SPLIT else 1), r  # split: local_steps + 1 round trips
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["rounds"] == ROUNDS and summary["model"] == "tiny-bert", summary
    finally:
        procs.stop()
