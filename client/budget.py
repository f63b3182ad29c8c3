"""A deployed device's memory budget, checked before the model is loaded.

A SuperNode started with ``anther-deploy supernode --memory-mb M`` carries ``memory-mb=M``
in its node config (and its SuperNode runs under that cap where the OS allows it).
Before a message would load the backbone (the ``init`` query, every train message), the
client estimates the peak of the call it is asked to make — the same pre-flight estimate
the simulator plans device populations with (:mod:`client.estimate`: the model and method
traced on the meta device, nothing loaded, plus the measured runtime baseline) — and
refuses when it exceeds the budget less a margin (:data:`MARGIN`, the estimate's measured
error bound): an error reply naming the estimate, the budget and
what would lower it, counted by the server as this client's failure, instead of an
out-of-memory kill in the middle of a round. Estimates are cached per configuration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

log = logging.getLogger("anther.client")
MEMORY_KEY = "memory-mb"  # node_config key: the device's memory budget in MiB
DEVICE_KEY, GFLOPS_KEY = "device", "device-gflops"  # node_config keys: the device profile's name and fp32 GFLOP/s
MARGIN = 0.2  # the estimate's error bound as measured (docs/results.md: within 20% everywhere, at most 14% under)


def device_facts(node_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a node started with a device profile (``anther-deploy supernode --device``) tells
    the server in its "hello" reply: name, fp32 GFLOP/s and memory; None without one."""
    if DEVICE_KEY not in node_config:
        return None
    from strategies import wire

    return {wire.DEVICE_NAME: str(node_config[DEVICE_KEY]), wire.DEVICE_GFLOPS: float(node_config.get(GFLOPS_KEY, 0.0)),
            wire.DEVICE_MEMORY_MB: float(node_config.get(MEMORY_KEY, 0.0))}


class OverBudget(RuntimeError):
    """The estimated peak of a call exceeds the device's memory budget."""


@lru_cache(maxsize=16)
def _estimate(flat_json: str, num_labels: int) -> Any:
    from client.config import ClientConfig
    from client.estimate import estimate
    from strategies.runconfig import unflatten

    return estimate(unflatten(ClientConfig, json.loads(flat_json)), num_labels)


def budget_mb(node_config: dict[str, Any]) -> float | None:
    raw = node_config.get(MEMORY_KEY)
    return None if raw in (None, "", 0) else float(raw)


def call_estimate(cfg: Any, num_labels: int, batch_size: int | None = None, local_steps: int | None = None) -> Any:
    """The (cached) pre-flight estimate of one call of ``cfg`` with this batch size and
    number of local steps (None: the config's)."""
    from strategies.runconfig import flatten

    cfg = dataclasses.replace(cfg, batch_size=batch_size or cfg.batch_size, local_steps=local_steps or cfg.local_steps)
    return _estimate(json.dumps(flatten(cfg), sort_keys=True, default=str), num_labels)


def node_option(cfg: Any, num_labels: int, budget: float | None, run_config: dict[str, Any]) -> tuple[int, int] | None:
    """A deployed node's own (local steps, batch size) under ``assign=resource_aware``: the
    first of the run's options (best first, as the simulator's devices choose) whose
    estimate plus the margin fits ``budget`` MiB (no budget: the first); None when the run
    is not ``resource_aware``. Raises :class:`OverBudget` (naming every option's
    estimate) when none fits."""
    from strategies.assign import AssignConfig
    from strategies.runconfig import unflatten

    assign = unflatten(AssignConfig, run_config, "assign.")
    if assign.name != "resource_aware":
        return None
    options, tried = assign.options(cfg.local_steps, cfg.batch_size), []
    if budget is None:
        return options[0]
    for steps, batch in options:
        est = call_estimate(cfg, num_labels, batch, steps)
        if est.peak_mb * (1 + MARGIN) > budget:
            tried.append(f"{steps} steps x batch {batch}: {est.peak_mb:.0f} MiB")
            continue
        log.info("assign=resource_aware: %d local steps x batch %d (estimated peak %.0f MiB) within this device's "
                 "budget of %.0f MiB", steps, batch, est.peak_mb, budget)
        return steps, batch
    raise OverBudget(f"assign=resource_aware: no option fits this device's memory budget of {budget:.0f} MiB "
                     f"({MEMORY_KEY}) with the {MARGIN:.0%} margin; estimated peaks: {'; '.join(tried)}; add cheaper "
                     "options (assign.batch_size=[...]), quant=nf4, or a smaller model.max_length")


def check(cfg: Any, num_labels: int, budget: float, batch_size: int | None = None,
          local_steps: int | None = None) -> Any:
    """The estimate of one call of ``cfg`` (with the server's assigned batch size and local
    steps, if any); raises :class:`OverBudget` when its peak plus the margin exceeds
    ``budget`` MiB."""
    est = call_estimate(cfg, num_labels, batch_size, local_steps)
    if est.peak_mb * (1 + MARGIN) > budget:
        raise OverBudget(
            f"estimated peak {est.peak_mb:.0f} MiB + {MARGIN:.0%} margin (runtime {est.runtime_mb:.0f} + weights {est.weights_mb:.0f} + "
            f"training step {est.step_mb + est.optimizer_mb + est.copies_mb + est.dequant_mb:.0f}) exceeds this "
            f"device's memory budget of {budget:.0f} MiB ({MEMORY_KEY}); refused before loading "
            f"{cfg.model.name}: a quantized backbone (quant=nf4), a smaller batch_size or model.max_length, or a "
            "backprop-free method (method=zo_seed) lowers it")
    log.info("estimated peak %.0f MiB within this device's budget of %.0f MiB", est.peak_mb, budget)
    return est
