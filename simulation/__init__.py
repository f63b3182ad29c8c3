"""The simulator: ``anther-sim`` and its Python entry :func:`run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run", "compose_config"]


def compose_config(overrides: list[str]):
    """Compose the ``anther-sim`` config with Hydra's compose API (no run dir, no chdir)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from simulation.cli import CONFIG_DIR, check_override_keys
    from strategies.runconfig import ConfigError

    check_override_keys(list(overrides))
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("sim", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err)) from err


def run(overrides: list[str], client_app: Any = None) -> Path:
    """Do what ``anther-sim`` does; return the run directory.

    Parameters
    ----------
    overrides : list[str]
        Hydra overrides, e.g. ``["model=tiny-bert", "rounds=2", "hydra.run.dir=/tmp/r"]``.
    client_app : flwr.clientapp.ClientApp, optional
        A ClientApp to run instead of Anther's (custom or adversarial clients). It can
        read the run config from ``os.environ["ANTHER_RUN_CONFIG"]`` (JSON).
    """
    from omegaconf import OmegaConf, open_dict

    from simulation.config import build_sim_config

    cfg = compose_config(overrides)
    run_dir = Path(OmegaConf.select(cfg, "hydra.run.dir"))
    with open_dict(cfg):
        del cfg["hydra"]
    sim = build_sim_config(cfg, run_dir)  # before any heavy import

    from simulation.runner import run_federation

    return run_federation(cfg, run_dir, client_app=client_app, sim=sim)
