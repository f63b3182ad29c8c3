"""SecAgg+ through Flower's real Simulation Engine: the server aggregates only the sum,
which equals plain FedAvg's within the fixed-point rounding, and a client that crashes
mid-protocol is tolerated down to the threshold."""

import json

import numpy as np
import pytest
from flwr.app import Message
from safetensors.numpy import load_file

import simulation

pytestmark = pytest.mark.integration
BASE = ["model=tiny-bert", "data.num_examples=120", "data.test_size=30", "local_steps=2", "batch_size=8",
        "num_clients=4", "clients_per_round=4", "rounds=2", "eval_every=0", "resources.backend=inprocess"]


def rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["round"] > 0]


def final(run_dir):
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["dir"]
    return load_file(str(run_dir / "checkpoints" / latest / "global.safetensors"))


def test_secure_sum_equals_plain_fedavg(tmp_path):
    """One round, so the comparison is the aggregation's alone (later rounds train from
    states a rounding apart, and Adam's normalised steps grow such differences)."""
    plain = simulation.run([*BASE, "rounds=1", f"hydra.run.dir={tmp_path / 'plain'}"])
    secure = simulation.run([*BASE, "rounds=1", "secagg=secaggplus", f"hydra.run.dir={tmp_path / 'secure'}"])
    for r in rows(secure):
        assert r["exchanges"] == 4 and r["failures"] == 0 and r["clients"] == 4, r
    p, s = rows(plain), rows(secure)
    assert [r["examples"] for r in p] == [r["examples"] for r in s]
    assert all(rs["bytes_up"] > rp["bytes_up"] for rp, rs in zip(p, s))  # keys, shares, masked vectors
    a, b = final(plain), final(secure)
    step = 2 * 1.0 / (2**24 - 1)  # one fixed-point step of secagg.clip_range=1, bits=24
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=4 * step, err_msg=k)


def test_a_client_lost_mid_protocol_is_tolerated(tmp_path, tampering_app):
    def crash(pid: int, out: Message) -> Message:
        if pid == 1 and "secagg-masked" in out.content.array_records:
            raise RuntimeError("device lost power after masking")  # it never sends its masked vector
        return out

    run_dir = simulation.run([*BASE, "rounds=1", "secagg=secaggplus", f"hydra.run.dir={tmp_path}"],
                             client_app=tampering_app(crash))
    (row,) = rows(run_dir)
    assert row["failures"] == 1 and row["examples"] > 0 and row["eval_accuracy"] is not None
