"""Every YAML under configs/ composes and validates; bad input fails before training."""

from pathlib import Path

import pytest
from omegaconf import open_dict

from simulation import compose_config
from simulation.cli import CONFIG_DIR, GROUPS, check_override_keys, group_choices
from simulation.config import build_sim_config
from strategies.runconfig import ConfigError

REQUIRED = {
    ("model", "hf"): ["model.path={tmp}"],  # a local folder
    ("data", "file"): ["data.path={tmp}/x.csv"],
    ("data", "hf"): ["data.hf_name=ag_news"],
    ("robust", "bulyan"): ["clients_per_round=7"],  # n >= 4f + 3
    **{("method", m): ["strategy=fedkseed"] for m in ("zo_seed", "forward_grad")},
    **{("strategy", s): ["method=zo_seed"] for s in ("fedkseed", "fedkseed_pro", "fwdllm")},
    ("method", "split"): ["strategy=sfl_v2"],
    **{("strategy", s): ["method=split"] for s in ("sfl_v1", "sfl_v2")},
    ("device", "file"): [f"device.path={CONFIG_DIR}/device/rpi5.yaml"],  # a profile file has a profile group's form
    ("device", "trace"): ["device.path={tmp}/trace.csv", "num_clients=2", "clients_per_round=2"],
    ("assign", "resource_aware"): ["device=mix"],  # assigns options to simulated devices
}


def _validate(overrides):
    cfg = compose_config(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return build_sim_config(cfg, Path("/tmp/anther-cfg-test"))


@pytest.mark.parametrize("group, name", [(g, n) for g in GROUPS for n in group_choices(g)])
def test_every_shipped_config_validates(group, name, tmp_path):
    (tmp_path / "x.csv").write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(1500)))
    (tmp_path / "trace.csv").write_text("client_id,profile,windows\n0,rpi5,\n1,laptop,0-3600\n")
    extra = [o.format(tmp=tmp_path) for o in REQUIRED.get((group, name), [])]
    sim = _validate([f"{group}={name}", *extra])
    flat = sim.run_config()
    assert flat["num_clients"] == sim.server.num_clients
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())


def test_default_is_offline_pretrained_and_generated_data():
    sim = _validate([])
    assert sim.client.model.name == "minilm" and sim.client.data.source == "generated"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["method=zo_seed"], "method=zo_seed sends seeds updates, but strategy=fedavg aggregates delta"),
        (["strategy=fwdllm"], "strategies for delta: fedadagrad"),
        (["method=split"], "strategies for activations: sfl_v1 | sfl_v2"),
        (["method=split", "strategy=sfl_v2", "method.cut=0"], "method.cut"),
        (["method=split", "strategy=sfl_v2", "method.activation_codec=int4"], "method.activation_codec"),
        (["method=zo_seed", "strategy=fedkseed", "strategy.num_seeds=0"], "num_seeds"),
        (["method=zo_seed", "strategy=fedkseed", "method.zo_eps=0"], "zo_eps"),
        (["method=zo_seed", "strategy=fedkseed", "strategy.dist=uniform"], "dist"),
        (["method=zo_seed", "strategy=fedkseed", "strategy.kernel_backend=cuda"], "kernel_backend"),
        (["experiment=agnews_hetrank", "method.rank_assignment=by_device"], "by_device needs a device population"),
    ],
)
def test_seed_method_and_strategy_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _validate(overrides)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["method=bitfit", "model=smollm2-135m"], "bitfit trains a backbone's bias terms, and smollm2-135m has none"),
        (["method=bitfit", "model=tiny-llama"], "tiny-llama has none"),
        (["method=head", "model=smollm2-135m"], "method=head trains a classification head, and smollm2-135m runs as a causal LM"),
        (["method=prompt", "method.num_virtual_tokens=500"], r"at most 448 \(minilm has 512 positions"),
        (["method=prefix", "method.num_virtual_tokens=0"], "method.num_virtual_tokens: expected an integer >= 1"),
        (["method=prefix", "method.init=vocab"], "method.init='vocab' is not known; valid choices: random, text"),
        (["method=adapter", "method.placement=middle"], "valid choices: houlsby, pfeiffer"),
        (["method=adapter", "method.adapter_layers=7"], r"at most 6 \(minilm has 6 blocks\)"),
        (["method=adapter", "+method.r=4"], "unknown key.*method.r.*valid keys: adapter_dim"),
        (["method=split", "strategy=sfl_v2", "method.cut=6"], r"\[1, 5\] \(the model has 6 blocks\)"),
    ],
)
def test_method_settings_against_the_backbone(overrides, match):
    """Checked before anything loads (``simulation.checks.check_method``)."""
    from simulation.checks import check_method

    with pytest.raises(ConfigError, match=match):
        check_method(_validate(overrides).client)


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
        (["lr=abc"], "lr: expected a number, got 'abc'"),
        (["rounds=abc"], "rounds: expected an integer, got 'abc'"),
        (["method.r=2.5"], "method.r: expected an integer, got 2.5"),
        (["quant.double_quant=maybe"], "quant.double_quant: expected true or false"),
        (["data=file"], r"data.path: a value is required \(set data.path=...\)"),
        (["+method.zo_eps=1"], r"method=lora: unknown key\(s\) method.zo_eps; valid keys: .*lora_alpha"),
        (["+strategy.proximal_mu=0.3"], r"strategy=fedavg: unknown key\(s\) strategy.proximal_mu"),
        (["+partition.classes_per_client=3"], r"partition=dirichlet: unknown key\(s\) partition.classes_per_client"),
        (["method=zo_seed", "strategy=fedkseed", "+method.perturbations=4"], r"unknown key\(s\) method.perturbations"),
        (["strategy._target_=strategies.fedkseed.FedKSeed"], "sends delta updates, but strategy=strategies.fedkseed.FedKSeed aggregates seeds"),
        (["method=zo_seed", "strategy._target_=strategies.fedkseed.FedKSeed"], "is a seed strategy; name the strategy whose config"),
        (["strategy._target_=no_such_pkg.Strategy"], "cannot import module 'no_such_pkg'"),
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


def _pyproject_run_config():
    import tomllib

    app = tomllib.loads((CONFIG_DIR.parent / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    return app["config"]


def test_flower_app_run_config_is_generated_from_configs():
    """`flwr run .` only accepts overrides of keys listed in pyproject's run config; they
    must be the configs/ defaults, names and values (regenerate: python -m simulation.appconfig)."""
    from simulation.appconfig import app_run_config

    declared = _pyproject_run_config()
    generated = app_run_config()
    assert list(declared) == list(generated)
    assert declared == generated


def test_dataclass_defaults_equal_the_yaml_defaults():
    """One source of defaults: every config class's defaults are its YAML's values."""
    import dataclasses

    from client.config import ClientConfig
    from client.methods import METHODS
    from client.partitioners import PARTITIONERS
    from server.config import ServerConfig
    from simulation.config import Resources
    from strategies.adversary import ATTACKS
    from strategies.codecs import CODECS
    from strategies.registry import STRATEGIES
    from strategies.dp import DP
    from strategies.robust import ROBUST
    from strategies.secagg import SECAGG

    sim = _validate([])
    assert sim.client == ClientConfig()
    assert dataclasses.replace(sim.server, run_dir=ServerConfig().run_dir) == ServerConfig()
    assert sim.resources == Resources()
    for group, registry in (("method", METHODS), ("strategy", STRATEGIES), ("codec", CODECS), ("partition", PARTITIONERS),
                            ("robust", ROBUST), ("attack", ATTACKS), ("dp", DP), ("secagg", SECAGG)):
        assert set(group_choices(group)) == set(registry), group  # a YAML per plug-in, a plug-in per YAML
        for name in registry:
            sim = _validate([f"{group}={name}", *REQUIRED.get((group, name), [])])
            got = getattr(sim.server if group in ("strategy", "robust", "secagg") else sim.client, group)
            assert got == registry[name].config(name=name), (group, name)


def test_run_config_round_trip_and_misplaced_keys():
    from client.config import ClientConfig
    from server.config import ServerConfig
    from strategies.runconfig import flatten, unflatten

    sim = _validate(["method=zo_seed", "strategy=fedkseed", "partition=shard", "codec=bf16", "method.zo_eps=0.01"])
    flat = sim.run_config()
    assert flat["method.zo_seed.zo_eps"] == 0.01 and flat["strategy.name"] == "fedkseed"
    assert unflatten(ClientConfig, flat) == sim.client and unflatten(ServerConfig, flat) == sim.server
    app = _pyproject_run_config()
    assert unflatten(ClientConfig, {**app, "method.name": "forward_grad"}).method.zo_eps == 0.01  # other plug-ins' keys: fine
    with pytest.raises(ConfigError, match="'method.zo_eps' is not a setting of method=lora"):
        unflatten(ClientConfig, {**flatten(ClientConfig()), "method.zo_eps": 1.0})
    with pytest.raises(ConfigError, match="run_config key 'method.lora.bogus'"):
        unflatten(ClientConfig, {**flatten(ClientConfig()), "method.lora.bogus": 1})
    with pytest.raises(ConfigError, match="rounds: expected an integer, got 'abc'"):
        unflatten(ServerConfig, {"rounds": "abc"})
