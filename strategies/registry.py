"""Registry of aggregation strategies (Flower Message-API ``Strategy`` objects).

Anther reuses Flower's own FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad and FedAvgM
as they are: they already weight by ``num-examples``, send ``proximal-mu`` and keep
server-optimizer moments. Client sampling is done by the server's seeded sampler,
which hands each strategy a grid that exposes only the sampled nodes, so every
strategy is built to take all nodes it sees (``fraction_train=1``) and to skip
federated evaluation (central evaluation runs on the server).

Adding a strategy is one config class (``strategies/config.py``), one builder and one
``STRATEGIES.add`` line. A user's own class plugs in through ``StrategyConfig.target``
(Hydra: ``strategy._target_=pkg.Class``): a :class:`~strategies.seed_strategy.SeedStrategy`
subclass is built like the registered seed strategies (with the named strategy's
config), any other Flower ``Strategy`` with the sampling keywords and ``strategy.kwargs``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from strategies import wire
from strategies.config import (
    FedAdagradConfig, FedAvgConfig, FedAvgMConfig, FedOptConfig, FedProxConfig, FwdLLMConfig, HetLoRAConfig,
    FlexLoRAConfig, HetRankConfig, SeedConfig, SplitFedConfig, StrategyConfig,
)
from strategies.plugins import Registry, import_string
from strategies.runconfig import ConfigError

# Sampling is the server's job; strategies aggregate whatever the sampled grid shows.
SAMPLING_KWARGS: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 0.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 1,
}


@dataclass(frozen=True)
class RunInfo:
    """What seed strategies derive their pool, lr schedule and pair budget from."""

    seed: int = 0
    rounds: int = 1
    local_steps: int = 1
    run_config: tuple = ()  # the flat run config as (key, value) pairs (split strategies build their server part from it)


def _flwr(name: str) -> type:
    """Flower's strategy class ``name``, imported on first build (configs stay light)."""
    return import_string(f"flwr.serverapp.strategy:{name}")


def _fedopt(cls: str) -> Any:
    return lambda cfg, run: _flwr(cls)(
        eta=cfg.eta, eta_l=cfg.eta_l, beta_1=cfg.beta_1, beta_2=cfg.beta_2, tau=cfg.tau, **SAMPLING_KWARGS
    )


def _seed(cls_path: str) -> Any:
    return lambda cfg, run: import_string(cls_path)(cfg, seed=run.seed, rounds=run.rounds, local_steps=run.local_steps)


def _split(cls_path: str) -> Any:
    return lambda cfg, run: import_string(cls_path)(cfg, run)


STRATEGIES = Registry("strategy", StrategyConfig)
DELTA, SEEDS, ACTIVATIONS = wire.KIND_DELTA, wire.KIND_SEEDS, wire.KIND_ACTIVATIONS
STRATEGIES.add("fedavg", FedAvgConfig, lambda cfg, run: _flwr("FedAvg")(**SAMPLING_KWARGS), DELTA)
STRATEGIES.add("fedprox", FedProxConfig, lambda cfg, run: _flwr("FedProx")(proximal_mu=cfg.proximal_mu, **SAMPLING_KWARGS), DELTA)
STRATEGIES.add("fedadam", FedOptConfig, _fedopt("FedAdam"), DELTA)
STRATEGIES.add("fedyogi", FedOptConfig, _fedopt("FedYogi"), DELTA)
STRATEGIES.add(
    "fedadagrad", FedAdagradConfig, lambda cfg, run: _flwr("FedAdagrad")(eta=cfg.eta, eta_l=cfg.eta_l, tau=cfg.tau, **SAMPLING_KWARGS),
    DELTA,
)
STRATEGIES.add(
    "fedavgm", FedAvgMConfig,
    lambda cfg, run: _flwr("FedAvgM")(server_learning_rate=cfg.server_lr, server_momentum=cfg.server_momentum, **SAMPLING_KWARGS),
    DELTA,
)
STRATEGIES.add("fedkseed", SeedConfig, _seed("strategies.fedkseed:FedKSeed"), SEEDS)
STRATEGIES.add("fedkseed_pro", SeedConfig, _seed("strategies.fedkseed:FedKSeedPro"), SEEDS)
STRATEGIES.add("fwdllm", FwdLLMConfig, _seed("strategies.fwdllm:FwdLLM"), SEEDS)
STRATEGIES.add("sfl_v2", SplitFedConfig, _split("strategies.split:SplitFed"), ACTIVATIONS)
STRATEGIES.add("sfl_v1", SplitFedConfig, _split("strategies.split:SplitFedV1"), ACTIVATIONS)
STRATEGIES.add("hetlora", HetLoRAConfig, _split("strategies.hetrank:HetLoRA"), DELTA)
STRATEGIES.add("flora", HetRankConfig, _split("strategies.hetrank:FLoRA"), DELTA)
STRATEGIES.add("flexlora", FlexLoRAConfig, _split("strategies.hetrank:FlexLoRA"), DELTA)
HETERO_RANK = ("hetlora", "flora", "flexlora")  # the strategies that give clients different LoRA ranks


def update_kind(strategy: Any) -> str:
    """The update kind a strategy (object or class) aggregates; Flower's own: delta."""
    return str(getattr(strategy, "update_kind", wire.KIND_DELTA))


def strategy_kind(cfg: StrategyConfig) -> str:
    """The update kind the configured strategy aggregates (imports ``cfg.target``)."""
    if cfg.target:
        return update_kind(user_strategy_class(cfg.target))
    return STRATEGIES[cfg.name].kind


def check_target(cfg: StrategyConfig) -> None:
    """A seed strategy of the user's needs a seed strategy's config beside it."""
    if cfg.target and strategy_kind(cfg) == SEEDS and not isinstance(cfg, SeedConfig):
        raise _seed_config_error(cfg.target)


def _seed_config_error(target: str) -> ConfigError:
    return ConfigError(
        f"strategy._target_={target} is a seed strategy; name the strategy whose config it takes with "
        f"strategy={' | '.join(STRATEGIES.names(SEEDS))}"
    )


def build_strategy(cfg: StrategyConfig, seed: int = 0, rounds: int = 1, local_steps: int = 1,
                   run_config: dict[str, Any] | None = None) -> Any:
    """Build the configured strategy; ``cfg.target`` (a user's class) wins over ``cfg.name``.

    ``seed``, ``rounds`` and ``local_steps`` are the run's; seed strategies derive their
    seed pool, learning-rate schedule and pair budget from them. ``run_config`` (the
    flat run config) is what split strategies build their server part from.
    """
    run = RunInfo(seed, rounds, local_steps, tuple(sorted((run_config or {}).items())))
    if cfg.target:
        return _build_user_strategy(cfg, run)
    return STRATEGIES[cfg.name].target(cfg, run)


def user_strategy_class(target: str) -> type:
    try:
        cls = import_string(target)
    except ConfigError as err:
        raise ConfigError(f"strategy._target_: {err}") from None
    from flwr.serverapp.strategy import Strategy

    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise ConfigError(f"strategy._target_={target} is not a subclass of flwr.serverapp.strategy.Strategy")
    return cls


def _build_user_strategy(cfg: StrategyConfig, run: RunInfo) -> Any:
    cls = user_strategy_class(cfg.target)
    from strategies.seed_strategy import SeedStrategy  # lazy: torch, kernels

    if issubclass(cls, SeedStrategy):
        if not isinstance(cfg, SeedConfig):
            raise _seed_config_error(cfg.target)
        args: dict[str, Any] = {"seed": run.seed, "rounds": run.rounds, "local_steps": run.local_steps, **cfg.kwargs}
        return _construct(cls, cfg.target, args, cfg)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in SAMPLING_KWARGS.items() if takes_any or k in params}
    kwargs.update(cfg.kwargs)
    return _construct(cls, cfg.target, kwargs)


def _construct(cls: type, target: str, kwargs: dict[str, Any], *args: Any) -> Any:
    try:
        return cls(*args, **kwargs)
    except TypeError as err:
        raise ConfigError(f"cannot construct {target}({kwargs}): {err}") from err
