"""`anther-bench profile` measures this machine and writes a file that device=file reads."""

import yaml

from benchmarks.profile import main as profile_main
from simulation.cli import CONFIG_DIR
from simulation.devices import resolve
from strategies.population import DeviceConfig


def test_profile_written_here_simulates(tmp_path):
    out = tmp_path / "me.yaml"
    assert profile_main(["--name", "here", "--out", str(out), "--model", "tiny-bert", "--local-steps", "1",
                         "--batch-size", "4", "--calls", "1"]) == 0
    numbers = yaml.safe_load(out.read_text())["profiles"]["here"]
    assert numbers["flops_fp32"] > 0 and numbers["flops_quant"] > 0 and numbers["memory_mb"] > 100
    assert "Not measured" in out.read_text()
    cfg = DeviceConfig(**resolve({"name": "file", "path": str(out)}, CONFIG_DIR))
    assert cfg.shares == {"here": 1.0} and cfg.population.profiles["here"].flops_fp32 == numbers["flops_fp32"]
