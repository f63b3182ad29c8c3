"""The in-process Simulation Engine backend: Flower's engine picks it within
``use_inprocess_backend``, runs the ClientApp on copies (as Ray's serialization would),
reports a raising ClientApp as Flower's error reply; ``resources.backend`` selects it, and
a run on it gives the rows and the final state a Ray run gives."""

import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from omegaconf import open_dict

import simulation
from benchmarks.equivalence import fingerprint
from simulation import compose_config
from simulation.config import build_sim_config
from simulation.inprocess_backend import RAY_BACKEND_MODULE, use_inprocess_backend
from strategies.runconfig import ConfigError


def _validate(overrides):
    cfg = compose_config(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return build_sim_config(cfg, Path("/tmp/anther-cfg-test"))


def _probe_apps(fail_partition: int | None = None):
    """A ServerApp that queries every node twice with one shared RecordDict, and a
    ClientApp that mutates what it gets and counts its calls in its Context."""
    seen: dict = {"calls": [], "replies": []}
    client = ClientApp()

    @client.query()
    def _query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        calls = int(context.state["n"]["calls"]) + 1 if "n" in context.state.config_records else 1
        context.state["n"] = ConfigRecord({"calls": calls})
        seen["calls"].append((pid, os.getpid(), threading.get_ident(), torch.rand(1).item()))
        msg.content["config"]["op"] = "mutated by the client"  # must not reach the server or other nodes
        if pid == fail_partition and calls == 2:
            raise RuntimeError("simulated device crash")
        return Message(RecordDict({"m": MetricRecord({"pid": pid, "calls": calls})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        while len(list(grid.get_node_ids())) < 3:  # the engine registers the nodes as it starts
            time.sleep(0.05)
        for _ in range(2):
            shared = RecordDict({"config": ConfigRecord({"op": "hello"})})
            msgs = [Message(shared, dst_node_id=n, message_type="query") for n in grid.get_node_ids()]
            seen["replies"].append(list(grid.send_and_receive(msgs, timeout=60)))
            seen["op_after"] = shared["config"]["op"]

    return server, client, seen


def test_flower_runs_the_clientapp_in_this_process_on_copies():
    before = sys.modules.get(RAY_BACKEND_MODULE)
    server, client, seen = _probe_apps(fail_partition=1)
    torch.manual_seed(0)
    expected_rng = torch.get_rng_state()
    with use_inprocess_backend() as built:
        run_simulation(server_app=server, client_app=client, num_supernodes=3, backend_name="inprocess")
    assert sys.modules.get(RAY_BACKEND_MODULE) is before  # the engine's backend import is restored
    assert len(built) == 1 and built[0].calls == 6
    assert {pid for _, pid, _, _ in seen["calls"]} == {os.getpid()}
    assert threading.get_ident() not in {t for _, _, t, _ in seen["calls"]}  # the engine's worker thread
    assert torch.equal(torch.get_rng_state(), expected_rng)  # the clients' draws did not move the caller's generator
    assert seen["op_after"] == "hello"  # the client mutated its own copy only
    first, second = seen["replies"]
    assert sorted(r.content["m"]["pid"] for r in first) == [0, 1, 2]
    assert all(r.content["m"]["calls"] == 1 for r in first)  # each node's Context was its own
    errors = [r for r in second if r.has_error()]
    assert len(errors) == 1 and errors[0].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "simulated device crash" in errors[0].error.reason
    assert sorted(r.content["m"]["calls"] for r in second if not r.has_error()) == [2, 2]


def test_backend_choice_and_auto_rule():
    assert _validate(["experiment=smoke"]).backend == "inprocess"  # 3 clients per round
    assert _validate([]).backend == "ray"  # the default run: 5 per round
    assert _validate(["experiment=smoke", "resources.client_gpus=0.5"]).backend == "ray"
    assert _validate(["experiment=smoke", "resources.backend=ray"]).backend == "ray"
    assert _validate(["resources.backend=inprocess"]).backend == "inprocess"
    with pytest.raises(ConfigError) as err:
        _validate(["resources.backend=threads"])
    assert "resources.backend='threads' is not known; valid choices: auto, inprocess, ray" in str(err.value)


@pytest.mark.integration
@pytest.mark.slow  # 130 s on 2 cores (Ray start-up); run with -m slow
def test_inprocess_run_equals_ray_run(tmp_path, caplog):
    """Same seed, same rows (less the measured fields) and the same final checkpoint, when
    clients compute with the same threads: a Ray worker gets ``resources.client_cpus``
    threads, in-process clients the driver's (float sums depend on the thread count)."""
    import torch

    caplog.set_level(logging.INFO, logger="anther.phase")
    runs = {}
    threads = f"resources.client_cpus={torch.get_num_threads()}"
    for backend in ("ray", "inprocess"):
        run_dir = simulation.run(["experiment=smoke", "rounds=2", f"resources.backend={backend}", threads,
                                  f"hydra.run.dir={tmp_path / backend}"])
        runs[backend] = fingerprint(run_dir)
        where = "in this process" if backend == "inprocess" else "on Ray"
        assert any(f"SuperNodes {where}" in r.getMessage() for r in caplog.records)
        caplog.clear()
    assert [r["round"] for r in runs["ray"]["rows"]] == [0, 1, 2]
    assert runs["inprocess"] == runs["ray"]
