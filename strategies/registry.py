"""Registry of aggregation strategies (Flower Message-API ``Strategy`` objects).

Anther reuses Flower's own FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad and FedAvgM
as they are: they already weight by ``num-examples``, send ``proximal-mu`` and keep
server-optimizer moments. Client sampling is done by the server's seeded sampler,
which hands each strategy a grid that exposes only the sampled nodes, so every
strategy is built to take all nodes it sees (``fraction_train=1``) and to skip
federated evaluation (central evaluation runs on the server).

Adding a strategy is one builder and one line in ``STRATEGIES``; a user's own class
plugs in through ``StrategyConfig.target`` (Hydra: ``strategy._target_=pkg.Class``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from strategies.config import StrategyConfig
from strategies.plugins import import_string
from strategies.runconfig import ConfigError, check_choice

# Sampling is the server's job; strategies aggregate whatever the sampled grid shows.
SAMPLING_KWARGS: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 0.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 1,
}


def _fedopt_kwargs(cfg: StrategyConfig) -> dict[str, Any]:
    return {"eta": cfg.eta, "eta_l": cfg.eta_l, "beta_1": cfg.beta_1, "beta_2": cfg.beta_2, "tau": cfg.tau}


def _seed_strategy(cls_path: str) -> Callable[[StrategyConfig, dict[str, int]], Strategy]:
    """Seed strategies (FedKSeed, FwdLLM) also need the run's seed, rounds and local steps."""
    return lambda cfg, run: import_string(cls_path)(cfg, **run)


STRATEGIES: dict[str, Callable[[StrategyConfig, dict[str, int]], Strategy]] = {
    "fedavg": lambda cfg, run: FedAvg(**SAMPLING_KWARGS),
    "fedprox": lambda cfg, run: FedProx(proximal_mu=cfg.proximal_mu, **SAMPLING_KWARGS),
    "fedadam": lambda cfg, run: FedAdam(**_fedopt_kwargs(cfg), **SAMPLING_KWARGS),
    "fedyogi": lambda cfg, run: FedYogi(**_fedopt_kwargs(cfg), **SAMPLING_KWARGS),
    "fedadagrad": lambda cfg, run: FedAdagrad(
        eta=cfg.eta, eta_l=cfg.eta_l, tau=cfg.tau, **SAMPLING_KWARGS
    ),
    "fedavgm": lambda cfg, run: FedAvgM(
        server_learning_rate=cfg.server_lr, server_momentum=cfg.server_momentum, **SAMPLING_KWARGS
    ),
    "fedkseed": _seed_strategy("strategies.fedkseed:FedKSeed"),
    "fedkseed_pro": _seed_strategy("strategies.fedkseed:FedKSeedPro"),
    "fwdllm": _seed_strategy("strategies.fwdllm:FwdLLM"),
}


SEED_STRATEGIES = ("fedkseed", "fedkseed_pro", "fwdllm")  # aggregate (seed, scalar) replies


def build_strategy(cfg: StrategyConfig, seed: int = 0, rounds: int = 1, local_steps: int = 1) -> Strategy:
    """Build the configured strategy; ``cfg.target`` (a user's class) wins over ``cfg.name``.

    ``seed``, ``rounds`` and ``local_steps`` are the run's; seed strategies derive their
    seed pool, learning-rate schedule and pair budget from them.
    """
    if cfg.target:
        return _build_user_strategy(cfg)
    check_choice("strategy.name", cfg.name, STRATEGIES)
    return STRATEGIES[cfg.name](cfg, {"seed": seed, "rounds": rounds, "local_steps": local_steps})


def _build_user_strategy(cfg: StrategyConfig) -> Strategy:
    cls = import_string(cfg.target)
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise ConfigError(
            f"strategy._target_={cfg.target} is not a subclass of flwr.serverapp.strategy.Strategy"
        )
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in SAMPLING_KWARGS.items() if takes_any or k in params}
    kwargs.update(cfg.kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"cannot construct {cfg.target}({kwargs}): {err}") from err
