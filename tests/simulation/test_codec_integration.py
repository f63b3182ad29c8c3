"""Compressing codecs through Flower's real Simulation Engine on a tiny model: every
reply is accepted, and the uplink shrinks by the codec's ratio."""

import json

import pytest

import simulation

pytestmark = pytest.mark.integration
TINY = ["model=tiny-bert", "data.num_examples=120", "data.test_size=30", "local_steps=2", "batch_size=8",
        "num_clients=3", "clients_per_round=3", "rounds=2", "eval_every=0"]


def rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["round"] > 0]


@pytest.fixture(scope="module")
def fp32_up(tmp_path_factory):
    return rows(simulation.run([*TINY, f"hydra.run.dir={tmp_path_factory.mktemp('fp32')}"]))[0]["bytes_up"]


@pytest.mark.parametrize("codec, at_least", [("int8", 3.0), ("nf4", 5.0), ("topk", 8.0)])
def test_compressed_runs_accept_every_reply(tmp_path, fp32_up, codec, at_least):
    got = rows(simulation.run([*TINY, f"codec={codec}", f"hydra.run.dir={tmp_path}"]))
    for r in got:
        assert r["failures"] == 0 and r["clients"] == 3, r
        assert fp32_up / r["bytes_up"] >= at_least, (codec, fp32_up, r["bytes_up"])  # tiny tensors: per-block overhead
    assert got[-1]["eval_accuracy"] is not None
