"""Ray started early, with workers that warm themselves up.

Before round 1, a simulation pays for Ray's start, for each worker importing torch,
transformers, PEFT and Flower, and for each worker loading the backbone and its data.
Done one after the other these cost several times the training of a small run. So the
driver starts Ray right after the config is validated, importing the same libraries in
a background thread meanwhile, with a worker set-up hook
that imports the client stack and builds the run's runtime (backbone + method, cached
per process) in every worker as it starts. Flower's Ray backend finds Ray running and
uses it as is (the same ``init_args`` and ``PYTHONPATH`` it would pass), so the actors
it creates land on warm workers. Any failure here only costs the time it would have
saved: Flower starts Ray itself, and a worker that could not warm up builds its runtime
on its first message, as before.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("anther.sim")
RUN_CONFIG_ENV = "ANTHER_RUN_CONFIG"  # the flat run config, for workers and user ClientApps
WARM_HOOK = "simulation.workers.warm_worker"


def worker_threads(client_cpus: float) -> dict[str, str]:
    """The thread count of a worker's math libraries: its ``client_cpus`` (Ray would set
    it per actor, but a warm worker has started torch's thread pool before that; two
    workers of two threads each on two cores ran LoRA steps 2-3x slower), unless the
    user set ``OMP_NUM_THREADS``."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, int(client_cpus)))}


def start_ray(init_args: dict[str, Any], warm: bool = True, client_cpus: float = 1.0) -> Path | None:
    """``ray.init`` as Flower's RayBackend would call it, plus the warm-up hook and
    :func:`worker_threads` (a failure is logged: Flower then starts Ray itself); returns
    Ray's session folder."""
    t0 = time.perf_counter()
    try:
        import ray

        if ray.is_initialized():
            return None
        pythonpath = os.pathsep.join(sys.path)  # as Flower's RayBackend.init_ray builds it
        if os.environ.get("PYTHONPATH"):
            pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
        os.environ["PYTHONPATH"] = pythonpath
        # workers on other machines of a cluster do not inherit this environment: what they read travels with them
        passed = {k: os.environ[k] for k in (RUN_CONFIG_ENV, "MALLOC_MMAP_THRESHOLD_", "HF_HUB_OFFLINE") if k in os.environ}
        runtime_env: dict[str, Any] = {"env_vars": {"PYTHONPATH": pythonpath, **passed, **worker_threads(client_cpus)}}
        if warm:
            runtime_env["worker_process_setup_hook"] = WARM_HOOK
        if init_args.get("address"):  # an existing cluster keeps its own system settings
            info = ray.init(runtime_env=runtime_env, **init_args)
        else:
            # no idle workers prestarted: actors get workers of their own (which warm up),
            # so prestarted ones would only compete for the cores while everything starts
            system = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}
            info = ray.init(runtime_env=runtime_env, **{"include_dashboard": False, "_system_config": system, **init_args})
        log.debug("Ray started in %.1f s", time.perf_counter() - t0)
        session = getattr(info, "address_info", {}).get("session_dir")
        return Path(session) if session else None
    except Exception as err:
        log.warning("starting Ray early failed (%s: %s); Flower starts it", type(err).__name__, err)
        return None


def collect_worker_logs(session_dir: Path | None, out: Path) -> None:
    """Append what the run's Ray workers printed (their stdout and stderr) to ``out``."""
    if session_dir is None or not (session_dir / "logs").is_dir():
        return
    parts = []
    for f in sorted((session_dir / "logs").glob("worker-*")):
        if f.suffix in (".out", ".err") and f.stat().st_size > 0:
            parts.append(f"===== {f.name}\n{f.read_text(errors='replace')}")
    if parts:
        with out.open("a") as fh:
            fh.write("\n".join(parts))


def warm_worker() -> None:
    """Ray worker set-up hook: import the client stack and build this run's runtime."""
    t0 = time.perf_counter()
    try:
        import client.handlers  # noqa: F401  (torch, transformers, Flower)
        from client.config import ClientConfig
        from client.data_source import label_names
        from client.runtime import get_runtime
        from strategies.runconfig import unflatten

        flat = os.environ.get(RUN_CONFIG_ENV)
        if flat:
            cfg = unflatten(ClientConfig, json.loads(flat))
            get_runtime(cfg, len(label_names(cfg)))
    except BaseException as err:  # the first message builds it and reports what is wrong
        log.debug("worker warm-up failed: %s: %s", type(err).__name__, err)
    log.debug("worker warm-up took %.1f s", time.perf_counter() - t0)
