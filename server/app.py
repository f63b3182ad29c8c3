"""The Anther ServerApp (Flower component ``server.app:app``).

It reads a :class:`~server.config.ServerConfig` from Flower's ``run_config``, builds the
strategy from the registry (or a user's ``strategy._target_``), loads the central
evaluator by import path (the server never imports client code), and runs
:func:`server.loop.run_server`. The simulator builds the same app with
:func:`build_server_app`, passing the flat config it validated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.config import ServerConfig
from server.object_pulls import shorten
from server.progress import PACKAGES
from server.loop import EvaluateFn, is_deployment_grid, run_server
from server.trackers import Trackers
from strategies.plugins import import_string
from strategies.registry import build_strategy
from strategies.dp import wrap as dp_wrap
from strategies.robust import wrap
from strategies.secagg import wrap as secagg_wrap
from strategies.runconfig import unflatten

log = logging.getLogger("anther.server")


def make_evaluate_fn(cfg: ServerConfig, run_config: dict[str, Any]) -> EvaluateFn | None:
    """Central evaluation from ``cfg.evaluator`` (``None`` when the path is empty)."""
    if not cfg.evaluator:
        return None
    factory = import_string(cfg.evaluator)
    return factory(run_config)


def main(grid: Grid, run_config: dict[str, Any], trackers: Trackers | None = None) -> dict[str, Any]:
    """Run one federation from a flat run_config; returns the summary.

    ``trackers`` (the simulator's, which also logs the report figures) receive every
    metrics row; without them, the ``logger`` of the config opens its own for the run.
    """
    cfg = unflatten(ServerConfig, run_config)
    strategy = wrap(build_strategy(cfg.strategy, seed=cfg.seed, rounds=cfg.rounds, local_steps=cfg.local_steps,
                                   run_config=run_config), cfg.robust)
    strategy = dp_wrap(strategy, cfg.dp, cfg.num_clients, cfg.clients_per_round, cfg.seed, cfg.rounds)
    strategy = secagg_wrap(strategy, cfg.secagg, cfg.seed)
    extras = {"model": run_config.get("model.name"), "method": run_config.get("method.name")}
    if trackers is not None:
        return run_server(grid, cfg, strategy, make_evaluate_fn(cfg, run_config), extras, trackers, run_config)
    own = Trackers.open(cfg.logger, Path(cfg.run_dir), run_name=Path(cfg.run_dir).name, group=cfg.logger_group or None,
                        config=run_config, resume=cfg.resume != "false")
    with own:
        summary = run_server(grid, cfg, strategy, make_evaluate_fn(cfg, run_config), extras, own, run_config)
        own.log_summary(summary)
        own.log_files([Path(cfg.run_dir) / n for n in ("summary.json", "metrics.jsonl")])
    return summary


def show_logs_on_deployment() -> None:
    """On the deployment runtime nobody configures Python logging in the ServerApp process,
    so Anther's INFO lines (a line per round, ranks, rejections' context) would be lost and
    its warnings printed bare; this prints them to stderr, which Flower streams to
    ``flwr log`` / ``anther-deploy run``. Once per process."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not any(getattr(h, "anther_deploy", False) for h in logger.handlers):
            handler = logging.StreamHandler()
            handler.anther_deploy = True
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


def build_server_app(run_config: dict[str, Any] | None = None, trackers: Trackers | None = None) -> ServerApp:
    """A ServerApp whose run_config is ``run_config`` merged over Flower's."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        if is_deployment_grid(grid):
            shorten(type(grid).__module__)  # its waits for message objects (server/object_pulls.py)
            show_logs_on_deployment()
        main(grid, {**dict(context.run_config), **(run_config or {})}, trackers)

    return app


app = build_server_app()
