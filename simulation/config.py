"""Hydra config -> typed, validated dataclasses and Flower's flat run_config.

This is the only place that sees a ``DictConfig``. Every group becomes its frozen
dataclass (a plug-in group the config class of the chosen plug-in) through
:func:`strategies.runconfig.build`: an unknown or misplaced key, a value of the wrong
type or a missing required value names its key, and all problems found arrive together
in one ``ConfigError``. Then the method's update kind must be the one the strategy
aggregates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from client.config import ClientConfig, DataConfig
from server.config import ServerConfig
from simulation.checks import check_run
from simulation.devices import resolve as resolve_devices
from strategies import wire
from strategies.runconfig import ConfigError, build, check, check_choice, flatten

TOP_LEVEL_KEYS = (
    "model quant data partition method strategy codec resources device round_deadline_s assign num_clients clients_per_round "
    "rounds local_steps batch_size lr seed eval_every resume logger screen robust attack dp secagg timeout_s keep_checkpoints"
).split()
CLIENT_KEYS = ("model", "quant", "data", "partition", "method", "codec", "attack", "dp", "device", "num_clients", "local_steps", "batch_size",
               "lr", "seed")
SERVER_KEYS = ("strategy", "codec", "robust", "attack", "dp", "secagg", "screen", "device", "round_deadline_s", "assign", "num_clients", "clients_per_round", "rounds", "local_steps",
               "eval_every", "seed", "resume", "logger", "timeout_s", "keep_checkpoints")


BACKENDS = ("auto", "ray", "inprocess")
INPROCESS_MAX_CLIENTS = 4  # backend=auto: in-process when a round asks at most this many clients


@dataclass(frozen=True)
class Resources:
    """Resources one simulated client gets from the Simulation Engine, and where it runs.

    ``backend``: ``ray`` runs the ClientApp in Ray worker processes, as many at once as
    the cores hold clients of ``client_cpus`` (on this machine, or on the Ray cluster at
    ``ray_address``: ``ray start --head`` on one machine, ``ray start --address=HEAD:PORT``
    on the others, each with this Anther installed at the same path); ``inprocess`` runs it in the driver
    process, one call at a time (:mod:`simulation.inprocess_backend`: no Ray start and
    no worker imports, about 25 s less start-up on 2 cores); ``auto`` picks in-process
    for small runs (see :meth:`SimConfig.backend`).
    """

    name: str = "cpu"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    malloc_mmap_threshold: int = 0  # > 0: glibc returns freed tensors >= this many bytes at once
    backend: str = "auto"  # auto | ray | inprocess
    warm_workers: bool = True  # Ray: Anther starts Ray; workers import and load the backbone as they start
    ray_address: str = ""  # "": a Ray of this run on this machine; "HOST:PORT" or "auto": an existing Ray cluster

    def __post_init__(self) -> None:
        check(self.client_cpus > 0, "resources.client_cpus", "a number > 0", self.client_cpus)
        check(self.client_gpus >= 0, "resources.client_gpus", "a number >= 0", self.client_gpus)
        check_choice("resources.backend", self.backend, BACKENDS)
        check(not (self.ray_address and self.backend == "inprocess"), "resources.ray_address",
              "empty with resources.backend=inprocess (a Ray cluster runs clients on Ray)", self.ray_address)


@dataclass(frozen=True)
class SimConfig:
    """Everything a simulation run needs."""

    client: ClientConfig
    server: ServerConfig
    resources: Resources

    @property
    def backend(self) -> str:
        """``ray`` or ``inprocess``: ``resources.backend``, with ``auto`` resolved to
        in-process when a round asks at most ``INPROCESS_MAX_CLIENTS`` clients and none
        asks for a GPU share (there Ray's start-up is most of the run, and parallel
        workers would gain little), else Ray."""
        if self.resources.backend != "auto":
            return self.resources.backend
        if self.resources.ray_address:
            return "ray"
        small = self.server.clients_per_round <= INPROCESS_MAX_CLIENTS and self.resources.client_gpus == 0
        return "inprocess" if small else "ray"

    def run_config(self) -> dict[str, Any]:
        """Flower run_config (flat) shared by the ServerApp and every ClientApp."""
        return {**flatten(self.client), **flatten(self.server)}


def raw_values(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain values; a value left ``???`` stays as that mark, so
    the typed build names its key. Hydra's ``strategy._target_`` becomes ``target``."""
    raw = OmegaConf.to_container(cfg, resolve=True)
    raw.pop("hydra", None)
    if isinstance(raw.get("strategy"), dict) and "_target_" in raw["strategy"]:
        raw["strategy"]["target"] = raw["strategy"].pop("_target_")
    return raw


def _absolute_data_path(data: DataConfig) -> DataConfig:
    if not data.path:
        return data
    return dataclasses.replace(data, path=str(Path(data.path).expanduser().resolve()))


def build_sim_config(cfg: DictConfig, run_dir: Path, group: str = "", deployed: bool = False) -> SimConfig:
    """Validate the composed config and what it points at (data, model, run directory;
    :mod:`simulation.checks`) without heavy imports; raise one ConfigError listing every
    problem. ``deployed``: for ``anther-deploy run`` (``ServerConfig.deployed``)."""
    errors: list[str] = []
    raw = raw_values(cfg)
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS) - {"experiment"})
    if unknown:
        errors.append(f"unknown top-level key(s) {unknown}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    from simulation.cli import CONFIG_DIR

    try:
        raw["device"] = resolve_devices(raw.get("device"), CONFIG_DIR, int(raw.get("num_clients") or 0))
    except ConfigError as err:
        errors.append(str(err))
        raw.pop("device", None)
    client = build(ClientConfig, {k: raw[k] for k in CLIENT_KEYS if k in raw}, errors=errors)
    server_raw = {k: raw[k] for k in SERVER_KEYS if k in raw}
    server = build(ServerConfig, {**server_raw, "run_dir": str(run_dir.resolve()), "logger_group": group,
                                  "deployed": deployed}, errors=errors)
    resources = build(Resources, raw.get("resources", {}), "resources.", errors=errors)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(dict.fromkeys(errors)))
    client = dataclasses.replace(client, data=_absolute_data_path(client.data))
    check_kinds(client, server)
    check_run(client, server, server.logger)
    return SimConfig(client=client, server=server, resources=resources)


def check_kinds(client: ClientConfig, server: ServerConfig) -> None:
    """The method's update kind must be the one the strategy aggregates."""
    from client.methods import METHODS
    from strategies.registry import STRATEGIES, check_target, strategy_kind

    method = METHODS[client.method.name]
    strategy = server.strategy.target or server.strategy.name
    kind = strategy_kind(server.strategy)
    if method.kind != kind:
        raise ConfigError(
            f"method={method.name} sends {method.kind} updates, but strategy={strategy} aggregates {kind} updates; "
            f"strategies for {method.kind}: {' | '.join(STRATEGIES.names(method.kind)) or '(none)'}; "
            f"methods for {kind}: {' | '.join(METHODS.names(kind)) or '(none)'}"
        )
    if server.assign.name == "resource_aware" and method.kind != wire.KIND_DELTA:
        raise ConfigError(f"assign=resource_aware gives each client its local steps and batch size, which only "
                          f"delta methods take per client; method={method.name} sends {method.kind} updates: "
                          "use assign=fixed")
    check_target(server.strategy)
