"""server.trackers: TensorBoard / MLflow / W&B written offline into a tmp directory."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys

import pytest

from server import trackers as tr
from strategies.runconfig import ConfigError

CONFIG = {
    "model": {"name": "tiny-bert", "max_length": 64},
    "method": {"name": "lora", "lora": {"r": 8, "target_modules": ["q", "v"]}},
    "lr": 0.002,
    "seed": 0,
    "resume": False,
    "data": {"path": None, "long": "x" * 7000},
}


def _rows(rounds=range(3)):
    for r in rounds:
        yield {
            "round": r, "train_loss": None if r == 0 else 1.0 / r, "eval_loss": 2.0 - 0.1 * r,
            "eval_accuracy": 0.25 + 0.1 * r, "bytes_up": 1000 * r, "bytes_down": 2000 * r,
            "clients": 0 if r == 0 else 5, "failures": 0, "wall_s": 0.5, "client_peak_rss_mb": None,
            "flag": True, "note": "text",
        }


SUMMARY = {"rounds": 2, "final_eval_accuracy": 0.45, "best_eval_accuracy": 0.45,
           "total_bytes_up": 3000, "max_client_peak_rss_mb": None, "status": "completed"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = tmp (MLflow's ./mlruns lands there); no tracker env of the user leaks in."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    return tmp_path


def _figure(path):
    from PIL import Image

    Image.new("RGB", (32, 24), (200, 30, 30)).save(path)
    return path


def _files(run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("lr: 0.002\n")
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    return [_figure(run_dir / "accuracy.png"), run_dir / "config.yaml", run_dir / "summary.json",
            run_dir / "missing.png"]


def _run(names, run_dir, rounds=range(3), **kw):
    kw.setdefault("run_name", "run-a")
    with tr.Trackers.open(names, run_dir, config=CONFIG, **kw) as t:
        for row in _rows(rounds):
            t.log_row(row)
        t.log_summary(SUMMARY)
        t.log_files(_files(run_dir))
    return t


def _tb_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _mlflow_runs(workdir, experiment="anther"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient((workdir / "mlruns").as_uri())
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()), ("", ()), ("none", ()), ("None", ()), ("tensorboard", ("tensorboard",)),
        ("tensorboard,mlflow", ("tensorboard", "mlflow")),
        ("mlflow+tensorboard", ("mlflow", "tensorboard")),
        (" wandb , mlflow,wandb ", ("wandb", "mlflow")),
        (["mlflow", "tensorboard", "mlflow"], ("mlflow", "tensorboard")),
        (("wandb",), ("wandb",)), ([], ()),
    ],
)
def test_parse_logger(value, expected):
    assert tr.parse_logger(value) == expected


@pytest.mark.parametrize("value", ["tensorbord", "tensorboard,comet", ["mlflow", "neptune"]])
def test_parse_logger_unknown(value):
    with pytest.raises(ConfigError, match=r"logger=.*not known.*tensorboard, mlflow, wandb"):
        tr.parse_logger(value)


def test_parse_logger_wrong_type():
    with pytest.raises(ConfigError, match="logger"):
        tr.parse_logger(3)


def test_check_installed_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        tr.importlib.util, "find_spec",
        lambda name, *a: None if name in ("mlflow", "wandb") else real(name, *a),
    )
    tr.check_installed(["tensorboard"])
    tr.check_installed(())
    with pytest.raises(ConfigError) as err:
        tr.check_installed(["mlflow"])
    assert str(err.value) == "logger=mlflow needs MLflow: pip install 'anther[mlflow]'"
    with pytest.raises(ConfigError) as err:
        tr.check_installed("tensorboard,mlflow,wandb")
    assert str(err.value) == "logger=mlflow,wandb needs MLflow and wandb: pip install 'anther[mlflow,wandb]'"
    with pytest.raises(ConfigError, match="anther\\[mlflow\\]"):
        tr.Trackers.open("mlflow", "unused", run_name="x")


def test_import_stays_light():
    code = ("import sys, server.trackers; "
            "print(sorted(m for m in ('torch', 'mlflow', 'wandb', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_trackers_is_a_noop(tmp_path):
    t = tr.Trackers.open((), tmp_path / "run", run_name="x")
    assert not t and t.names == ()
    t.log_row({"round": 1, "eval_accuracy": 0.5})
    t.log_summary(SUMMARY)
    t.log_files([tmp_path / "nothing.png"])
    t.close()
    t.close()
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard(workdir):
    pytest.importorskip("tensorboard")
    run_dir = workdir / "outputs" / "run-a"
    t = _run("tensorboard", run_dir)
    t.close()  # idempotent after the with-block
    acc = _tb_scalars(run_dir / "tensorboard")
    tags = acc.Tags()
    assert {"eval_accuracy", "eval_loss", "bytes_up", "train_loss", "clients"} <= set(tags["scalars"])
    assert not {"round", "flag", "note", "client_peak_rss_mb"} & set(tags["scalars"])
    acc_curve = [(e.step, round(e.value, 6)) for e in acc.Scalars("eval_accuracy")]
    assert acc_curve == [(0, 0.25), (1, 0.35), (2, 0.45)]
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2]  # None is not logged
    assert [e.value for e in acc.Scalars("bytes_up")] == [0, 1000, 2000]
    assert acc.Scalars("summary/final_eval_accuracy")[0].value == pytest.approx(0.45)
    assert "figures/accuracy" in tags["images"]
    assert {"config/text_summary", "summary/text_summary"} <= set(tags["tensors"])
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "tiny-bert" in config_text
    assert json.loads((run_dir / "tracking.json").read_text())["tensorboard"]["logdir"].endswith("tensorboard")


def test_tensorboard_resume_purges_later_steps(workdir):
    pytest.importorskip("tensorboard")
    run_dir = workdir / "run"
    _run("tensorboard", run_dir, rounds=range(4))  # "crashed" after round 3
    _run("tensorboard", run_dir, rounds=range(2, 5), resume=True)  # resumed from round 1's checkpoint
    steps = [e.step for e in _tb_scalars(run_dir / "tensorboard").Scalars("eval_accuracy")]
    assert steps == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- MLflow


def test_mlflow(workdir, caplog):
    pytest.importorskip("mlflow")
    run_dir = workdir / "outputs" / "run-a"
    with caplog.at_level(logging.WARNING):
        _run("mlflow", run_dir, group="sweep-1")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    client, runs = _mlflow_runs(workdir, "sweep-1")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(0, 0.25), (1, 0.35), (2, 0.45)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    params = run.data.params
    assert params["model.name"] == "tiny-bert"
    assert params["method.lora.r"] == "8"
    assert params["method.lora.target_modules"] == '["q", "v"]'
    assert params["lr"] == "0.002"
    assert 500 <= len(params["data.long"]) < 7000  # truncated to MLflow's limit
    assert run.data.metrics["summary/final_eval_accuracy"] == pytest.approx(0.45)
    assert run.data.tags["summary/status"] == "completed"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "figures"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/accuracy.png"]
    state = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert state["run_id"] == run.info.run_id
    assert not (run_dir / "mlruns").exists()


def test_mlflow_tracking_uri_env(workdir, monkeypatch):
    pytest.importorskip("mlflow")
    store = workdir / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    _run("mlflow", workdir / "run")
    assert (store).is_dir() and not (workdir / "mlruns").exists()


def test_mlflow_resume_reuses_run(workdir):
    pytest.importorskip("mlflow")
    run_dir = workdir / "run"
    _run("mlflow", run_dir, rounds=range(2))
    first = json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    _run("mlflow", run_dir, rounds=range(2, 4), resume=True)
    client, runs = _mlflow_runs(workdir)
    assert [r.info.run_id for r in runs] == [first]
    steps = [m.step for m in client.get_metric_history(first, "eval_accuracy")]
    assert steps == [0, 1, 2, 3]

    # without tracking.json the run is found by its name
    (run_dir / "tracking.json").unlink()
    _run("mlflow", run_dir, rounds=range(4, 5), resume=True)
    client, runs = _mlflow_runs(workdir)
    assert [r.info.run_id for r in runs] == [first]

    # not resuming: a new run
    _run("mlflow", run_dir, rounds=range(1))
    assert len(_mlflow_runs(workdir)[1]) == 2


# --------------------------------------------------------------------------- W&B


def test_wandb_offline(workdir):
    pytest.importorskip("wandb")
    run_dir = workdir / "outputs" / "run-a"
    _run("wandb", run_dir, group="sweep-1")
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]["id"]
    assert offline[0].name.endswith(run_id)
    assert (offline[0] / f"run-{run_id}.wandb").stat().st_size > 0
    files = offline[0] / "files"
    assert json.loads((files / "anther" / "summary.json").read_text()) == SUMMARY
    assert (files / "anther" / "config.yaml").is_file() and not (files / "anther" / "config.yaml").is_symlink()
    assert list((files / "media" / "images" / "figures").glob("accuracy_*.png"))
    # offline, history/summary/config live in the run's transaction log (until `wandb sync`)
    records = (offline[0] / f"run-{run_id}.wandb").read_bytes()
    for text in (b"eval_accuracy", b"final_eval_accuracy", b"completed", b"tiny-bert", b"sweep-1", b"run-a"):
        assert text in records, text

    # resume: the same id again
    _run("wandb", run_dir, rounds=range(3, 4), resume=True)
    # (wandb names a second directory of the same second "<...>-<id>-1")
    assert all(run_id in p.name.split("-")[3:] for p in (run_dir / "wandb").glob("offline-run-*"))


# --------------------------------------------------------------------------- several / failures


def test_several_at_once(workdir):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run_dir = workdir / "run"
    t = _run("tensorboard+mlflow", run_dir)
    assert t.names == ()  # closed
    assert [e.step for e in _tb_scalars(run_dir / "tensorboard").Scalars("eval_accuracy")] == [0, 1, 2]
    client, runs = _mlflow_runs(workdir)
    assert len(client.get_metric_history(runs[0].info.run_id, "eval_accuracy")) == 3
    assert set(json.loads((run_dir / "tracking.json").read_text())) == {"tensorboard", "mlflow"}


def test_failing_tracker_is_disabled(workdir, monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")

    def boom(self, step, metrics):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tr._MLflow, "log_row", boom)
    run_dir = workdir / "run"
    with caplog.at_level(logging.WARNING, logger="anther.trackers"):
        t = tr.Trackers.open("mlflow,tensorboard", run_dir, run_name="r", config=CONFIG)
        assert t.names == ("mlflow", "tensorboard")
        for row in _rows():
            t.log_row(row)
        assert t.names == ("tensorboard",)
        t.log_summary(SUMMARY)
        t.close()
    warnings = [r for r in caplog.records if r.name == "anther.trackers"]
    assert len(warnings) == 1
    assert "mlflow" in warnings[0].getMessage() and "disk full" in warnings[0].getMessage()
    assert [e.step for e in _tb_scalars(run_dir / "tensorboard").Scalars("eval_accuracy")] == [0, 1, 2]
    _, runs = _mlflow_runs(workdir)
    assert runs[0].info.status == "FAILED"


def test_tracker_failing_to_start_is_left_out(workdir, monkeypatch, caplog):
    pytest.importorskip("tensorboard")

    def boom(self, *a, **kw):
        raise OSError("no store")

    monkeypatch.setattr(tr._MLflow, "__init__", boom)
    monkeypatch.setattr(tr, "check_installed", lambda names: None)
    with (
        caplog.at_level(logging.WARNING, logger="anther.trackers"),
        tr.Trackers.open("mlflow,tensorboard", workdir / "run", run_name="r") as t,
    ):
        assert t.names == ("tensorboard",)
    assert "logger=mlflow could not start" in caplog.text and "no store" in caplog.text
    with pytest.raises(OSError):
        tr.Trackers.open("mlflow", workdir / "run", run_name="r", strict=True)


def test_wandb_mode_env_is_respected(workdir, monkeypatch, caplog):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = workdir / "run"
    with caplog.at_level(logging.WARNING, logger="anther.trackers"):
        _run("wandb", run_dir)
    assert not caplog.records, caplog.text
    assert not list(run_dir.glob("wandb/offline-run-*"))
