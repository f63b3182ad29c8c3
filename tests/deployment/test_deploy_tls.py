"""``anther-deploy`` end to end on this machine: a SuperLink with TLS and node
authentication, three registered SuperNodes (two running their ClientApp warm in a process beside
the SuperNode, one with Flower's process per message), two rounds of LoRA and two of FedKSeed on a
tiny model, a node with an unregistered key refused and
logged, and every process stopped and every port freed at the end — also when a step fails.
"""

from __future__ import annotations

import json

import psutil
import pytest

from simulation.deploy import cli, procs, steps
from simulation.deploy.layout import layout
from strategies.runconfig import ConfigError
from tests.deployment.flower_env import read_rows

pytestmark = pytest.mark.integration

NODES, ROUNDS = 3, 2
TINY = ["model=tiny-bert", "data.num_examples=120", "data.test_size=30", "local_steps=2", "batch_size=8",
        f"rounds={ROUNDS}", "timeout_s=120"]
LOCAL_ENV = {"OMP_NUM_THREADS": "1"}
BUDGET_MB = 3000


def _quiet(_: str) -> None:
    pass


def _ports_of(lay) -> list[int]:
    """The SuperLink port and every SuperNode's ClientAppIo port, from what was started."""
    ports = []
    for who in procs.started(lay):
        cmd = json.loads(lay.pid(who).read_text())["cmd"]
        if "--port" in cmd:
            ports.append(int(cmd[cmd.index("--port") + 1]))
    return ports


def _assert_all_stopped(lay, pids: list[int], ports: list[int]) -> None:
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running: {alive}"
    assert not [p for p in ports if procs.listening("127.0.0.1", p)], "a port is still taken"
    assert procs.started(lay) == []


def _descendants(lay) -> list[int]:
    pids = []
    for who in procs.started(lay):
        ps = procs.recorded(lay, who)
        if ps is not None:
            pids += [ps.pid, *(c.pid for c in ps.children(recursive=True))]
    return pids


def _check_run(run_dir, strategy: str) -> list[dict]:
    rows = read_rows(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1)), rows
    for r in rows[1:]:
        assert r["clients"] == NODES and r["failures"] == 0 and r["bytes_up"] > 0, r
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["strategy"] == strategy, summary
    return rows


def test_tls_federation_with_node_auth_runs_lora_and_fedkseed_and_refuses_a_stranger(tmp_path):
    lay = layout(tmp_path / "fed")
    steps.init(lay, NODES, [], procs.free_port(), 1, force=False, say=_quiet)
    pids: list[int] = []
    ports: list[int] = []
    try:
        address = steps.superlink(lay, "127.0.0.1", None, say=_quiet, extra_env=LOCAL_ENV)
        for i in range(NODES):  # node 0 with a memory budget: its calls are estimated first; node 2 cold
            steps.supernode(lay, i, address, None, None, say=_quiet, extra_env=LOCAL_ENV,
                            memory_mb=BUDGET_MB if i == 0 else None, warm=i != NODES - 1)

        from simulation.deploy.certs import create_node_key

        stranger = tmp_path / "stranger"
        create_node_key(stranger, tmp_path / "stranger.pub")
        with pytest.raises(ConfigError, match="refused node 0 .*registered"):
            steps.supernode(lay, 0, address, None, None, say=_quiet, key=stranger, who="stranger")
        assert "No SuperNode found with the given public key" in lay.log("superlink").read_text()
        assert procs.recorded(lay, "stranger") is None

        lora = steps.run(lay, TINY, "lora", None, say=_quiet, timeout=240)
        zo = steps.run(lay, [*TINY, "strategy=fedkseed", "method=zo_seed"], "fedkseed", None, say=_quiet, timeout=240)
        pids, ports = _descendants(lay), _ports_of(lay)
        lora_rows = _check_run(lora, "fedavg")
        rows = _check_run(zo, "fedkseed")
        assert all(r["bytes_up"] < 1000 for r in rows[1:]), rows  # (seed, scalar) pairs, not tensors
        warm = lay.log("clientapp-supernode-0").read_text()
        assert f"within this device's budget of {BUDGET_MB} MiB" in warm and steps.READY in warm
        assert not lay.log(f"clientapp-supernode-{NODES - 1}").exists()  # the cold node: Flower's process per message
    finally:
        pids, ports = pids or _descendants(lay), ports or _ports_of(lay)
        steps.stop(lay, say=_quiet)
    _assert_all_stopped(lay, pids, ports)
    # the same run in the simulator counts the same bytes: messages travel packed in
    # deployment (strategies/transport_packing.py) but are counted unpacked
    import simulation

    sim = read_rows(simulation.run([*TINY, f"num_clients={NODES}", f"clients_per_round={NODES}",
                                    f"hydra.run.dir={tmp_path / 'sim'}"]) / "metrics.jsonl")
    assert [(r["bytes_up"], r["bytes_down"]) for r in sim] == [(r["bytes_up"], r["bytes_down"]) for r in lora_rows]


def test_local_stops_everything_when_a_step_fails(tmp_path, capsys):
    """A run-config key the App does not know fails `run` after the SuperLink and the
    SuperNodes started: exit 2 naming the key, and nothing left running."""
    lay = layout(tmp_path / "fed")
    seen: list[int] = []
    real_run = steps.run

    def spy(*args, **kwargs):
        seen.extend(_descendants(lay))
        seen.extend(-p for p in _ports_of(lay))  # ports, negated
        return real_run(*args, **kwargs)

    steps.run = spy
    try:
        code = cli.main(["local", str(lay.root), "--nodes", "2", "model=tiny-bert", "no_such_key=1"])
    finally:
        steps.run = real_run
    assert code == cli.EXIT_CONFIG
    assert "no_such_key" in capsys.readouterr().err
    pids, ports = [p for p in seen if p > 0], [-p for p in seen if p < 0]
    assert len(ports) == 3 and len(pids) >= 5  # SuperLink + 2 SuperNodes + their 2 ClientApp runtimes were up
    _assert_all_stopped(lay, pids, ports)
