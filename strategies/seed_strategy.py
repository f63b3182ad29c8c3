"""Shared server side of seed-based federated methods (FedKSeed, FwdLLM).

A :class:`SeedStrategy` is a Flower Message-API ``Strategy`` whose clients never send
tensors. Per round ``t`` it

1. builds each sampled client's downlink: the round config (pool, learning rate,
   distribution, pair budget, the request's pool draws, scalar width) plus what brings
   the client to the global state after
   round ``t-1``: the history of aggregated (seed, coefficient) lists since the round
   the client last synced, or the full trainable state when that is smaller or the
   history no longer reaches back far enough;
2. validates seed replies (:func:`strategies.seeds.check_seed_reply`) against the pool
   indices it assigned to each request;
3. aggregates them into one (seed, coefficient) list and applies it to the global
   trainable state in one tiled pass (:func:`kernels.accumulate_`), appending it to
   the history.

Subclasses choose the pool per round, the learning rate schedule, which pool indices a
request uses (``assign``) and whether to ask the same clients again (``configure_followup``).
A subclass from outside the project plugs in with ``strategy=fedkseed
strategy._target_=pkg.MyStrategy`` (it gets that strategy's config).

Used in Anther's ServerApp, the round loop (``server/loop.py``) adds seeded sampling,
screening of every reply with the rejections logged and counted, the follow-up requests
(:meth:`configure_followup`), byte accounting, checkpoints and metrics rows. Used under
Flower's own ``Strategy.start`` instead, a seed strategy still screens every reply in
:meth:`aggregate_train` (rejections logged, not counted) and keeps clients in sync, but it
trains every node the grid shows, and it sends no follow-ups: FwdLLM's variance control
is off (one request per round).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from strategies import seeds as sd
from strategies import wire
from strategies.codecs import get_codec
from strategies.kinds.base import wire_record
from strategies.config import SeedConfig

log = logging.getLogger("anther.server")


class SeedStrategy(Strategy):
    """Base class; see the module docstring. ``update_kind`` tells the server loop."""

    update_kind = wire.KIND_SEEDS

    def __init__(self, cfg: SeedConfig, seed: int = 0, rounds: int = 1, local_steps: int = 1) -> None:
        self.cfg = cfg
        self.pool_seed = int(seed)
        self.rounds, self.local_steps = int(rounds), int(local_steps)
        self.history = sd.History()
        self.synced: dict[int, int] = {}  # identity -> global round its state is at
        self.current: dict[str, np.ndarray] = {}
        self._ident: dict[int, int] = {}  # node id -> identity, for this round
        self.assigned: dict[int, dict[int, np.ndarray]] = {}  # node -> request -> pool indices, this round
        self._accepted: dict[int, tuple[Message, sd.SeedReply]] = {}  # id(reply) -> (reply, parsed), this round
        self.robust: tuple[str, float] = ("none", 0.0)  # robust=clip|median for seed updates (strategies/robust.py)
        self.privacy: Any = None  # dp=server: a strategies.seeds.private.SeedPrivacy

    def coefficients(self, replies: list[sd.SeedReply], scale: float, rnd: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The round's per-seed coefficients: FedAvg's, behind ``self.robust``, or
        clipped and noised over the whole pool with ``self.privacy``."""
        if self.privacy is not None:
            return self.privacy.coefficients(replies, scale, self.cfg.num_seeds, rnd)
        rule, max_norm = self.robust
        return sd.robust_coefficients(replies, scale, rule, max_norm)

    # -- hooks for subclasses ------------------------------------------------------------
    def pool_round(self, rnd: int) -> int:
        """Which pool round ``rnd`` draws seeds from (0: one pool for the whole run)."""
        return 0

    def round_lr(self, rnd: int) -> float:
        """Client and server learning rate of round ``rnd`` (constant or linear decay)."""
        if self.cfg.lr_schedule == "linear":
            return self.cfg.lr * max(self.rounds - rnd + 1, 1) / self.rounds
        return self.cfg.lr

    def max_pairs(self) -> int:
        return self.local_steps * self.cfg.perturbations

    def round_config(self, rnd: int, ask: int) -> dict[str, Any]:
        return {
            wire.SERVER_ROUND: rnd,
            sd.POOL_SEED: self.pool_seed,
            sd.POOL_SIZE: self.cfg.num_seeds,
            sd.POOL_ROUND: self.pool_round(rnd),
            sd.LR: self.round_lr(rnd),
            sd.DIST: self.cfg.dist,
            sd.PERTURBATIONS: self.cfg.perturbations,
            sd.MAX_PAIRS: self.max_pairs(),
            sd.BASE_ROUND: rnd - 1,
            sd.ASK: ask,
            sd.BITS: self.cfg.scalar_bits,
            sd.DIAG: rnd == 1 or (self.cfg.diag_every > 0 and rnd % self.cfg.diag_every == 0),
            **({sd.BACKEND: self.cfg.kernel_backend} if self.cfg.kernel_backend != "auto" else {}),
        }

    def assign(self, rnd: int, ask: int, draw: int) -> tuple[np.ndarray, bool]:
        """The ``max_pairs()`` pool indices of one request, in the order the client uses
        them, and whether they go down explicitly (else the client regenerates them from
        the draw seed ``zo-draw``). Default: uniform, without repeats while the pool lasts."""
        return sd.draw_indices(draw, self.max_pairs(), self.cfg.num_seeds), False

    def on_round_aggregated(self, rnd: int, replies: list[sd.SeedReply]) -> None:
        """Called after each round's update is applied (statistics for the next round)."""

    def configure_followup(self, rnd: int, replies: list[Message], grid: Any) -> list[Message]:
        """Messages asking (some of) the round's clients again; empty when done."""
        return []

    # -- downlink ----------------------------------------------------------------------
    def state_bytes(self) -> int:
        return int(sum(np.asarray(v).nbytes for v in self.current.values()))

    def build_message(self, node: int, rnd: int, ask: int = 0, extra: dict[str, Any] | None = None) -> Message:
        """The downlink for ``node`` in round ``rnd`` (request number ``ask``)."""
        ident = self._ident.get(node, node)
        draw = sd.draw_seed(self.pool_seed, rnd, ident, ask)
        config = {**self.round_config(rnd, ask), sd.DRAW: draw, **(extra or {})}
        content = RecordDict({wire.WIRE: wire_record(wire.KIND_SEEDS, "fp32")})
        index, explicit = self.assign(rnd, ask, draw)
        self.assigned.setdefault(node, {})[ask] = index
        if explicit:
            content[sd.ASSIGNED] = sd.pack(index=index.astype(sd.index_dtype(self.cfg.num_seeds)))
        base = self.synced.get(ident, 0)
        entries = self.history.since(base, rnd - 1) if base <= rnd - 1 else None
        history_bytes = sum(e.nbytes for e in entries) if entries is not None else None
        if entries is not None and history_bytes <= self.state_bytes():
            config[sd.SYNC_FROM] = base
            if entries:
                content[sd.HISTORY] = sd.History.to_record(entries, self.cfg.num_seeds)
        else:
            config[sd.SYNC_FROM] = -1  # full state below
            content[wire.ARRAYS] = get_codec("fp32").encode(
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.current.items()}
            )
        content[wire.CONFIG] = ConfigRecord(config)
        return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)

    # -- Flower Strategy API -------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any) -> Iterable[Message]:
        self.current = {k: a.numpy() for k, a in arrays.items()}
        nodes = list(grid.get_node_ids())
        if server_round != getattr(self, "_configured", None):  # a round's further clients keep the first ones' requests
            self._ident, self.assigned, self._accepted, self._configured = {}, {}, {}, server_round
        self._ident.update(getattr(grid, "identity_of", {}))
        return [self.build_message(n, server_round) for n in nodes]

    def check_reply(self, server_round: int, msg: Message, ask: int | None = 0) -> tuple[sd.SeedReply | None, str | None]:
        """Validate one reply to request ``ask`` (None: any request sent to its client this
        round) and record whether its client is now in sync."""
        node = msg.metadata.src_node_id
        parsed, reason = sd.check_seed_reply(msg, server_round, self.assigned.get(node, {}), ask)
        ident = self._ident.get(node, node)
        if parsed is None:
            self.synced.pop(ident, None)  # unknown local state: send it the full state next time
        else:
            self.synced[ident] = server_round - 1
            self._accepted[id(msg)] = (msg, parsed)
        return parsed, reason

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        parsed = [self._parse(server_round, m) for m in replies]
        parsed = [p for p in parsed if p is not None]
        if not parsed:
            return None, None
        update = self.round_update(server_round, parsed)
        params = {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in self.current.items()}
        update.apply_(sd.ordered(params), self.pool_seed, self.cfg.num_seeds, self.cfg.dist, self.cfg.kernel_backend)
        self.current = {k: t.numpy() for k, t in params.items()}
        self.history.append(update, self.state_bytes())
        self.on_round_aggregated(server_round, parsed)
        metrics = MetricRecord({"unique-seeds": len(update.index), "pairs": int(sum(len(p.index) for p in parsed)),
                                **(self.privacy.account(len(self.assigned)) if self.privacy is not None else {})})
        return ArrayRecord({k: Array(v) for k, v in self.current.items()}), metrics

    def round_update(self, rnd: int, replies: list[sd.SeedReply]) -> sd.RoundUpdate:
        """FedKSeed's rule: the example-weighted average of the clients' local updates."""
        index, coeff = self.coefficients(replies, -self.round_lr(rnd) * self.cfg.server_lr, rnd)
        return sd.RoundUpdate(rnd, self.pool_round(rnd), index, coeff)

    def _parse(self, rnd: int, msg: Message) -> sd.SeedReply | None:
        """The reply as :meth:`check_reply` accepted it (decoded once), else checked now
        (under Flower's own ``Strategy.start``), a rejection logged once."""
        kept = self._accepted.get(id(msg))
        if kept is not None and kept[0] is msg:
            return kept[1]
        parsed, reason = self.check_reply(rnd, msg, None)
        if parsed is None:
            log.warning("round %d: rejected node %s: %s", rnd, msg.metadata.src_node_id, reason)
            self._accepted[id(msg)] = (msg, None)
        return parsed

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any) -> Iterable[Message]:
        return []  # central evaluation runs on the server

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info("%s: K=%d seeds, dist=%s, lr=%g", type(self).__name__, self.cfg.num_seeds, self.cfg.dist, self.cfg.lr)

    # -- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.history.state_dict(), **(self.privacy.state_dict() if self.privacy is not None else {})}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.history.load_state_dict(state)
        if self.privacy is not None:
            self.privacy.load_state_dict(state)
        self.synced = {}  # clients' processes may have restarted: resync each one
