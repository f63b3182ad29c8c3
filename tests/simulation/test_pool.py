"""Clients as identities on a pool of SuperNodes (server/loop.py, ServerConfig.pool): a
population larger than the pool trains exactly as one SuperNode per client does."""

import json

import pytest

import simulation
from simulation.runner import pool_size

pytestmark = pytest.mark.integration
TINY = ["model=tiny-bert", "data.num_examples=240", "data.test_size=30", "local_steps=2", "batch_size=8",
        "num_clients=12", "clients_per_round=3", "rounds=3", "resources.backend=inprocess"]
MEASURED = ("wall_s", "client_train_s", "client_call_s", "client_peak_rss_mb")


def rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in MEASURED}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_pool_of_three_nodes_trains_twelve_clients_as_twelve_nodes_do(tmp_path):
    pooled = simulation.run([*TINY, "screen.max_resamples=0", f"hydra.run.dir={tmp_path / 'pool'}"])  # 3 nodes
    one_each = simulation.run([*TINY, "screen.max_resamples=3", f"hydra.run.dir={tmp_path / 'each'}"])  # 12 nodes
    assert rows(pooled) == rows(one_each)
    assert all(r["clients"] == 3 and r["failures"] == 0 for r in rows(pooled)[1:])


def test_pool_size_is_what_a_round_can_ask():
    from simulation import compose_config
    from simulation.config import build_sim_config
    from omegaconf import open_dict
    from pathlib import Path

    def server(*overrides):
        cfg = compose_config(list(overrides))
        with open_dict(cfg):
            del cfg["hydra"]
        return build_sim_config(cfg, Path("/tmp/anther-pool-test")).server

    big = ("num_clients=100000", "data.num_examples=200100", "clients_per_round=100")
    assert pool_size(server(*big)) == 400  # 100 x (1 + 3 re-samplings)
    assert pool_size(server(*big, "screen.max_resamples=0")) == 100
    assert pool_size(server("num_clients=10", "clients_per_round=5")) == 10  # never more than the clients
