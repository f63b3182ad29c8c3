"""``flwr run . local-simulation`` from a fresh HOME, as the README tells a user to run it.

From an empty ``HOME`` and ``FLWR_HOME`` the test runs ``python -m simulation.flwr_setup
--num-supernodes 2`` (which writes the ``local-simulation`` connection into
``$FLWR_HOME/config.toml``), then ``flwr run <copy of the App> local-simulation --stream``,
which waits until the run has finished, and checks the run directory.

Flower 1.42 serves a ``":local:"`` connection by starting a *detached* local SuperLink
(``flower-superlink --simulation``, own session) that outlives ``flwr run``, with a
SuperExec (own session) under it that starts ``flwr-simulation`` and Ray. Its ports are
fixed unless ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT`` are
set, and ``flwr run`` reuses any local SuperLink already listening there, so the test
picks free ones. Every process it caused is found by a marker in its environment and
stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from tests.deployment.flower_env import BIN, REPO, copy_app, flower_env, free_port, marked, read_rows, stop_marked

pytestmark = pytest.mark.integration

ROUNDS, NODES = 2, 2
RUN_TIMEOUT_S = 150.0
RUN_CONFIG = (
    'model.name="tiny-bert" data.num_examples=120 data.test_size=30 local_steps=2 batch_size=8 '
    f"num_clients={NODES} clients_per_round={NODES} rounds={ROUNDS}"
)
MARKER = "ANTHER_TEST_FLWR_RUN"  # set in every process this test causes (inherited by all)


def _tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"----- {path} (last lines) -----\n" + "\n".join(text.splitlines()[-lines:])


def _summary_rounds(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("rounds")
    except (OSError, json.JSONDecodeError):
        return None


def _stop(flwr: subprocess.Popen | None, token: str) -> None:
    """Stop ``flwr run`` and the local SuperLink, SuperExec, simulation and Ray it started."""
    if flwr is not None and flwr.poll() is None:
        try:
            os.killpg(flwr.pid, signal.SIGTERM)  # pgid == pid: start_new_session
        except ProcessLookupError:
            pass
    stop_marked(MARKER, token)
    if flwr is not None:
        try:
            flwr.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(flwr.pid, signal.SIGKILL)
            flwr.wait(timeout=5)


@pytest.mark.slow  # 43 s on 2 cores; run with -m slow
def test_flwr_run_local_simulation_from_fresh_home(tmp_path):
    home, flwr_home, run_dir = tmp_path / "home", tmp_path / "flwr-home", tmp_path / "run"
    home.mkdir()
    app_dir = copy_app(tmp_path / "app")
    token = uuid.uuid4().hex
    env = flower_env(
        HOME=str(home),
        FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        **{MARKER: token},
    )

    setup = subprocess.run(
        [sys.executable, "-m", "simulation.flwr_setup", "--num-supernodes", str(NODES)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    config = tomllib.loads((flwr_home / "config.toml").read_text())
    conn = config["superlink"]["local-simulation"]
    assert conn["address"] == ":local:" and conn["options"]["num-supernodes"] == NODES, config
    assert "local" in config["superlink"], config  # Flower's own default connections are kept

    out_path = tmp_path / "flwr-run.log"
    flwr = None
    try:
        with out_path.open("wb") as out:
            flwr = subprocess.Popen(
                [str(BIN / "flwr"), "run", str(app_dir), "local-simulation", "--stream",
                 "--run-config", f'{RUN_CONFIG} run_dir="{run_dir}"'],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def logs() -> str:
            return f"{_tail(out_path)}\n{_tail(flwr_home / 'local-superlink' / 'superlink.log')}"

        try:
            returncode = flwr.wait(timeout=RUN_TIMEOUT_S)  # --stream returns when the run has finished
        except subprocess.TimeoutExpired:
            rows = [r.get("round") for r in read_rows(run_dir / "metrics.jsonl")]
            pytest.fail(f"flwr run --stream did not return in {RUN_TIMEOUT_S:.0f} s (rounds: {rows})\n{logs()}")
        deadline = time.monotonic() + 10  # the ServerApp's last file writes may trail the stream's end
        while _summary_rounds(run_dir) is None and time.monotonic() < deadline:
            time.sleep(0.5)

        # flwr run exits 0 even when the run fails (the App's traceback is in the stream): check the files
        assert returncode == 0 and "Successfully started run" in out_path.read_text(errors="replace"), logs()
        rows = read_rows(run_dir / "metrics.jsonl")
        assert [r.get("round") for r in rows] == list(range(ROUNDS + 1)), f"{rows}\n{logs()}"
        for r in rows[1:]:
            assert r["clients"] == NODES and r["failures"] == 0, r
        assert _summary_rounds(run_dir) == ROUNDS, logs()
    finally:
        _stop(flwr, token)
    assert not marked(MARKER, token), "processes left running"
