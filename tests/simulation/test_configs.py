"""Every YAML under configs/ composes and validates; bad input fails before training."""

from pathlib import Path

import pytest
from omegaconf import open_dict

from simulation import compose_config
from simulation.cli import CONFIG_DIR, GROUPS, check_override_keys, group_choices
from simulation.config import build_sim_config
from strategies.runconfig import ConfigError

REQUIRED = {
    ("model", "hf"): ["model.path=/some/local/model"],
    ("data", "file"): ["data.path=x.csv"],
    ("data", "hf"): ["data.hf_name=ag_news"],
    **{("method", m): ["strategy=fedkseed"] for m in ("zo_seed", "forward_grad")},
    **{("strategy", s): ["method=zo_seed"] for s in ("fedkseed", "fedkseed_pro", "fwdllm")},
}


def _validate(overrides):
    cfg = compose_config(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return build_sim_config(cfg, Path("/tmp/anther-cfg-test"))


@pytest.mark.parametrize("group, name", [(g, n) for g in GROUPS for n in group_choices(g)])
def test_every_shipped_config_validates(group, name):
    sim = _validate([f"{group}={name}", *REQUIRED.get((group, name), [])])
    flat = sim.run_config()
    assert flat["num_clients"] == sim.server.num_clients
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())


def test_default_is_offline_pretrained_and_generated_data():
    sim = _validate([])
    assert sim.client.model.name == "minilm" and sim.client.data.source == "generated"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["method=zo_seed"], "cannot aggregate"),
        (["strategy=fwdllm"], "sends tensors"),
        (["method=zo_seed", "strategy=fedkseed", "strategy.num_seeds=0"], "num_seeds"),
        (["method=zo_seed", "strategy=fedkseed", "method.zo_eps=0"], "zo_eps"),
        (["method=zo_seed", "strategy=fedkseed", "strategy.dist=uniform"], "dist"),
        (["method=zo_seed", "strategy=fedkseed", "method.kernel_backend=cuda"], "kernel_backend"),
    ],
)
def test_seed_method_and_strategy_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _validate(overrides)


def test_experiment_overrides_root_values():
    sim = _validate(["experiment=agnews_minilm"])
    assert sim.server.num_clients == 100 and sim.server.clients_per_round == 10
    assert sim.client.partition.alpha == 0.1 and sim.client.data.test_size == 1600


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model=nope"], "model"),
        (["strategy=nope"], "strategy"),
        (["partition=nope"], "partition"),
        (["method=nope"], "method"),
        (["partition.alpha=0"], "partition.alpha"),
        (["partition.alpha=-1"], "partition.alpha"),
        (["clients_per_round=50"], "clients_per_round"),
        (["model.bogus=1"], "bogus"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _validate(overrides)


def test_unknown_group_choice_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        _validate(["model=nope"])
    assert "minilm" in str(err.value) and "tiny-bert" in str(err.value)


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="clients_per_round"):
        check_override_keys(["bogus=3"])
    check_override_keys(["rounds=3", "model.r=4", "hydra.run.dir=x", "+experiment=smoke"])


def test_config_dir_has_every_group():
    assert {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} == set(GROUPS)


def test_flower_app_run_config_matches_the_dataclasses():
    """`flwr run .` only accepts overrides of keys listed in pyproject's run config."""
    import tomllib

    from client.config import ClientConfig
    from server.config import ServerConfig
    from strategies.runconfig import flatten

    root = CONFIG_DIR.parent
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}

    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    assert set(keys(app["config"])) == set(flatten(ClientConfig())) | set(flatten(ServerConfig()))
