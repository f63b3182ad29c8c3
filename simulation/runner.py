"""Run one federation on Flower's Simulation Engine with the real ServerApp/ClientApp."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from client.app import build_client_app, with_anther_queries
from client.data_source import label_names
from client.runtime import get_runtime
from server.app import build_server_app
from simulation.config import SimConfig, build_sim_config
from simulation.partition import partition_stats, partition_train_set, plot_partition, print_partition_table
from simulation.report import write_report

log = logging.getLogger("anther.sim")
RUN_CONFIG_ENV = "ANTHER_RUN_CONFIG"  # lets a user's own ClientApp read the run config


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import flwr
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "?",
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def write_run_info(cfg: DictConfig, sim: SimConfig, run_dir: Path) -> None:
    """Resolved config, flat run_config, git revision, seeds and versions."""
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "git_revision": git_revision(),
        "seed": sim.server.seed,
        "data_seed": sim.client.data.seed,
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run_config": sim.run_config(),
    }
    (run_dir / "run_info.json").write_text(json.dumps(info, indent=2))


def preflight(sim: SimConfig, run_dir: Path, console: Console) -> None:
    """Fail on bad data, partitions or backbones before any training starts."""
    names = label_names(sim.client)
    parts = partition_train_set(sim.client)
    counts = partition_stats(parts, len(names))
    print_partition_table(counts, names, console=console)
    plot_partition(counts, names, run_dir / "partition.png")
    get_runtime(sim.client, len(names))  # loads (and caches) the backbone: offline errors surface here


def quiet_third_party() -> None:
    """Keep the console for Anther's progress and errors (simulation workers inherit this)."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def backend_config(sim: SimConfig) -> dict[str, Any]:
    return {
        "client_resources": {"num_cpus": sim.device.client_cpus, "num_gpus": sim.device.client_gpus},
        "init_args": {"logging_level": "ERROR", "log_to_driver": True, "include_dashboard": False},
    }


def run_federation(cfg: DictConfig, run_dir: Path, client_app: Any = None, console: Console | None = None) -> Path:
    """Validate ``cfg``, run the federation, write the run directory; return it."""
    from flwr.simulation import run_simulation

    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    sim = build_sim_config(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(cfg, sim, run_dir)
    preflight(sim, run_dir, console)
    flat = sim.run_config()
    os.environ[RUN_CONFIG_ENV] = json.dumps(flat)
    if sim.device.malloc_mmap_threshold > 0:  # read by glibc at start of every worker process
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(sim.device.malloc_mmap_threshold)
    quiet_third_party()
    console.print(
        f"[bold]anther-sim[/bold] {sim.client.model.name} · {sim.client.method.name} · "
        f"{sim.server.strategy.target or sim.server.strategy.name} · {sim.server.num_clients} clients, "
        f"{sim.server.clients_per_round}/round, {sim.server.rounds} rounds → {run_dir}"
    )
    run_simulation(
        server_app=build_server_app(flat),
        client_app=with_anther_queries(client_app, flat) if client_app is not None else build_client_app(flat),
        num_supernodes=sim.server.num_clients,
        backend_config=backend_config(sim),
        verbose_logging=False,
    )
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without writing {summary_path}; see the log above")
    summary = json.loads(summary_path.read_text())
    write_report(run_dir, title=f"{summary['model']} · {summary['method']} · {summary['strategy']}")
    acc = summary.get("final_eval_accuracy")
    console.print(
        f"done: final accuracy {acc if acc is None else f'{acc:.4f}'} · up {summary['total_bytes_up'] / 2**20:.2f} MiB · "
        f"down {summary['total_bytes_down'] / 2**20:.2f} MiB · {summary['wall_s']:.1f} s → {run_dir}"
    )
    return run_dir
