"""A new user's run, through the real `anther-sim` command: a quiet console (only
Anther's lines; one line per round when piped), everything in cli.log, trackers written
offline and continued by `resume=auto`."""

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
NOISE = re.compile(r"Warning|warnings\.warn|\bINFO\b|\bDEBUG\b|ClientAppActor|alembic|Traceback|pid=")


def anther_sim(*args, cwd, env):
    cmd = [sys.executable, "-m", "simulation.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_quiet_console_full_log_trackers_and_resume_auto(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's own client reads the file store
    run = tmp_path / "run"
    uri = f"file://{tmp_path / 'mlruns'}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_TRACKING_URI=uri)
    base = ["experiment=smoke", "logger=[tensorboard,mlflow]", "resume=auto", f"hydra.run.dir={run}"]

    first = anther_sim(*base, "rounds=1", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [ln for ln in (first.stdout + first.stderr).splitlines() if ln.strip()]
    assert [ln for ln in lines if NOISE.search(ln)] == []
    assert any(ln.startswith("round 1/1") for ln in lines)  # piped: one line per round, unwrapped
    assert lines[-1].startswith("done: final accuracy")
    log = (run / "cli.log").read_text()
    assert "round 1/1" in log and "flwr" in log  # the run log holds the progress and the libraries' lines

    second = anther_sim(*base, "rounds=2", cwd=tmp_path, env=env)  # resume=auto: continues after round 1
    assert second.returncode == 0, second.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval_accuracy")] == [0, 1, 2]
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "anther"]
    (mlrun,) = client.search_runs([exp.experiment_id])  # the resumed run is the same MLflow run
    history = client.get_metric_history(mlrun.info.run_id, "eval_accuracy")
    assert sorted({m.step for m in history}) == [0, 1, 2]
    assert "model.name" in mlrun.data.params
