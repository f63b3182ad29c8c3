"""Plug-ins from outside the project: a seed strategy subclass through
``strategy._target_``, and the README's custom ClientApp (only a train handler) run as
written."""

import json
import re
import sys
from pathlib import Path

import pytest

import simulation

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
OUTSIDE = '''
from strategies.fedkseed import FedKSeed


class CountingKSeed(FedKSeed):
    """FedKSeed that records what it aggregated."""

    aggregated = []

    def on_round_aggregated(self, rnd, replies):
        super().on_round_aggregated(rnd, replies)
        type(self).aggregated.append((rnd, len(replies)))
'''


def rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_outside_seed_strategy_through_target(tmp_path, monkeypatch):
    (tmp_path / "my_strategies.py").write_text(OUTSIDE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os_pythonpath()}")
    target = "my_strategies.CountingKSeed"
    run_dir = simulation.run(
        ["experiment=smoke", "rounds=2", "method=zo_seed", "strategy=fedkseed", f"strategy._target_={target}",
         f"hydra.run.dir={tmp_path / 'run'}"]
    )
    import my_strategies

    assert my_strategies.CountingKSeed.aggregated == [(1, 3), (2, 3)]
    assert all(r["failures"] == 0 for r in rows(run_dir))
    assert json.loads((run_dir / "summary.json").read_text())["strategy"] == target


def os_pythonpath() -> str:
    import os

    return os.environ.get("PYTHONPATH", "")


def test_readme_custom_client_app_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "@app.train()" in b]
    monkeypatch.chdir(tmp_path)  # the block's run directory is Hydra's default, under ./outputs
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    (metrics,) = list(tmp_path.glob("outputs/*/*/metrics.jsonl"))
    got = rows(metrics.parent)
    assert [r["round"] for r in got] == [0, 1, 2, 3, 4]  # experiment=smoke: 4 rounds
    assert all(r["failures"] == 0 and r["clients"] == 3 for r in got[1:])
    sys.modules.pop("readme_example", None)
