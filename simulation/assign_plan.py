"""Before training a device population: estimate every ``assign`` option and check that
someone can train (``strategies/assign.py``, ``client/estimate.py``).

Each option's peak memory and FLOPs come from :func:`client.estimate.estimate` (a meta
trace of one step; the client runtime baseline is measured once, ~10 s); its bytes per
round are the trainable state down and the update up (fp32). The numbers go into the
run's config (``assign.peak_mb``, ``assign.flops``, ``assign.bytes``), so the run
records what it planned with; a resumed run takes them from its recorded config rather
than measuring again, so every client keeps its option.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from server.run_identity import RUN_CONFIG_FILE
from strategies.assign import Assigner, AssignConfig
from strategies.runconfig import ConfigError

PLANNED = ("peak_mb", "flops", "bytes")


def recorded_plan(run_dir: Path, resume: str) -> dict[str, tuple] | None:
    """The estimates a run being resumed planned with (None: a fresh run, or none recorded)."""
    path = run_dir / "checkpoints" / RUN_CONFIG_FILE
    if resume == "false" or not path.is_file():
        return None
    old = json.loads(path.read_text())
    plan = {k: old.get(f"assign.{k}") for k in PLANNED}
    return {k: tuple(v) for k, v in plan.items()} if all(isinstance(v, list) and v for v in plan.values()) else None


def estimate_options(sim: Any, num_labels: int) -> AssignConfig:
    """``sim.server.assign`` with every option estimated."""
    from client.estimate import estimate

    a, client = sim.server.assign, sim.client
    options = a.options(client.local_steps, client.batch_size)
    ests = [estimate(dataclasses.replace(client, local_steps=s, batch_size=b), num_labels) for s, b in options]
    return a.with_plan([e.peak_mb for e in ests], [e.flops for e in ests], [2.0 * e.reply_bytes for e in ests],
                       client.quant.mode != "none", client.local_steps, client.batch_size)


def plan_assignment(sim: Any, run_dir: Path, num_labels: int, say=print) -> Any:
    """``sim`` with ``server.assign`` planned (unchanged without device simulation);
    ConfigError when no device class can hold any option. ``say`` gets one line per class."""
    server = sim.server
    if not server.device.active:
        return sim
    recorded = recorded_plan(run_dir, server.resume)
    if recorded is not None:
        assign = dataclasses.replace(server.assign, **recorded, quantized=sim.client.quant.mode != "none",
                                     run_local_steps=sim.client.local_steps, run_batch_size=sim.client.batch_size)
    else:
        try:
            assign = estimate_options(sim, num_labels)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - an architecture the meta trace cannot run
            if server.assign.name == "resource_aware":
                raise ConfigError(f"assign=resource_aware needs the pre-flight estimate, which failed for "
                                  f"model={sim.client.model.name}: {type(err).__name__}: {err}") from err
            say(f"  no pre-flight memory estimate ({type(err).__name__}: {err}); every class takes part")
            return sim
    assigner = Assigner(assign, server.device.population, server.round_deadline_s)
    for line in assigner.table():
        say(f"  {line}")
    assigner.check_someone_fits()
    if server.assign.name == "fixed" and any(c is None for c in assigner.choice.values()):
        say("  assign=fixed: the unfit classes never take part (assign=resource_aware offers them other options)")
    return dataclasses.replace(sim, server=dataclasses.replace(server, assign=assign))


__all__ = ["plan_assignment", "recorded_plan", "estimate_options"]
