"""``anther-sim`` on a Ray cluster: a head and one worker node started with ``ray start`` on
this machine (one CPU each), ``resources.ray_address`` pointing at the head. With one CPU
per node and two clients of one CPU each per round, Flower's Ray backend places one
client actor on each node: the run uses both. Every Ray process the test started carries
a marker in its environment and is stopped at the end (never ``ray stop``, which would
stop other Ray instances on the machine too).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.deployment.flower_env import BIN, REPO, flower_env, free_port, read_rows, stop_marked

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # ~2 min: Ray's start-up twice, then a run

MARKER = "ANTHER_TEST_RAY_CLUSTER"
RUN = """
import json, sys, ray, simulation
ray.init(address=sys.argv[1], logging_level="ERROR")
nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]]
ray.shutdown()
run_dir = simulation.run(sys.argv[2:])
print(json.dumps({"nodes": nodes, "run_dir": str(run_dir)}))
"""


def test_a_run_on_a_ray_cluster_of_a_head_and_a_worker(tmp_path):
    token = uuid.uuid4().hex
    env = flower_env(**{MARKER: token, "RAY_USAGE_STATS_ENABLED": "0"})
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit AF_UNIX
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", f"--temp-dir={ray_tmp}", "--disable-usage-stats"]
    try:
        for args in (["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false"],
                     [f"--address={address}"]):
            started = subprocess.run([str(BIN / "ray"), "start", *args, *common], env=env, capture_output=True,
                                     text=True, timeout=180)
            assert started.returncode == 0, started.stdout + started.stderr
        run_dir = tmp_path / "run"
        got = subprocess.run(
            [sys.executable, "-c", RUN, address, "model=tiny-bert", "data.num_examples=120", "data.test_size=30",
             "local_steps=2", "batch_size=8", "rounds=2", "num_clients=4", "clients_per_round=2",
             f"resources.ray_address={address}", f"hydra.run.dir={run_dir}"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
        out = json.loads(got.stdout.strip().splitlines()[-1])
        assert out["nodes"] == [1.0, 1.0], out  # a head and a worker, one CPU each
        rows = read_rows(Path(out["run_dir"]) / "metrics.jsonl")
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert all(r["clients"] == 2 and r["failures"] == 0 for r in rows[1:]), rows
    finally:
        stop_marked(MARKER, token)
        shutil.rmtree(ray_tmp, ignore_errors=True)
