"""Simulated devices through Flower's real Simulation Engine on a tiny model: a mix
with a deadline drops the stragglers (counted, not aggregated); bad populations are
config errors before training."""

import json

import pytest
from omegaconf import open_dict

import simulation
from simulation import compose_config
from simulation.config import build_sim_config
from strategies.runconfig import ConfigError

pytestmark = pytest.mark.integration
TINY = ["model=tiny-bert", "data.num_examples=160", "data.test_size=30", "local_steps=2", "batch_size=8",
        "resources.backend=inprocess"]
SURE = ["+device.profiles.rpi5.availability=1.0", "+device.profiles.rpi5.dropout=0.0",
        "+device.profiles.laptop.availability=1.0", "+device.profiles.laptop.dropout=0.0"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_deadline_drops_the_slow_class_and_counts_time_and_energy(tmp_path):
    """Half the clients are Pis made a million times slower: every one sampled misses the
    60 s deadline, is counted in `dropped` and not aggregated; the laptops are."""
    run_dir = simulation.run([*TINY, *SURE, "num_clients=6", "clients_per_round=4", "rounds=2", "device=mix",
                              "device.shares={rpi5: 0.5, laptop: 0.5}", "+device.profiles.rpi5.flops_fp32=1e-4",
                              "round_deadline_s=60", f"hydra.run.dir={tmp_path}"])
    elapsed = 0.0
    for r in rows(run_dir)[1:]:
        assert r["clients"] == 4 and r["unavailable"] == 0 and r["failures"] == 0
        assert r["clients_rpi5"] == 0 and r["clients_laptop"] + r["dropped"] == 4 and r["dropped"] >= 1, r
        assert r["sim_time_s"] == 60.0  # it waited for the stragglers until the deadline
        assert r["sim_energy_j"] > 0
        elapsed += r["sim_time_s"]
        assert r["sim_elapsed_s"] == pytest.approx(elapsed)


def test_trace_windows_decide_who_is_sampled(tmp_path):
    """Three laptops always there, three Pis only at the very start: round 1 samples all
    six, later rounds (simulated time has passed) only the laptops."""
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,profile,windows\n" + "".join(f"{i},laptop,\n" for i in range(3))
                     + "".join(f"{i},rpi5,0-0.000001\n" for i in range(3, 6)))
    run_dir = simulation.run([*TINY, "num_clients=6", "clients_per_round=6", "rounds=2", "device=trace",
                              f"device.path={trace}", "++device.profiles.rpi5.dropout=0", "++device.profiles.laptop.dropout=0",
                              f"hydra.run.dir={tmp_path / 'run'}"])
    first, second = rows(run_dir)[1:]
    assert (first["clients"], first["unavailable"], first["clients_rpi5"]) == (6, 0, 3)
    assert (second["clients"], second["unavailable"], second["clients_rpi5"], second["clients_laptop"]) == (3, 3, 0, 3)


def test_a_round_with_nobody_available_moves_the_clock_and_trains_nothing(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,profile,windows\n" + "".join(f"{i},laptop,100-1000\n" for i in range(3)))
    run_dir = simulation.run([*TINY, "num_clients=3", "clients_per_round=3", "rounds=2", "device=trace",
                              f"device.path={trace}", "++device.profiles.laptop.dropout=0", f"hydra.run.dir={tmp_path / 'run'}"])
    idle, trained = rows(run_dir)[1:]
    assert (idle["clients"], idle["examples"], idle["unavailable"], idle["sim_time_s"]) == (0, 0, 3, 100.0)
    assert trained["clients"] == 3 and trained["examples"] > 0 and trained["sim_elapsed_s"] > 100


def test_without_devices_rows_are_unchanged(tmp_path):
    run_dir = simulation.run([*TINY, "num_clients=3", "clients_per_round=3", "rounds=1", f"hydra.run.dir={tmp_path}"])
    (row,) = rows(run_dir)[1:]
    assert not any(k.startswith("sim_") or k.startswith("clients_") for k in row) and "dropped" not in row


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["device=mix", "device.shares={rpi5: 0.5, laptop: 0.4}"], "sum to 1"),
        (["device=mix", "device.shares={rpi9: 1.0}"], "'rpi9' is not known; valid profiles: laptop, phone-high"),
        (["device=rpi5", "round_deadline_s=0"], "round_deadline_s"),
        (["round_deadline_s=30"], "null unless the run simulates devices"),
        (["device=rpi5", "device.profiles.rpi5.uplink_mbps=-1"], "uplink_mbps: expected a number > 0"),
        (["device=file"], "device.path: a value is required"),
        (["device=file", "device.path=/no/such.yaml"], "cannot read /no/such.yaml"),
        (["device=trace"], "device.path: a value is required"),
        (["device=rpi5", "secagg=secaggplus"], "cannot leave out a straggler"),
        (["device=trace", "num_clients=2", "device.path={trace}"], "client 2 is not in this population"),
        (["device=trace", "num_clients=4", "device.path={trace}"], r"no row for client\(s\) \[3\]"),
        (["device=trace", "num_clients=3", "device.path={trace}", "device.period_s=-1"], "device.period_s"),
        (["assign=resource_aware"], "fixed unless the run simulates devices"),
        (["device=rpi5", "assign=resource_aware", "assign.local_steps=[4,2]", "assign.batch_size=[8]"],
         "as many values as assign.local_steps"),
        (["device=rpi5", "assign.local_steps=[4,2]"], "empty with assign=fixed"),
        (["device=rpi5", "assign=resource_aware", "assign.local_steps=[0]"], "integers >= 1"),
    ],
)
def test_bad_populations_are_config_errors(overrides, match, tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("client_id,profile,windows\n0,rpi5,\n1,laptop,0-10 20-30\n2,laptop,\n")
    cfg = compose_config([o.replace("{trace}", str(trace)) for o in overrides])
    with open_dict(cfg):
        del cfg["hydra"]
    with pytest.raises(ConfigError, match=match):
        build_sim_config(cfg, tmp_path)


def test_resource_aware_gives_slow_devices_fewer_steps_and_leaves_unfit_ones_out(tmp_path):
    """Pis at 1e-4 GFLOP/s would need ~3,600 s for 2 steps (0.18 GFLOP each, estimated):
    they get the second option (1 step, ~1,800 s) to meet the 2,500 s deadline; laptops
    keep the first. With assign=fixed, Pis of 10 MiB hold nothing: never sampled (`unfit`)."""
    run_dir = simulation.run([*TINY, *SURE, "num_clients=6", "clients_per_round=4", "rounds=2", "device=mix",
                              "device.shares={rpi5: 0.5, laptop: 0.5}", "++device.profiles.rpi5.flops_fp32=1e-4",
                              "assign=resource_aware", "assign.local_steps=[2,1]", "round_deadline_s=2500",
                              f"hydra.run.dir={tmp_path}"])
    for r in rows(run_dir)[1:]:
        assert r["dropped"] == 0 and r["unfit"] == 0 and r["clients"] == 4, r
        assert r["assign_rpi5_0"] == 0 and r["assign_laptop_1"] == 0, r
        assert r["assign_rpi5_1"] + r["assign_laptop_0"] == 4 and r["assign_rpi5_1"] >= 1, r
        assert r["clients_rpi5"] == r["assign_rpi5_1"]  # they made the deadline
    fixed = simulation.run([*TINY, *SURE, "num_clients=6", "clients_per_round=4", "rounds=1", "device=mix",
                            "device.shares={rpi5: 0.5, laptop: 0.5}", "++device.profiles.rpi5.memory_mb=10",
                            f"hydra.run.dir={tmp_path / 'fixed'}"])
    (r,) = rows(fixed)[1:]
    assert r["unfit"] == 3 and r["clients"] == 3 and r["assign_laptop_0"] == 3 and r["clients_rpi5"] == 0, r


def test_a_population_that_holds_no_option_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no device class can hold any configured option"):
        simulation.run([*TINY, "num_clients=4", "clients_per_round=2", "rounds=1", "device=rpi5",
                        "++device.profiles.rpi5.memory_mb=10", f"hydra.run.dir={tmp_path}"])


def test_a_deployed_run_may_let_each_node_pick_its_option(tmp_path):
    cfg = compose_config(["assign=resource_aware", "assign.batch_size=[16,8,4]"])
    with open_dict(cfg):
        del cfg["hydra"]
    sim = build_sim_config(cfg, tmp_path, deployed=True)  # what `anther-deploy run` validates
    assert sim.server.deployed and sim.run_config()["deployed"] is True
    assert not sim.server.device.active and sim.server.assign.batch_size == (16, 8, 4)
    seeds = compose_config(["assign=resource_aware", "method=zo_seed", "strategy=fedkseed"])
    with open_dict(seeds):
        del seeds["hydra"]
    with pytest.raises(ConfigError, match="only delta methods take per client"):
        build_sim_config(seeds, tmp_path, deployed=True)
