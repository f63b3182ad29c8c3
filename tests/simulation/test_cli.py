"""The real `anther-sim` command: bad input is a short message and a non-zero exit."""

import os
import subprocess
import sys

import pytest


def sim(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "simulation.cli", *args, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["model=nope"], 1, "minilm"),  # Hydra lists the available options
        (["bogus=1"], 2, "valid top-level keys"),
        (["data=file", "data.path=/no/such/file.csv"], 2, "/no/such/file.csv"),
        (["data=agnews", "data.label_column=nope"], 2, "title"),  # lists the file's columns
        (["model=tiny-bert", "num_clients=5000"], 2, "num_clients"),
        (["partition.alpha=0"], 2, "partition.alpha"),
        (["clients_per_round=11"], 2, "clients_per_round"),
        (["model=hf", "model.path=nobody/no-such-model"], 3, "hub"),
    ],
)
def test_bad_input_fails_before_training(args, code, needle, tmp_path):
    if any("agnews" in a for a in args) and not os.path.exists("../shared/data/ag_news_test.csv"):
        pytest.skip("AG News file not beside the repo")
    res = sim(*args, tmp_path=tmp_path)
    assert res.returncode == code, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert needle in out
    assert "Traceback" not in out
    assert not (tmp_path / "metrics.jsonl").exists()
