"""FedKSeed end to end through Flower's Simulation Engine on a tiny model: clients
catch up from the server's history, bad (seed, scalar) replies are rejected and counted,
and a resumed run equals an uninterrupted one."""

import json

import numpy as np
import pytest
from flwr.app import Message
from safetensors.numpy import load_file

import simulation
from strategies import seeds as sd

pytestmark = pytest.mark.integration

TINY = ["model=tiny-bert", "data.num_examples=120", "data.test_size=30", "batch_size=8",
        "method=zo_seed", "strategy=fedkseed", "strategy.num_seeds=256", "lr=1e-3", "local_steps=3"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _tamper(pid: int, out: Message) -> Message:
    """Partition 0 sends a NaN scalar, partition 1 more scalars than it was assigned seeds."""
    frame = sd.ReplyFrame.from_bytes(out.content[sd.FRAME]["f"])
    if pid == 0:
        frame.scalar[0], frame.bits = np.nan, 32
    if pid == 1:
        frame.scalar = np.concatenate([frame.scalar, frame.scalar])
    out.content[sd.FRAME] = sd.frame_record(frame, np.random.default_rng(0))
    return out


def test_bad_seed_replies_are_counted_and_the_round_goes_on(tmp_path, tampering_app):
    base = [*TINY, "num_clients=3", "clients_per_round=3", "rounds=1", f"hydra.run.dir={tmp_path}"]
    simulation.run(base, client_app=tampering_app(_tamper))
    last = rows(tmp_path)[-1]
    assert last["failures"] == 2 and last["clients"] == 3 and last["eval_accuracy"] is not None


def test_fedkseed_catch_up_tiny_uplink_and_exact_resume(tmp_path):
    base = [*TINY, "num_clients=4", "clients_per_round=2", "eval_every=2", "strategy=fedkseed_pro"]
    straight = simulation.run([*base, "rounds=3", f"hydra.run.dir={tmp_path / 'a'}"])
    metrics = rows(straight)
    assert [r["round"] for r in metrics] == [0, 1, 2, 3]
    for r in metrics[1:]:
        assert r["failures"] == 0 and r["clients"] == 2, r  # every client could catch up
        assert 0 < r["bytes_up"] / r["clients"] < (300 if r["round"] == 1 else 60)  # 3 scalars (+ diagnostics in round 1)
    assert metrics[-1]["eval_accuracy"] is not None
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["strategy"] == "fedkseed_pro" and summary["method"] == "zo_seed"
    simulation.run([*base, "rounds=2", f"hydra.run.dir={tmp_path / 'b'}"])
    resumed = simulation.run([*base, "rounds=3", f"hydra.run.dir={tmp_path / 'b'}", "resume=true"])
    a = load_file(str(straight / "checkpoints" / "round-0003" / "global.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "round-0003" / "global.safetensors"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert rows(tmp_path / "b")[-1]["failures"] == 0
