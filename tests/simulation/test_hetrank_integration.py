"""Heterogeneous LoRA ranks end to end through Flower's real Simulation Engine: a rank
mix under HetLoRA, FLoRA and FlexLoRA (each client's reply is its rank's size), and a
client replying at a rank it was not given is rejected with its reason."""

import json

import numpy as np
import pytest
from flwr.app import Array, Message

import simulation
from client.ranks import is_a, is_b

pytestmark = pytest.mark.integration

TINY = ["model=tiny-bert", "method.r=8", "method.lora_alpha=16", "method.rank_choices=[2,4,8]",
        "data.num_examples=120", "data.test_size=30", "local_steps=2", "batch_size=8", "num_clients=3",
        "clients_per_round=3"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy, options", [("hetlora", []), ("flora", []), ("flexlora", []),
                                               ("flexlora", ["strategy.average=updates"])])
def test_rank_mix_rounds(tmp_path, strategy, options):
    run_dir = simulation.run([*TINY, f"strategy={strategy}", *options, "rounds=2", f"hydra.run.dir={tmp_path}"])
    metrics = rows(run_dir)
    assert [r["round"] for r in metrics] == [0, 1, 2]
    # the three replies hold ranks 2, 4 and 8: LoRA on query/value of 2 layers (64 wide) + the head
    lora_floats = sum(2 * 2 * (64 + 64) * k for k in (2, 4, 8))
    head_floats = 3 * (64 * 4 + 4)
    for r in metrics[1:]:
        assert r["clients"] == 3 and r["failures"] == 0
        assert 4 * (lora_floats + head_floats) <= r["bytes_up"] < 4 * (lora_floats + head_floats) + 20_000
        if strategy == "flora":  # the dense merged update goes down to every client
            assert r["bytes_down"] > r["bytes_up"] + 3 * 4 * 4 * 64 * 64
        assert r["train_loss"] > 0 and 0.0 <= r["eval_accuracy"] <= 1.0


def _wrong_rank(pid: int, out: Message) -> Message:
    """Partition 0 (rank 2) replies with one component more than it was given."""
    if pid == 0:
        arrays = out.content["arrays"]
        for key in list(arrays.keys()):
            value = arrays[key].numpy()
            if is_a(key):
                arrays[key] = Array(np.concatenate([value, value[:1]], 0))
            elif is_b(key):
                arrays[key] = Array(np.concatenate([value, value[:, :1]], 1))
    return out


def test_a_reply_of_the_wrong_rank_is_rejected(tmp_path, tampering_app, caplog):
    run_dir = simulation.run([*TINY, "strategy=hetlora", "rounds=1", f"hydra.run.dir={tmp_path}"],
                             client_app=tampering_app(_wrong_rank))
    (row,) = rows(run_dir)[1:]
    assert row["clients"] == 3 and row["failures"] == 1 and row["eval_accuracy"] is not None
    assert "rejected client 0" in caplog.text and "expected (2, 64)" in caplog.text
