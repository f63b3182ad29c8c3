"""End to end through Flower's real Simulation Engine on a tiny model."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message

import simulation
from server.metrics import ROW_KEYS

pytestmark = pytest.mark.integration

SUMMARY_KEYS = {
    "rounds", "final_eval_accuracy", "best_eval_accuracy", "total_bytes_up", "total_bytes_down",
    "wall_s", "model", "method", "strategy", "num_clients",
}
TINY = ["model=tiny-bert", "data.num_examples=120", "data.test_size=30", "local_steps=2", "batch_size=8"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_rounds_three_clients(tmp_path):
    run_dir = simulation.run([*TINY, "num_clients=3", "clients_per_round=3", "rounds=2", f"hydra.run.dir={tmp_path}"])
    metrics = rows(run_dir)
    assert [r["round"] for r in metrics] == [0, 1, 2]
    for r in metrics:
        assert set(ROW_KEYS) <= set(r)
    for r in metrics[1:]:
        assert r["clients"] == 3 and r["failures"] == 0
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0
        assert r["client_peak_rss_mb"] > 0 and r["train_loss"] > 0
        assert 0.0 <= r["eval_accuracy"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["rounds"] == 2 and summary["model"] == "tiny-bert" and summary["strategy"] == "fedavg"
    assert summary["total_bytes_up"] == sum(r["bytes_up"] for r in metrics)
    for name in ("report.png", "partition.png", "config.yaml", "run_info.json", "checkpoints/latest.json"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "run_info.json").read_text())["seed"] == 0


def _tamper(pid: int, out: Message) -> Message:
    """Partition 0 sends NaNs, partition 1 raises; the others are honest."""
    if pid == 1:
        raise RuntimeError("simulated device crash")
    if pid == 0:
        arrays = out.content["arrays"]
        out.content["arrays"] = ArrayRecord({k: Array(np.full(a.shape, np.nan, dtype=np.float32)) for k, a in arrays.items()})
    return out


def test_failures_are_counted_and_resume_continues(tmp_path, tampering_app):
    base = [*TINY, "num_clients=4", "clients_per_round=4", f"hydra.run.dir={tmp_path}"]
    simulation.run([*base, "rounds=1"], client_app=tampering_app(_tamper))
    first = rows(tmp_path)
    assert first[-1]["failures"] == 2 and first[-1]["clients"] == 4
    assert first[-1]["eval_accuracy"] is not None  # the two honest clients were aggregated
    ckpt1 = (tmp_path / "checkpoints" / "round-0001" / "global.safetensors").read_bytes()

    simulation.run([*base, "rounds=2", "resume=true"])
    metrics = rows(tmp_path)
    assert [r["round"] for r in metrics] == [0, 1, 2]
    assert metrics[1] == first[1]  # round 1 kept as it was
    assert metrics[2]["failures"] == 0
    assert (tmp_path / "checkpoints" / "round-0001" / "global.safetensors").read_bytes() == ckpt1
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 2


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    base = [*TINY, "model=tiny-llama", "model.task=classification", "num_clients=6", "clients_per_round=2", "eval_every=0"]
    straight = simulation.run([*base, "rounds=2", f"hydra.run.dir={tmp_path / 'a'}", "strategy=fedadam"])
    simulation.run([*base, "rounds=1", f"hydra.run.dir={tmp_path / 'b'}", "strategy=fedadam"])
    resumed = simulation.run([*base, "rounds=2", f"hydra.run.dir={tmp_path / 'b'}", "strategy=fedadam", "resume=true"])
    from safetensors.numpy import load_file

    a = load_file(str(straight / "checkpoints" / "round-0002" / "global.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "round-0002" / "global.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert json.loads((straight / "checkpoints/round-0002/state.json").read_text())["sampler_state"] == json.loads(
        (resumed / "checkpoints/round-0002/state.json").read_text()
    )["sampler_state"]


def test_resume_refuses_other_settings_before_touching_the_run(tmp_path):
    from strategies.runconfig import ConfigError

    base = [*TINY, "num_clients=4", "clients_per_round=2", f"hydra.run.dir={tmp_path}"]
    simulation.run([*base, "rounds=1"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError) as err:
        simulation.run([*base, "rounds=2", "resume=true", "method.r=2", "strategy=fedprox", "seed=3"])
    for key in ("method.lora.r: 8 -> 2", "strategy.name: 'fedavg' -> 'fedprox'", "seed: 0 -> 3"):
        assert key in str(err.value)
    assert "rounds" not in str(err.value).split("Differences:")[1].split("Resume with")[0]  # rounds may change
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
    with pytest.raises(ConfigError, match="num_clients: 4 -> 5"):
        simulation.run([*base, "rounds=2", "resume=auto", "num_clients=5"])
