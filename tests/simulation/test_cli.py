"""The real `anther-sim` command: bad input is a short message naming the key, exit code
2 (the one documented for bad config or input), no traceback and nothing trained. The
time to the error is measured by `anther-bench firstuse`, not here."""

import os
import re
import subprocess
import sys

import pytest

from simulation.cli import EXIT_CONFIG


def sim(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "simulation.cli", *args, f"hydra.run.dir={tmp_path}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["model=nope"], "tiny-bert"),  # lists the choices
        (["strategy=nope", "method=nope"], "fedprox"),  # both reported at once
        (["bogus=1"], "valid top-level keys"),
        (["data=file", "data.path=/no/such/file.csv"], "/no/such/file.csv"),
        (["data=agnews", "data.label_column=nope"], "title"),  # lists the file's columns
        (["data=agnews", "num_clients=8000"], "num_clients"),  # more clients than rows, found without loading
        (["model=tiny-bert", "num_clients=5000"], "num_clients"),
        (["partition.alpha=0"], "partition.alpha"),
        (["clients_per_round=50", "num_clients=10"], "clients_per_round"),
        (["partition=pathological", "partition.classes_per_client=9"], "partition.classes_per_client"),
        (["model=hf", "model.path=nobody/no-such-model"], "model=tiny-llama"),  # the CLI key, not model.name
        (["strategy._target_=no.such.Class"], "strategy._target_"),
        (["resume=true"], "resume=auto"),  # a fresh directory has nothing to resume
        (["resume=maybe"], "resume"),
        (["logger=nope"], "tensorboard"),
        (["lr=abc"], "lr: expected a number"),
    ],
)
def test_bad_input_fails_before_training(args, needle, tmp_path):
    if any("agnews" in a for a in args) and not os.path.exists("../shared/data/ag_news_test.csv"):
        pytest.skip("AG News file not beside the repo")
    res = sim(*args, tmp_path=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == EXIT_CONFIG, out[-2000:]
    assert needle in out
    assert "Traceback" not in out
    assert not (tmp_path / "metrics.jsonl").exists()


def test_hub_error_quotes_a_whole_sentence(tmp_path):
    res = sim("model=hf", "model.path=nobody/no-such-model", tmp_path=tmp_path)
    assert re.search(r"\(\w+: [^()]*\.\)\. Pass a local model folder as model.path=", res.stderr), res.stderr


def test_help_says_what_it_does_and_shows_examples(tmp_path):
    res = subprocess.run([sys.executable, "-m", "simulation.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert res.stdout.startswith("anther-sim: federated fine-tuning")
    assert "powered by Hydra" not in res.stdout
    for group in ("model", "method", "strategy", "partition"):
        assert f"  {group} " in res.stdout
    assert "fedprox" in res.stdout and "lora" in res.stdout
    assert res.stdout.count("anther-sim ") >= 3  # example command lines


def test_bench_options_all_have_help():
    from benchmarks.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for opt in action._actions:
            if opt.dest != "help":
                assert opt.help, f"anther-bench {action.prog}: {opt.dest} has no help text"


@pytest.mark.parametrize("quant, codec, absent", [("none", "fp32", True), ("nf4", "fp32", False), ("none", "int8", False),
                                                  ("none", "nf4", False)])
def test_a_run_without_quantization_skips_bitsandbytes(quant, codec, absent):
    """In a fresh process, as the CLI's single run does: PEFT and transformers then see no
    bitsandbytes (and still import); with quantization, or a codec that quantizes with
    it, it stays available."""
    code = (
        "import importlib.util, sys\n"
        "from simulation.cli import skip_bitsandbytes\n"
        f"skip_bitsandbytes({quant!r}, {codec!r})\n"
        "import peft, transformers.utils as tu\n"
        "absent = importlib.util.find_spec('bitsandbytes') is None\n"
        "print(absent, tu.is_bitsandbytes_available() == (not absent))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    if not absent and res.stdout.split()[0] == "True":
        pytest.skip("bitsandbytes is not installed here")
    assert res.stdout.split() == [str(absent), "True"]
