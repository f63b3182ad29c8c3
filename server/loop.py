"""The round loop, written once for every strategy and update kind.

Per round: sample client identities (seeded) -> ``strategy.configure_train`` on a grid
that shows only them -> the update kind completes the downlink (e.g. the state encoded
with the run's codec) -> send and receive through Flower -> the kind screens and decodes
every reply (rejections are logged with the client and reason, and counted as
failures) -> the kind's follow-up requests, if any, the same way -> ``strategy.aggregate_train``
on the valid ones (those the kind aggregates) -> central evaluation every ``eval_every`` rounds -> atomic checkpoint
of the whole :class:`~server.state.ServerState` -> one ``metrics.jsonl`` row. Bytes are
counted both ways for every message of the round, and ``exchanges`` is the number of
round trips (1, or more with follow-ups: FwdLLM's extra requests, split training's steps). The loop never branches on the kind
(:mod:`strategies.kinds`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.serde import recorddict_to_proto

from server.clock import ClientWork, RoundClock, add_flops
from server.config import ServerConfig
from server.metrics import MetricsLog, write_json
from server.progress import RoundProgress
from server.run_identity import check_resumable, record_run_config
from server.screening import RoundFailed, common_metrics, norm_outliers, reply_limit_bytes, size_reason, transport_reason
from server.sampling import ClientSampler, SampledGrid
from server.state import ServerState, load_checkpoint, save_checkpoint
from server.trackers import Trackers
from strategies import wire
from strategies.assign import Assigner
from strategies.codecs import get_codec
from strategies.kinds import RoundExchange, get_kind
from strategies.kinds.delta import decode_state
from strategies.transport_packing import is_packed, pack_messages, unpack
from strategies.registry import update_kind
from strategies.state import get_strategy_state, set_strategy_state

log = logging.getLogger("anther.server")

EvaluateFn = Callable[[int, dict[str, np.ndarray]], dict[str, float]]


def payload_bytes(msg: Message) -> int:
    """Serialized size of a message's payload (its RecordDict), as sent on the wire."""
    return recorddict_to_proto(msg.content).ByteSize() if msg.has_content() else 0


def _to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()})


def _from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


@dataclass
class Federation:
    """The clients and where they run. Deployment: one SuperNode per client (identity ->
    node id, learnt with the "hello" query). A pooled simulation: identities
    ``0 .. num_clients - 1`` and a pool of SuperNodes that run whichever clients a round
    samples, each message carrying its client's identity (``pool``: the node ids)."""

    node_of: dict[int, int] = field(default_factory=dict)  # identity -> node id (deployment)
    pool: list[int] = field(default_factory=list)  # pooled: the SuperNodes' ids
    population: int = 0  # pooled: the number of clients
    devices: dict[int, dict[str, Any]] = field(default_factory=dict)  # identity -> the device profile its node declared

    @property
    def identities(self) -> list[int] | range:
        return range(self.population) if self.pool else sorted(self.node_of)

    def nodes_for(self, idents: list[int], busy: dict[int, int]) -> dict[int, int]:
        """node id -> identity for ``idents``: their own nodes, or pool nodes not ``busy`` this round."""
        if not self.pool:
            return {self.node_of[i]: i for i in idents}
        free = [n for n in self.pool if n not in busy]
        if len(free) < len(idents):
            raise RuntimeError(f"{len(idents)} clients to run on {len(free)} free SuperNodes of the pool of "
                               f"{len(self.pool)}; the simulator sizes the pool to a round's clients")
        return dict(zip(free, idents))


def with_config(msg: Message, extra: dict[str, Any]) -> None:
    """Add ``extra`` to ``msg``'s config record, in a content of its own (messages of a
    round may share one RecordDict; the records themselves are shared, not copied)."""
    content = RecordDict(dict(msg.content.items()))
    content[wire.CONFIG] = ConfigRecord({**dict(msg.content.config_records.get(wire.CONFIG, {})), **extra})
    msg.content = content


MAX_POLL_S = 0.05  # the longest wait between two pulls for replies


def is_deployment_grid(grid: Any) -> bool:
    """Whether ``grid`` is the deployment's (HTTP) Grid, whose messages travel packed."""
    http = sys.modules.get("flwr.superlink.grid.http_grid")
    return http is not None and isinstance(grid, http.HttpGrid)


def send_and_receive(grid: Any, messages: list[Message], timeout: float,
                     strays: list[tuple[Message, str]] | None = None) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` s passed.

    Flower's own ``Grid.send_and_receive`` sleeps a fixed interval between pulls: 0.1 s
    in simulation and 3 s over the deployment's HTTP ServerAppIo API, which split
    training's many round trips per round pay each time. This polls after 5 ms, backing
    off by 1.5x up to 0.05 s while nothing arrives (and back to 5 ms when something does),
    so no reply waits longer than Flower's simulation would let it.
    A reply that answers none of the pending messages, a second reply to one, or one
    from a node other than the one asked is not returned: with ``strays`` given, it goes
    there with the reason. A grid without ``push_messages`` (a test double) answers
    through its own ``send_and_receive``. On the deployment's Grid, messages travel packed
    (:mod:`strategies.transport_packing`: few objects, few requests per hop): the callers
    see, and count, the unpacked payloads.
    """
    if not hasattr(grid, "push_messages"):
        return list(grid.send_and_receive(messages, timeout=timeout))
    packing = is_deployment_grid(grid)
    if packing:
        originals = [m.content if m.has_content() else None for m in messages]
        with_content = [(m, c) for m, c in zip(messages, originals) if c is not None]
        for (m, _), packed in zip(with_content, pack_messages([c for _, c in with_content])):
            m.content = packed
    pending = set(grid.push_messages(messages))
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    if packing:
        for m, content in zip(messages, originals):
            if content is not None:
                m.content = content
    replies: list[Message] = []
    delay, end = 0.005, time.monotonic() + timeout
    while pending:
        got = []
        for reply in grid.pull_messages(list(pending)):
            reason = transport_reason(reply, pending, sent_to)
            if reason is None and packing and reply.has_content() and is_packed(reply.content):
                try:
                    reply.content = unpack(reply.content)
                except (KeyError, ValueError, TypeError) as err:
                    reason = f"undecodable packed payload ({type(err).__name__}: {err})"
                    pending.discard(reply.metadata.reply_to_message_id)
            if reason is None:
                got.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
            elif strays is not None:
                strays.append((reply, reason))
        replies += got
        if not pending or time.monotonic() >= end:
            break
        delay = 0.005 if got else min(delay * 1.5, MAX_POLL_S)
        time.sleep(min(delay, max(end - time.monotonic(), 0.0)))
    return replies


def _query(grid: Any, node_ids: Iterable[int], op: str, timeout: float, extra: dict | None = None) -> list[Message]:
    msgs = [
        Message(RecordDict({wire.CONFIG: ConfigRecord({"op": op, **(extra or {})})}), dst_node_id=n,
                message_type=MessageType.QUERY)
        for n in node_ids
    ]
    return send_and_receive(grid, msgs, timeout)


def discover(grid: Any, cfg: ServerConfig) -> Federation:
    """Wait for ``num_clients`` nodes and learn each one's identity; a pooled simulation
    (``cfg.pool``): wait for the pool's nodes, and ask nobody."""
    if cfg.pool:
        while len(node_ids := sorted(grid.get_node_ids())) < cfg.pool:
            time.sleep(0.1)
        return Federation(pool=node_ids, population=cfg.num_clients)
    log.info("asking the %d clients who they are", cfg.num_clients)
    while len(node_ids := list(grid.get_node_ids())) < cfg.num_clients:
        log.info("waiting for clients: %d of %d connected", len(node_ids), cfg.num_clients)
        time.sleep(1.0)
    fed = Federation()
    unnamed = []
    for reply in _query(grid, node_ids, "hello", cfg.timeout_s):
        node = reply.metadata.src_node_id
        if reply.has_error() or wire.METRICS not in reply.content.metric_records:
            unnamed.append(node)
            continue
        ident = reply.content[wire.METRICS].get(wire.PARTITION_ID, node)
        fed.node_of[int(ident)] = node
        if wire.DEVICE in reply.content.config_records:  # a node started with --device
            fed.devices[int(ident)] = dict(reply.content[wire.DEVICE])
    if unnamed:  # e.g. a ClientApp without Anther's query handler: its node id is its identity
        log.warning(
            "%d client node(s) did not tell their identity (no answer to the 'hello' query); sampling them by "
            "node id, which Flower draws at random per run, so their sampling is not reproducible", len(unnamed),
        )
        fed.node_of.update({n: n for n in unnamed if n not in fed.node_of})
    if not fed.node_of:
        raise RuntimeError("no client answered the hello query; check the ClientApp logs")
    return fed


def initial_state(grid: Any, fed: Federation, cfg: ServerConfig) -> dict[str, np.ndarray]:
    """Ask one client for the initial trainable state (deterministic from the run seed)."""
    reasons: list[str] = []
    for ident in fed.identities[:3] if fed.pool else fed.identities:
        (node, extra) = (fed.pool[0], {wire.CLIENT_ID: ident}) if fed.pool else (fed.node_of[ident], {})
        replies = _query(grid, [node], "init", cfg.timeout_s, extra)
        if not replies:
            log.warning("client %d did not answer the init query in %g s", ident, cfg.timeout_s)
            continue
        (reply,) = replies
        if not reply.has_error() and wire.ARRAYS in reply.content.array_records:
            return {k: v.numpy() for k, v in decode_state(reply).items()}
        if not reply.has_error():
            log.warning("client %d answered the init query without a state", ident)
            continue
        log.warning("client %d could not provide the initial state: %s", ident, reply.error.reason)
        reasons.append(reply.error.reason.splitlines()[0])
    raise RuntimeError("no client could provide the initial trainable state"
                       + (f"; the first said: {reasons[0]}" if reasons else " (none answered the init query)"))


@dataclass
class RoundTally:
    """What one round counts: clients asked (identities; node -> identity), messages,
    bytes both ways, rejected replies and all failures (rejected or missing), requests
    (``asks``), clients asked beyond the first sample (``resampled``)."""

    asked: set[int] = field(default_factory=set)
    ident_of: dict[int, int] = field(default_factory=dict)
    sent: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    failures: int = 0
    rejected: int = 0
    asks: int = 0
    resampled: int = 0
    work: dict[int, ClientWork] | None = None  # identity -> FLOPs and bytes (only when simulating devices)

    def client_work(self, node: int) -> ClientWork | None:
        """The work record of the client at ``node`` (None: not tracked, or not a client of the round)."""
        ident = self.ident_of.get(node)
        return None if ident is None or self.work is None else self.work.setdefault(ident, ClientWork())


class RoundLoop:
    """Runs rounds ``start..cfg.rounds`` of a strategy over a Flower grid."""

    def __init__(
        self, grid: Any, strategy: Any, cfg: ServerConfig, evaluate_fn: EvaluateFn | None, extras: dict[str, Any] | None = None,
        trackers: Trackers | None = None, run_config: dict[str, Any] | None = None,
    ) -> None:
        self.grid, self.strategy, self.cfg, self.evaluate_fn = grid, strategy, cfg, evaluate_fn
        self.trackers = trackers or Trackers.open((), Path(cfg.run_dir), run_name="")
        self.extras = {"strategy": cfg.strategy.target or cfg.strategy.name, "num_clients": cfg.num_clients, **(extras or {})}
        self.codec = get_codec(cfg.codec)
        self.kind = get_kind(getattr(strategy, "exchange", None) or update_kind(strategy))
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.sampler = ClientSampler(cfg.seed)
        self.run_config = dict(run_config or {})
        self.attackers = cfg.attack.attackers(cfg.num_clients, cfg.seed) if cfg.attack.name != "none" else None
        self.clock = RoundClock(cfg.device, cfg.num_clients, cfg.seed, cfg.round_deadline_s) if cfg.device.active else None
        self.assigner = (Assigner(cfg.assign, cfg.device.population, cfg.round_deadline_s)
                         if self.clock is not None and cfg.assign.planned else None)

    def _log_row(self, row: dict[str, Any]) -> None:
        self.metrics.append(row)
        self.trackers.log_row(self.metrics.rows[-1])

    # -- set-up ---------------------------------------------------------------------
    def _start_state(self, fed: Federation) -> ServerState:
        ckpt = load_checkpoint(self.ckpt_dir) if self.cfg.resume != "false" else None
        if ckpt is not None and self.run_config:
            check_resumable(self.ckpt_dir, self.run_config)
        if ckpt is None and self.run_config:
            record_run_config(self.ckpt_dir, self.run_config)
        if ckpt is not None:
            log.info("resuming from checkpoint after round %d", ckpt.round)
            set_strategy_state(self.strategy, ckpt.strategy_state)
            self.sampler.set_state(ckpt.sampler_state)
            self.metrics.truncate_after(ckpt.round)
            if self.clock is not None:  # the simulated time so far, from the rows kept
                self.clock.elapsed_s = max((float(r.get("sim_elapsed_s") or 0) for r in self.metrics.rows), default=0.0)
            return ckpt
        self.metrics.reset()
        return ServerState(round=0, global_state=self.kind.initial_state(self.strategy, initial_state(self.grid, fed, self.cfg)))

    def run(self) -> dict[str, Any]:
        """Run the remaining rounds; return the summary dict (also in summary.json)."""
        t0 = time.perf_counter()
        fed = discover(self.grid, self.cfg)
        log.info("%d clients %s; getting the initial state", len(fed.identities),
                 f"on a pool of {len(fed.pool)} SuperNodes" if fed.pool else "connected and named")
        if (set_devices := getattr(self.strategy, "set_devices", None)) is not None and not fed.pool:
            set_devices(fed.devices, list(fed.identities))  # e.g. ranks by the devices the nodes declared
        state = self._start_state(fed)
        if state.round == 0 and self._should_eval(0):
            ev = self._evaluate(0, state.global_state)
            self._log_row(self._row(0, ev, time.perf_counter() - t0))
        with RoundProgress(self.cfg.rounds, state.round) as progress:
            for rnd in range(state.round + 1, self.cfg.rounds + 1):
                row = self._round(rnd, state, fed)
                progress.update(rnd, row)
        return self.metrics.summary(**self.extras)

    # -- one round --------------------------------------------------------------------
    def _round(self, rnd: int, state: ServerState, fed: Federation) -> dict[str, Any]:
        """Sample, exchange through the strategy's update kind, screen (per reply, then the
        round's norm bound; further clients while too few are valid), aggregate,
        evaluate, checkpoint, and write the metrics row; the same for every kind."""
        t0 = time.perf_counter()
        screen = self.cfg.screen
        ex = RoundExchange(rnd, self.strategy, None, state.global_state, self.codec, self.cfg.max_examples_per_client)
        tally = RoundTally(work={} if self.clock is not None else None)
        pool, k, needed = fed.identities, self.cfg.clients_per_round, screen.min_valid_replies
        unfit = 0
        if self.clock is not None:  # only available clients that can train are sampled, over-selected when asked
            pool = self.clock.available(fed.identities, rnd)
            if self.assigner is not None:
                fit = [i for i in pool if self.assigner.choice[self.clock.class_name(i)] is not None]
                pool, unfit = fit, len(pool) - len(fit)
            k, needed = self.clock.sample_size(k, len(pool)), min(needed, len(pool))
            if not pool:
                log.warning("round %d: no client is available; the simulated clock moves on", rnd)
        idents = self.sampler.sample(pool, k) if pool else []
        valid: list[Message] = []
        for attempt in range(screen.max_resamples + 1 if idents else 0):
            valid = self._bounded(rnd, ex, valid + self._exchange(ex, idents, fed, tally), tally)
            short = needed - len(valid)
            untried = [i for i in pool if i not in tally.asked]
            if short <= 0 or attempt == screen.max_resamples or not untried or not self.kind.resamplable:
                break
            idents = self.sampler.sample(untried, short)
            tally.resampled += len(idents)
            log.warning("round %d: %d valid update(s), fewer than screen.min_valid_replies=%d; asking %d more client(s)",
                        rnd, len(valid), screen.min_valid_replies, len(idents))
        if len(valid) < needed:
            kept = f"the checkpoint after round {rnd - 1} is kept (resume=true continues)" if rnd > 1 else "nothing was trained"
            raise RoundFailed(
                f"round {rnd}: {len(valid)} valid update(s) from {len(tally.asked)} client(s) asked, fewer than "
                f"screen.min_valid_replies={screen.min_valid_replies} after {tally.resampled} further client(s); "
                f"{kept}; the rejections above say why"
            )
        device_row = {}
        if self.clock is not None:  # dropouts and stragglers leave; the round's simulated time and energy
            settled = self.clock.settle(rnd, valid, lambda m: tally.ident_of.get(m.metadata.src_node_id), tally.work,
                                        self.cfg.clients_per_round, len(fed.identities) - len(pool) - unfit)
            valid, device_row = settled.kept, {**settled.row, **self._assigned(tally.asked, unfit)}
        reported = common_metrics(valid, wire.METRICS)
        arrays, agg_metrics = self.strategy.aggregate_train(rnd, valid) if valid else (None, {})
        if not valid:
            log.warning("round %d: no client update arrived in time; the global model is unchanged", rnd)
        if arrays is not None:
            state.global_state = _from_record(arrays)
        strategy_metrics = self.kind.row_metrics(agg_metrics)
        state.round = rnd
        ev = self._evaluate(rnd, state.global_state) if self._should_eval(rnd) else {}
        state.strategy_state = get_strategy_state(self.strategy)
        state.sampler_state = self.sampler.state()
        row = self._row(rnd, ev, time.perf_counter() - t0, reported, tally.bytes_up, tally.bytes_down, tally.sent,
                        tally.failures, tally.asks)
        row.update(rejected=tally.rejected, resampled=tally.resampled, **device_row)
        if self.attackers is not None:
            row["attackers"] = len(self.attackers & tally.asked)
        row.update({k: v for k, v in strategy_metrics.items() if k not in row})
        self._log_row(row)  # the row first: a crash before the checkpoint re-runs the round and rewrites it
        save_checkpoint(state, self.ckpt_dir, self.cfg.keep_checkpoints)
        write_json(self.run_dir / "summary.json", self.metrics.summary(**self.extras))
        return row

    def _exchange(self, ex: RoundExchange, idents: list[int], fed: Federation, tally: RoundTally) -> list[Message]:
        """One batch of clients through the kind's whole exchange (first request and
        follow-ups); returns the replies the strategy aggregates."""
        ident_of = fed.nodes_for(idents, tally.ident_of)
        tally.asked.update(idents)
        tally.ident_of.update(ident_of)
        ex.grid = SampledGrid(self.grid, tally.ident_of)  # follow-ups see every client of the round
        messages = list(self.strategy.configure_train(ex.round, _to_record(ex.global_state), ConfigRecord(),
                                                      SampledGrid(self.grid, ident_of)))
        self.kind.complete_downlink(ex, messages)
        if self.assigner is not None:  # each client's option (resource_aware), in its own config record
            for m in messages:
                extra = self.assigner.overrides(self.clock.class_name(ident_of[m.metadata.dst_node_id]))
                if extra:
                    with_config(m, extra)
        limit = reply_limit_bytes(self.cfg.screen, ex.global_state) if self.kind.name == wire.KIND_DELTA else (
            reply_limit_bytes(self.cfg.screen, {}))
        tally.sent += len(messages)
        valid: list[Message] = []
        failures_before = ex.failures
        while messages:  # the round's first request, then the kind's follow-ups
            for m in messages:
                down = payload_bytes(m)
                tally.bytes_down += down
                if (w := tally.client_work(m.metadata.dst_node_id)) is not None:
                    w.bytes_down += down
            for m in messages if fed.pool else ():  # each names its client to the pool node (not counted:
                with_config(m, {wire.CLIENT_ID: tally.ident_of[m.metadata.dst_node_id]})  # a device is itself)
            strays: list[tuple[Message, str]] = []
            replies = send_and_receive(self.grid, messages, self.cfg.timeout_s, strays)
            sizes = {id(r): payload_bytes(r) for r in replies}
            for r in replies:
                if (w := tally.client_work(r.metadata.src_node_id)) is not None:
                    w.bytes_up += sizes[id(r)]
                    if not r.has_error() and wire.METRICS in r.content.metric_records:
                        add_flops(r.content[wire.METRICS], w)
            tally.bytes_up += sum(sizes.values()) + sum(payload_bytes(r) for r, _ in strays)
            for reply, reason in strays:
                self._reject(ex.round, tally, reply, reason)

            def check(r: Message, a: int = tally.asks) -> str | None:
                return size_reason(sizes[id(r)], limit) or self.kind.screen(ex, r, a)

            got = self._screen(ex.round, replies, tally, check)
            valid += got
            tally.failures += max(0, len(messages) - len(replies))
            messages = self.kind.followups(ex, valid, got) if valid else []
            tally.asks += 1
        tally.failures += ex.failures - failures_before
        return self.kind.to_aggregate(ex, valid)

    def _assigned(self, asked: set[int], unfit: int) -> dict[str, int]:
        """Row columns of the assignment: clients asked per class and option, unfit left out."""
        if self.assigner is None:
            return {}
        counts = {f"assign_{n}_{i}": 0 for n in self.assigner.names for i in range(len(self.cfg.assign.peak_mb))}
        for ident in asked:
            name = self.clock.class_name(ident)
            counts[f"assign_{name}_{self.assigner.choice[name]}"] += 1
        return {"unfit": unfit, **counts}

    def _bounded(self, rnd: int, ex: RoundExchange, valid: list[Message], tally: RoundTally) -> list[Message]:
        """``valid`` less the updates whose norm breaks the round's bound (each rejected)."""
        norms = {id(m): ex.norms[id(m)] for m in valid if id(m) in ex.norms}
        out = norm_outliers(norms, self.cfg.screen.norm_bound * self.kind.norm_slack)
        unclipped = getattr(self.strategy, "check_clipped", None)  # dp=client: clients must have clipped
        for key, norm in norms.items() if unclipped else ():
            reason = unclipped(norm)
            if reason and key not in out:
                out[key] = reason
        for msg in valid:
            if id(msg) in out:
                self._reject(rnd, tally, msg, out[id(msg)])
        return [m for m in valid if id(m) not in out]

    @staticmethod
    def _reject(rnd: int, tally: RoundTally, reply: Message, reason: str) -> None:
        ident = tally.ident_of.get(reply.metadata.src_node_id, reply.metadata.src_node_id)
        log.warning("round %d: rejected client %s: %s", rnd, ident, reason)
        tally.failures += 1
        tally.rejected += 1

    @classmethod
    def _screen(cls, rnd: int, replies: list[Message], tally: RoundTally,
                check: Callable[[Message], str | None]) -> list[Message]:
        """Valid replies sorted by client identity (aggregation order independent of
        arrival order); each rejection is logged with its reason and counted."""
        valid: list[tuple[int, Message]] = []
        for reply in replies:
            reason = check(reply)
            if reason is not None:
                cls._reject(rnd, tally, reply, reason)
                continue
            valid.append((tally.ident_of.get(reply.metadata.src_node_id, reply.metadata.src_node_id), reply))
        valid.sort(key=lambda p: p[0])
        return [m for _, m in valid]

    # -- helpers ------------------------------------------------------------------------
    def _should_eval(self, rnd: int) -> bool:
        if self.evaluate_fn is None:
            return False
        if rnd == self.cfg.rounds:
            return True
        return self.cfg.eval_every > 0 and rnd % self.cfg.eval_every == 0

    def _evaluate(self, rnd: int, global_state: dict[str, np.ndarray]) -> dict[str, float]:
        return dict(self.evaluate_fn(rnd, global_state)) if self.evaluate_fn else {}

    @staticmethod
    def _row(
        rnd: int,
        ev: dict[str, float],
        wall: float,
        metrics: list[Any] = (),
        bytes_up: int = 0,
        bytes_down: int = 0,
        clients: int = 0,
        failures: int = 0,
        exchanges: int = 0,
    ) -> dict[str, Any]:
        metrics = [m for m in metrics if m is not None and wire.NUM_EXAMPLES in m]
        n = sum(int(m[wire.NUM_EXAMPLES]) for m in metrics)
        losses = [(float(m[wire.TRAIN_LOSS]), int(m[wire.NUM_EXAMPLES])) for m in metrics
                  if np.isfinite(float(m.get(wire.TRAIN_LOSS, np.nan)))]  # a reply's metrics are its client's word
        n_loss = sum(k for _, k in losses)
        loss = sum(v * k for v, k in losses) / n_loss if n_loss else None
        rss = max((float(m[wire.PEAK_RSS_MB]) for m in metrics if wire.PEAK_RSS_MB in m), default=None)
        train_s = [float(m[wire.TRAIN_SECONDS]) for m in metrics if wire.TRAIN_SECONDS in m]
        call_s = [float(m[wire.CALL_SECONDS]) for m in metrics if wire.CALL_SECONDS in m]
        return {
            "round": rnd,
            "train_loss": loss,
            "eval_loss": ev.get("eval_loss"),
            "eval_accuracy": ev.get("eval_accuracy"),
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "clients": clients,
            "failures": failures,
            "exchanges": exchanges,
            "wall_s": round(wall, 3),
            "client_peak_rss_mb": rss,
            "client_train_s": round(float(np.mean(train_s)), 4) if train_s else None,
            "client_call_s": round(float(np.mean(call_s)), 4) if call_s else None,
            "examples": n,
        }


def run_server(
    grid: Any, cfg: ServerConfig, strategy: Any, evaluate_fn: EvaluateFn | None, extras: dict[str, Any] | None = None,
    trackers: Trackers | None = None, run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a whole federation and write summary.json; returns the summary. ``run_config``
    (the flat run config) is recorded beside the checkpoints, and a resume must match it."""
    summary = RoundLoop(grid, strategy, cfg, evaluate_fn, extras, trackers, run_config).run()
    write_json(Path(cfg.run_dir) / "summary.json", summary)
    return summary
