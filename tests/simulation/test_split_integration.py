"""Split training end to end through Flower's real Simulation Engine on a tiny model:
SplitFed V1, V2 and U-shaped runs (exchanges and bytes in metrics.jsonl), a client that
drops out or sends bad activations mid-round, and resume equality."""

import json

import numpy as np
import pytest
from flwr.app import Array, Message
from safetensors.numpy import load_file

import simulation
from strategies.kinds import activations as sk

pytestmark = pytest.mark.integration

TINY = ["model=tiny-bert", "model.layers=3", "method=split", "method.cut=1", "data.num_examples=120",
        "data.test_size=30", "local_steps=2", "batch_size=8", "num_clients=3", "clients_per_round=3"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("variant, exchanges", [
    (["strategy=sfl_v2"], 3),
    (["strategy=sfl_v1", "method.activation_codec=int8"], 3),
    (["strategy=sfl_v2", "method.u_shaped=true"], 5),
], ids=["sfl_v2", "sfl_v1_int8", "u_shaped"])
def test_split_rounds(tmp_path, variant, exchanges):
    run_dir = simulation.run([*TINY, *variant, "rounds=2", f"hydra.run.dir={tmp_path}"])
    metrics = rows(run_dir)
    assert [r["round"] for r in metrics] == [0, 1, 2]
    for r in metrics[1:]:
        assert r["clients"] == 3 and r["failures"] == 0 and r["exchanges"] == exchanges
        assert r["server_steps"] == 3 * 2  # every client's two steps reached the server
        assert r["bytes_up"] > 8 * 10 * 64 and r["bytes_down"] > 8 * 10 * 64  # activations, not just the LoRA state
        assert r["train_loss"] > 0 and 0.0 <= r["eval_accuracy"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "split" and summary["rounds"] == 2
    assert summary["total_bytes_up"] == sum(r["bytes_up"] for r in metrics)


def _bad_activations(pid: int, out: Message) -> Message:
    """Partition 0 crashes at its second step; partition 1 sends NaN activations at its first."""
    echo = out.content.config_records.get(sk.ECHO, {})
    if pid == 0 and echo.get("reply") == sk.ACTS and echo.get("step") == 1:
        raise RuntimeError("simulated device crash mid-round")
    if pid == 1 and echo.get("reply") == sk.ACTS:
        tensors = out.content[sk.SPLIT]
        tensors[sk.HIDDEN] = Array(np.full(tensors[sk.HIDDEN].shape, np.nan, dtype=np.float32))
    return out


def test_dropped_and_bad_clients_leave_the_round(tmp_path, tampering_app, caplog):
    run_dir = simulation.run([*TINY, "strategy=sfl_v1", "rounds=1", f"hydra.run.dir={tmp_path}"],
                             client_app=tampering_app(_bad_activations))
    (row,) = rows(run_dir)[1:]
    assert row["clients"] == 3 and row["failures"] == 2 and row["examples"] > 0  # the third client was aggregated
    assert row["eval_accuracy"] is not None
    assert "rejected client 1: 'hidden' has non-finite values" in caplog.text
    assert "rejected client 0: client error" in caplog.text


def test_split_resume_equals_uninterrupted(tmp_path):
    base = [*TINY, "strategy=sfl_v2", "strategy.client_strategy=fedadam", "eval_every=0"]
    straight = simulation.run([*base, "rounds=2", f"hydra.run.dir={tmp_path / 'a'}"])
    simulation.run([*base, "rounds=1", f"hydra.run.dir={tmp_path / 'b'}"])
    resumed = simulation.run([*base, "rounds=2", "resume=true", f"hydra.run.dir={tmp_path / 'b'}"])
    a = load_file(str(straight / "checkpoints/round-0002/global.safetensors"))
    b = load_file(str(resumed / "checkpoints/round-0002/global.safetensors"))
    assert a.keys() == b.keys() and any("classifier" in k for k in a)  # the server part is in the global state
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # measured times vary; the interrupted run evaluated round 1, its last round then
    drop = ("wall_s", "client_call_s", "client_train_s", "client_peak_rss_mb", "server_s", "eval_loss", "eval_accuracy")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in rows(straight)]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in rows(resumed)]
