"""``anther-sim``: Hydra front end of the simulator (the only place Hydra is used).

    anther-sim                                   # embedded default, offline
    anther-sim experiment=agnews_minilm strategy=fedprox
    anther-sim -m strategy=fedavg,fedprox,fedadam partition.alpha=0.1,1.0
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from simulation.config import TOP_LEVEL_KEYS
from strategies.runconfig import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "quant", "data", "partition", "method", "strategy", "codec", "device", "experiment")


def check_override_keys(overrides: list[str]) -> None:
    """Reject unknown top-level keys with the list of valid ones (Hydra's message does not)."""
    bad = []
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~").split(".", 1)[0].split("/", 1)[0]
        if key not in TOP_LEVEL_KEYS and key not in ("hydra", "experiment"):
            bad.append(key)
    if bad:
        raise ConfigError(f"unknown key(s) {sorted(set(bad))}; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sim")
def _hydra_main(cfg: DictConfig) -> None:
    from simulation.runner import run_federation

    from client.backbones import BackboneUnavailable

    console = Console(stderr=True)
    try:
        run_federation(cfg, Path(HydraConfig.get().runtime.output_dir), console=console)
    except ConfigError as err:
        console.print(f"[bold red]config error:[/bold red] {err}")
        sys.exit(2)
    except BackboneUnavailable as err:
        console.print(f"[bold red]backbone unavailable:[/bold red] {err}")
        sys.exit(3)


def main() -> None:
    try:
        check_override_keys(sys.argv[1:])
    except ConfigError as err:
        Console(stderr=True).print(f"[bold red]config error:[/bold red] {err}")
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
