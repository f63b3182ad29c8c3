"""Run one federation on Flower's Simulation Engine with the real ServerApp/ClientApp.

Light to import: torch, transformers and Flower are imported inside
:func:`run_federation`, after the config is validated and Ray has been started in the
background (:mod:`simulation.workers`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from server.trackers import Trackers
from simulation.config import SimConfig, build_sim_config
from simulation.console import RunConsole
from simulation.workers import RUN_CONFIG_ENV, collect_worker_logs, start_ray, warm_worker

log = logging.getLogger("anther.sim")


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


def preflight(sim: SimConfig, run_dir: Path, rc: RunConsole) -> None:
    """Fail on bad data, partitions or backbones before any training starts."""
    from client.data_source import label_names
    from client.runtime import get_runtime
    from simulation.partition import (
        partition_stats,
        partition_train_set,
        plot_partition,
        print_partition_table,
    )

    rc.phase(f"loading the data and partitioning it over {sim.server.num_clients} clients")
    names = label_names(sim.client)
    parts = partition_train_set(sim.client)
    counts = partition_stats(parts, len(names))
    print_partition_table(counts, names, console=rc.console)
    plot_partition(counts, names, run_dir / "partition.png")
    rc.phase(f"loading the backbone {sim.client.model.name}" + (f" ({sim.client.quant.mode})" if sim.client.quant.mode != "none" else ""))
    get_runtime(sim.client, len(names))  # loads (and caches) the backbone: offline errors surface here


def quiet_third_party() -> None:
    """Keep the console for Anther's progress and errors (simulation workers inherit this)."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@contextmanager
def flower_logs_to_run_log() -> Iterator[None]:
    """Flower prints through its own console handler; for the run, its records go only
    where the root logger sends them (the run log; the console with ``-v``)."""
    flwr_logger = logging.getLogger("flwr")
    own = [h for h in flwr_logger.handlers if type(h).__name__ == "ConsoleHandler"]
    for h in own:
        flwr_logger.removeHandler(h)
    try:
        yield
    finally:
        for h in own:
            flwr_logger.addHandler(h)


def open_trackers(cfg: DictConfig, sim: SimConfig, run_dir: Path) -> Trackers:
    """The run's trackers (``logger=``); a sweep's runs share their group."""
    try:
        name = str(run_dir.resolve().relative_to(Path.cwd()))
    except ValueError:
        name = str(run_dir)
    return Trackers.open(
        sim.server.logger, run_dir, run_name=name, group=sim.server.logger_group or None,
        config=OmegaConf.to_container(cfg, resolve=True), resume=sim.server.resume != "false",
    )


def backend_config(sim: SimConfig, verbose: bool = False) -> dict[str, Any]:
    """Ray's settings; the workers' own output reaches the console only when verbose."""
    init_args: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": verbose}
    if sim.resources.ray_address:  # an existing cluster: its own dashboard and system settings
        init_args["address"] = sim.resources.ray_address
    else:
        init_args["include_dashboard"] = False
    return {
        "client_resources": {"num_cpus": sim.resources.client_cpus, "num_gpus": sim.resources.client_gpus},
        "init_args": init_args,
    }


def worker_env(sim: SimConfig, flat: dict[str, Any]) -> None:
    """What every simulation worker reads at its start (set before Ray starts)."""
    os.environ[RUN_CONFIG_ENV] = json.dumps(flat)
    if sim.resources.malloc_mmap_threshold > 0:  # read by glibc at start of every worker process
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(sim.resources.malloc_mmap_threshold)
    quiet_third_party()


@contextmanager
def engine_backend(backend: str) -> Iterator[None]:
    """Flower's Simulation Engine runs the ClientApp on ``backend`` within the block:
    Ray (Flower's own), or in this process (:mod:`simulation.inprocess_backend`, whose
    clients build their runtime as the engine starts, as warm Ray workers do)."""
    if backend != "inprocess":
        yield
        return
    from simulation.inprocess_backend import use_inprocess_backend

    with use_inprocess_backend(setup=warm_worker) as built:
        yield
    if not built:
        log.warning("Flower ran its own backend instead of the in-process one (has Flower changed how it picks it?)")


def pool_size(server: Any) -> int:
    """SuperNodes of a simulation: as many as a round can ask (its clients, over-selected,
    and the further clients of ``screen.max_resamples`` re-samplings), at most one per
    client. Clients are identities carried by the messages (``ServerConfig.pool``)."""
    per_round = math.ceil(server.clients_per_round * (1 + server.device.over_select))
    return min(server.num_clients, per_round * (1 + server.screen.max_resamples))


def run_federation(
    cfg: DictConfig, run_dir: Path, client_app: Any = None, console: RunConsole | None = None, sim: SimConfig | None = None
) -> Path:
    """Validate ``cfg`` (unless ``sim``, its validated form, is given), run the
    federation, write the run directory; return it."""
    rc = console or RunConsole()
    console = rc.console
    run_dir = Path(run_dir)
    sim = sim or build_sim_config(cfg, run_dir)
    # Anther's ClientApp takes its identity from the message; a user's may read node_config, and split training
    # and error-feedback codecs keep a client's state between rounds on its node: one node per client for those
    keeps_state = sim.client.method.name == "split" or sim.server.codec.name == "topk"
    pool = pool_size(sim.server) if client_app is None and not keeps_state else 0
    sim = dataclasses.replace(sim, server=dataclasses.replace(sim.server, pool=pool))
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]anther-sim[/bold] {sim.client.model.name} · {sim.client.method.name} · "
        f"{sim.server.strategy.target or sim.server.strategy.name} · {sim.server.num_clients} clients, "
        f"{sim.server.clients_per_round}/round, {sim.server.rounds} rounds → {run_dir}"
    )
    flat = sim.run_config()
    worker_env(sim, flat)
    backend = sim.backend
    rc.phase("importing torch, transformers and Flower")
    from flwr.simulation import run_simulation

    from client.app import build_client_app, with_anther_queries
    from server.app import build_server_app
    from simulation.report import write_report

    session = None
    if backend == "ray" and sim.resources.warm_workers:
        rc.phase("starting Ray and its workers (each imports the same and loads the backbone)")
        session = start_ray(backend_config(sim, rc.verbose)["init_args"], client_cpus=sim.resources.client_cpus)

    write_run_info(cfg, sim, run_dir)
    preflight(sim, run_dir, rc)
    if sim.server.device.active:
        from client.data_source import label_names
        from simulation.assign_plan import plan_assignment

        rc.phase(f"estimating each device class's memory and time (assign={sim.server.assign.name})")
        sim = plan_assignment(sim, run_dir, len(label_names(sim.client)), say=console.print)
        flat = sim.run_config()
    trackers = open_trackers(cfg, sim, run_dir)
    where = "in this process (resources.backend=inprocess)" if backend == "inprocess" else "on Ray"
    nodes = sim.server.pool or sim.server.num_clients
    rc.phase(f"starting the Simulation Engine: {sim.server.num_clients} clients on {nodes} SuperNodes {where}")
    try:
        with flower_logs_to_run_log(), engine_backend(backend):
            run_simulation(
                server_app=build_server_app(flat, trackers=trackers),
                client_app=with_anther_queries(client_app, flat) if client_app is not None else build_client_app(flat),
                num_supernodes=nodes,
                backend_name=backend,
                backend_config=backend_config(sim, rc.verbose),
                verbose_logging=False,
            )
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            raise RuntimeError(f"the simulation ended without writing {summary_path}; see {run_dir / 'cli.log'}")
        summary = json.loads(summary_path.read_text())
        write_report(run_dir, title=f"{summary['model']} · {summary['method']} · {summary['strategy']}")
        trackers.log_summary(summary)
        trackers.log_files([run_dir / n for n in ("report.png", "partition.png", "config.yaml", "summary.json", "metrics.jsonl")])
    except BaseException:
        trackers.close(failed=True)
        raise
    finally:
        collect_worker_logs(session, run_dir / "workers.log")
    trackers.close()
    acc = summary.get("final_eval_accuracy")
    console.print(
        f"done: final accuracy {acc if acc is None else f'{acc:.4f}'} · up {summary['total_bytes_up'] / 2**20:.2f} MiB · "
        f"down {summary['total_bytes_down'] / 2**20:.2f} MiB · {summary['wall_s']:.1f} s → {run_dir}"
    )
    return run_dir
