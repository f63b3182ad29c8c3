"""Adversaries through Flower's real Simulation Engine on a tiny model: crafted replies
take the ClientApp's own path, and the server rejects or absorbs them."""

import json

import pytest

import simulation
from simulation.config import build_sim_config
from strategies.runconfig import ConfigError

pytestmark = pytest.mark.integration
TINY = ["model=tiny-bert", "data.num_examples=160", "data.test_size=30", "local_steps=2", "batch_size=8",
        "resources.backend=inprocess"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fuzzing_clients_are_all_rejected_and_the_run_goes_on(tmp_path, caplog):
    """A quarter of the population sends a malformed reply every round it is sampled:
    each is rejected with a reason, the honest ones are aggregated."""
    run_dir = simulation.run([*TINY, "num_clients=8", "clients_per_round=8", "rounds=2", "attack=fuzz",
                              "attack.fraction=0.25", f"hydra.run.dir={tmp_path}"])
    for r in rows(run_dir)[1:]:
        assert r["attackers"] == 2 and r["rejected"] == 2 and r["failures"] == 2, r
        assert r["eval_accuracy"] is not None and r["examples"] > 0
    assert "rejected client" in caplog.text


def test_a_rejected_reply_counts_exactly_as_no_reply(tmp_path):
    """The same seeded attackers either fuzz (every reply rejected) or stay silent (no
    reply): with further clients asked until each round has four valid updates, both runs
    aggregate the same clients and end in the same global state, bit for bit."""
    from benchmarks.equivalence import fingerprint

    common = [*TINY, "num_clients=8", "clients_per_round=4", "rounds=3", "attack.fraction=0.25",
              "screen.min_valid_replies=4", "screen.max_resamples=4"]
    fuzz = fingerprint(simulation.run([*common, "attack=fuzz", f"hydra.run.dir={tmp_path / 'fuzz'}"]))
    silent = fingerprint(simulation.run([*common, "attack=silent", f"hydra.run.dir={tmp_path / 'silent'}"]))
    assert fuzz["global"] == silent["global"] and fuzz["sampler"] == silent["sampler"]
    assert sum(r.get("attackers", 0) for r in fuzz["rows"]) > 0
    for f, s in zip(fuzz["rows"], silent["rows"], strict=True):
        assert f.get("rejected", 0) == s.get("rejected", 0) == f.get("attackers", 0)  # a silent client: "client error"
        assert {k: v for k, v in f.items() if k != "bytes_up"} == {k: v for k, v in s.items() if k != "bytes_up"}


def test_scaling_attackers_behind_the_median(tmp_path):
    run_dir = simulation.run([*TINY, "num_clients=6", "clients_per_round=6", "rounds=1", "attack=scale",
                              "attack.fraction=0.34", "robust=median", "screen.norm_bound=0",
                              f"hydra.run.dir={tmp_path}"])
    (row,) = rows(run_dir)[1:]
    assert row["attackers"] == 2 and row["rejected"] == 0 and row["clients"] == 6  # the median absorbs them


def test_client_level_dp_reports_epsilon_and_rejects_unclipped_updates(tmp_path):
    """dp=client: honest clients clip, a scaling attacker does not and is rejected; the
    accountant's epsilon grows every round."""
    run_dir = simulation.run([*TINY, "num_clients=6", "clients_per_round=6", "rounds=2", "dp=client", "dp.clip=0.5",
                              "dp.noise_multiplier=1.0", "attack=scale", "attack.fraction=0.17", "screen.norm_bound=0",
                              f"hydra.run.dir={tmp_path}"])
    got = rows(run_dir)[1:]
    assert [r["rejected"] for r in got] == [r["attackers"] for r in got] and sum(r["attackers"] for r in got) > 0
    assert 0 < got[0]["epsilon"] < got[1]["epsilon"] and got[0]["dp_noise_multiplier"] == 1.0


def test_dp_on_seed_updates_reports_epsilon(tmp_path):
    run_dir = simulation.run([*TINY, "num_clients=4", "clients_per_round=2", "rounds=2", "method=zo_seed",
                              "strategy=fedkseed", "strategy.num_seeds=64", "dp=server", "dp.clip=1.0",
                              f"hydra.run.dir={tmp_path}"])
    got = rows(run_dir)[1:]
    assert 0 < got[0]["epsilon"] < got[1]["epsilon"] and got[1]["unique_seeds"] == 64  # noise on the whole pool


def _check(overrides, tmp_path):
    from simulation import compose_config
    from omegaconf import open_dict

    cfg = compose_config([*TINY, *overrides])
    with open_dict(cfg):
        del cfg["hydra"]
    return build_sim_config(cfg, tmp_path)


@pytest.mark.parametrize("overrides, match", [
    (["robust=krum", "robust.num_malicious=2", "clients_per_round=5"], r"needs n > 2f \+ 2 = 6 replies per round"),
    (["robust=bulyan", "clients_per_round=5"], r"needs n >= 4f \+ 3 = 7"),
    (["robust=median", "strategy=hetlora", "method.rank_choices=[2,4]"], "heterogeneous-rank delta"),
    (["robust=krum", "method=zo_seed", "strategy=fedkseed"], "does not apply to seed updates"),
    (["attack=scale", "attack.fraction=1.0"], r"attack.fraction: expected a number in \[0, 1\)"),
    (["attack=fuzz", "method=zo_seed", "strategy=fedkseed"], "crafts delta replies"),
    (["attack=bogus"], "unknown attack; choose one of freerider"),
    (["robust=bogus"], "unknown robust; choose one of bulyan"),
    (["dp=server", "robust=median"], "use one of them"),
    (["dp=client", "method=zo_seed", "strategy=fedkseed"], "seed updates are clipped on the server"),
    (["dp=server", "method=split", "strategy=sfl_v2"], "clips and noises equal-shaped delta or seed updates"),
    (["dp=server", "dp.noise_multiplier=-1"], "dp.noise_multiplier"),
    (["codec=int8", "method=zo_seed", "strategy=fedkseed"], "compresses delta updates"),
    (["secagg=secaggplus", "robust=median"], "cannot screen, clip or weigh single updates"),
    (["secagg=secaggplus", "dp=server"], "cannot screen, clip or weigh single updates"),
    (["secagg=secaggplus", "codec=int8"], "compressed updates do not add up"),
    (["secagg=secaggplus", "method=zo_seed", "strategy=fedkseed"], "sums equal-shaped delta updates"),
    (["secagg=secaggplus", "secagg.threshold=0"], "secagg.threshold"),
    (["screen.norm_bound=0.5"], "screen.norm_bound"),
    (["screen.min_valid_replies=0"], "screen.min_valid_replies"),
    (["screen.min_valid_replies=6", "clients_per_round=5"], "an integer <= clients_per_round=5"),
])
def test_bad_trust_settings_are_config_errors(overrides, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        _check(overrides, tmp_path)
