"""Hydra config -> typed, validated dataclasses and Flower's flat run_config.

This is the only place that sees a ``DictConfig``. Every group is turned into its
frozen dataclass; all problems found are reported together in one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from client.config import ClientConfig, DataConfig, MethodConfig, ModelConfig, PartitionConfig, QuantConfig
from server.config import ServerConfig
from strategies.config import StrategyConfig
from strategies.runconfig import ConfigError, check, flatten

TOP_LEVEL_KEYS = (
    "model quant data partition method strategy codec device num_clients clients_per_round "
    "rounds local_steps batch_size lr seed eval_every resume"
).split()


@dataclass(frozen=True)
class DeviceProfile:
    """Resources one simulated client gets from the Simulation Engine."""

    name: str = "cpu"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    malloc_mmap_threshold: int = 0  # > 0: glibc returns freed tensors >= this many bytes at once

    def __post_init__(self) -> None:
        check(self.client_cpus > 0, "device.client_cpus", "a number > 0", self.client_cpus)
        check(self.client_gpus >= 0, "device.client_gpus", "a number >= 0", self.client_gpus)


@dataclass(frozen=True)
class SimConfig:
    """Everything a simulation run needs."""

    client: ClientConfig
    server: ServerConfig
    device: DeviceProfile

    def run_config(self) -> dict[str, Any]:
        """Flower run_config (flat) shared by the ServerApp and every ClientApp."""
        return {**flatten(self.client), **flatten(self.server)}


def _make(cls: type, node: Any, key: str, errors: list[str], rename: dict[str, str] | None = None) -> Any:
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    for src, dst in (rename or {}).items():
        if src in raw:
            raw[dst] = raw.pop(src)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        errors.append(f"{key}: unknown field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
        raw = {k: v for k, v in raw.items() if k in fields}
    for k, v in raw.items():
        if isinstance(v, list):
            raw[k] = tuple(v)
    try:
        return cls(**raw)
    except (ConfigError, TypeError, ValueError) as err:
        errors.append(str(err))
        return None


def _absolute_data_path(data: DataConfig | None) -> DataConfig | None:
    if data is None or not data.path:
        return data
    return dataclasses.replace(data, path=str(Path(data.path).expanduser().resolve()))


def build_sim_config(cfg: DictConfig, run_dir: Path) -> SimConfig:
    """Validate the composed config; raise one ConfigError listing every problem."""
    errors: list[str] = []
    unknown = sorted(set(cfg.keys()) - set(TOP_LEVEL_KEYS) - {"hydra", "experiment"})
    if unknown:
        errors.append(f"unknown top-level key(s) {unknown}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    model = _make(ModelConfig, cfg.model, "model", errors)
    quant = _make(QuantConfig, cfg.quant, "quant", errors)
    data = _absolute_data_path(_make(DataConfig, cfg.data, "data", errors))
    partition = _make(PartitionConfig, cfg.partition, "partition", errors)
    method = _make(MethodConfig, cfg.method, "method", errors)
    strategy = _make(StrategyConfig, cfg.strategy, "strategy", errors, rename={"_target_": "target"})
    device = _make(DeviceProfile, cfg.device, "device", errors)
    codec = str(cfg.codec.name) if isinstance(cfg.codec, DictConfig) else str(cfg.codec)
    scalars = {k: cfg[k] for k in ("num_clients", "local_steps", "batch_size", "lr", "seed")}
    client = server = None
    if not errors:
        try:
            client = ClientConfig(model=model, quant=quant, data=data, partition=partition, method=method, codec=codec, **scalars)
        except (ConfigError, TypeError) as err:
            errors.append(str(err))
        try:
            server = ServerConfig(
                strategy=strategy,
                num_clients=int(cfg.num_clients),
                clients_per_round=int(cfg.clients_per_round),
                rounds=int(cfg.rounds),
                local_steps=int(cfg.local_steps),
                eval_every=int(cfg.eval_every),
                seed=int(cfg.seed),
                codec=codec,
                resume=bool(cfg.resume),
                run_dir=str(run_dir.resolve()),
            )
        except (ConfigError, TypeError) as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    _check_choices(client, server)
    return SimConfig(client=client, server=server, device=device)


def _check_choices(client: ClientConfig, server: ServerConfig) -> None:
    """Registry names that only the plug-in registries know."""
    from client.backbones import BACKBONES
    from client.methods import METHODS
    from strategies.codecs import CODECS
    from strategies.registry import STRATEGIES
    from strategies.runconfig import check_choice

    check_choice("model", client.model.name, BACKBONES)
    check_choice("method", client.method.name, METHODS)
    check_choice("codec", client.codec, CODECS)
    if not server.strategy.target:
        check_choice("strategy", server.strategy.name, STRATEGIES)
        check_kinds(client.method.name, server.strategy.name)


def check_kinds(method: str, strategy: str) -> None:
    """A method's update kind must be what the strategy aggregates."""
    from client.methods import METHODS
    from strategies.registry import SEED_STRATEGIES
    from strategies.runconfig import ConfigError

    seeds_method = getattr(METHODS[method], "kind", "delta") == "seeds"
    if seeds_method and strategy not in SEED_STRATEGIES:
        raise ConfigError(
            f"method={method} sends (seed, scalar) pairs, which strategy={strategy} cannot aggregate; "
            f"use strategy={' | '.join(SEED_STRATEGIES)}"
        )
    if not seeds_method and strategy in SEED_STRATEGIES:
        raise ConfigError(
            f"strategy={strategy} aggregates (seed, scalar) pairs, but method={method} sends tensors; "
            "use method=zo_seed or method=forward_grad"
        )
