"""Split training's server side: SplitFed V2 (``sfl_v2``) and V1 (``sfl_v1``).

Thapa et al., "SplitFed: When Federated Learning Meets Split Learning" (AAAI 2022); the
LoRA variant as in SplitLoRA. The global state is the whole model's LoRA state (names
as in the unsplit model): the client blocks' tensors travel to the sampled clients and
come back trained; the server blocks' tensors stay here and are trained by the server
part (``strategy.server_part``, built by import path from the run config, so this
module never imports client code). Per round:

- the client part is aggregated by a delta strategy of the registry
  (``strategy.client_strategy``: FedAvg by default, FedProx, FedAdam, ...);
- ``sfl_v2``: one server-side copy; at every step the clients' activations are
  processed one client after another (in identity order), each updating it;
- ``sfl_v1``: one server-side copy per client, each trained only on its client's
  activations, averaged at the end of the round weighted by examples.

A client whose reply is rejected, who errs or who does not answer leaves the round: it
gets no further messages, its V1 copy is discarded and its client part is not
averaged (V2 keeps the steps its valid activations already took). The exchanges
themselves are :mod:`strategies.kinds.activations`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from strategies import activation_codec as ac
from strategies import wire
from strategies.kinds import activations as sk
from strategies.kinds.delta import check_reply as check_delta_reply
from strategies.plugins import import_string
from strategies.state import get_strategy_state, set_strategy_state

log = logging.getLogger("anther.server")


@dataclass
class ClientRun:
    """One sampled client's conversation in the round."""

    ident: int
    session: Any  # the server-side copy it trains (V2: the shared one)
    step: int = 0  # the step its next reply belongs to
    expect: tuple[str, ...] = (sk.ACTS,)  # reply types accepted next
    got: str = ""  # the type of its last valid reply
    hidden: torch.Tensor | None = None  # its last activations (U-shaped: kept for the recompute)
    batch: dict[str, torch.Tensor] = field(default_factory=dict)
    codec: str = "fp32"
    sent: tuple[int, ...] = ()  # shape of the last tensor sent down (U-shaped: what its gradient must match)
    grad: torch.Tensor | None = None  # U-shaped: the gradient of the server's output
    examples: int = 0
    dropped: bool = False


@dataclass
class SplitRound:
    rnd: int
    runs: dict[int, ClientRun]  # node id -> run
    client_shapes: dict[str, tuple[int, ...]]
    config: dict[str, Any]  # what the client strategy adds to every downlink (e.g. proximal-mu)
    server_failures: int = 0
    server_steps: int = 0
    server_s: float = 0.0  # time in the server part's steps


def step_seed(seed: int, rnd: int, ident: int, step: int) -> int:
    """The server's dropout seed for one client's step."""
    return hash((seed, rnd, ident, step, 0x5F1)) & 0x7FFFFFFF


class SplitFed(Strategy):
    """SplitFed V2 (one server-side copy); :class:`SplitFedV1` trains one per client."""

    update_kind = wire.KIND_ACTIVATIONS
    parallel = False

    def __init__(self, cfg: Any, run: Any) -> None:
        from strategies.registry import STRATEGIES, build_strategy  # the registry imports this module's path only

        self.cfg, self.run = cfg, run
        inner = STRATEGIES[cfg.client_strategy]
        if inner.kind != wire.KIND_DELTA:
            raise ValueError(f"strategy.client_strategy must aggregate delta updates; {cfg.client_strategy} aggregates "
                             f"{inner.kind} (choose from {' | '.join(STRATEGIES.names(wire.KIND_DELTA))})")
        self.inner = build_strategy(inner.config(name=cfg.client_strategy), seed=run.seed, rounds=run.rounds,
                                    local_steps=run.local_steps)
        self._part = None
        self._round: SplitRound | None = None

    @property
    def part(self) -> Any:
        """The server part (loaded on first use)."""
        if self._part is None:
            self._part = import_string(self.cfg.server_part)(dict(self.run.run_config))
        return self._part

    # -- the global state ----------------------------------------------------------------------
    def compose_initial_state(self, client_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The whole model's initial LoRA state: the client part a client sent + the server part's."""
        server = {k: v.numpy() for k, v in self.part.initial_state.items()}
        both = sorted(set(server) & set(client_state))
        if both:
            raise ValueError(f"the client and server parts both train {both[:3]}: check method.cut / method.u_shaped")
        return {**dict(client_state), **server}

    def client_keys(self, global_state: Mapping[str, Any]) -> list[str]:
        server = set(self.part.keys)
        return [k for k in global_state if k not in server]

    # -- round start ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any) -> Iterable[Message]:
        part = self.part
        missing = sorted(set(part.keys) - set(arrays.keys()))
        if missing:
            raise ValueError(f"the global state lacks the server part's tensors {missing[:3]}")
        server = {k: torch.from_numpy(np.array(arrays[k].numpy())) for k in part.keys}
        keys = self.client_keys(arrays)
        client = ArrayRecord({k: arrays[k] for k in keys})
        inner_msgs = list(self.inner.configure_train(server_round, client, config, grid))
        extra = dict(inner_msgs[0].content[wire.CONFIG]) if inner_msgs and wire.CONFIG in inner_msgs[0].content.config_records else {}
        extra.pop(wire.SERVER_ROUND, None)
        shared = None if self.parallel else part.session(server)
        identity = getattr(grid, "identity_of", {})
        runs = {node: ClientRun(int(identity.get(node, node)), shared or part.session(server)) for node in grid.get_node_ids()}
        shapes = {k: tuple(arrays[k].shape) for k in keys}
        self._round = SplitRound(server_round, runs, shapes, extra)
        return [self._downlink(node, sk.START, 0, {}) for node in runs]

    def _downlink(self, node: int, phase: str, step: int, extra: Mapping[str, Any],
                  tensors: Mapping[str, torch.Tensor] | None = None, codec: str = "fp32") -> Message:
        config = {**self._round.config, wire.SERVER_ROUND: self._round.rnd, sk.PHASE: phase, sk.STEP: step, **extra}
        if tensors:
            content = sk.tensors_content(tensors, codec, config, wire.CONFIG)
        else:
            content = RecordDict({wire.CONFIG: ConfigRecord(config)})
        return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)

    # -- screening ----------------------------------------------------------------------------------
    def check_reply(self, server_round: int, msg: Message, ask: int) -> str | None:
        """Why ``msg`` is not the reply this round expects from its client (that client
        then leaves the round), or None; a valid reply's payload is kept decoded."""
        rnd = self._round
        run = rnd.runs.get(msg.metadata.src_node_id) if rnd is not None and rnd.rnd == server_round else None
        if run is None or run.dropped:
            return "a reply from a client not taking part in this round's split training"
        reason = self._check(run, msg)
        if reason is not None:
            run.dropped = True
        return reason

    def _check(self, run: ClientRun, msg: Message) -> str | None:
        if msg.has_error():
            return wire.error_reason(msg)
        echo = msg.content.config_records.get(sk.ECHO)
        if echo is None:
            return f"reply has no '{sk.ECHO}' record (round, step, reply type)"
        got = (echo.get("round"), echo.get("step"), echo.get("reply"))
        if got[0] != self._round.rnd or got[1] != run.step or got[2] not in run.expect:
            return (f"stale or unexpected reply: '{got[2]}' for step {got[1]} of round {got[0]}, expected "
                    f"{' or '.join(repr(e) for e in run.expect)} for step {run.step} of round {self._round.rnd}")
        kind = got[2]
        if kind == sk.FINAL:
            return self._check_final(run, msg)
        codec = str(msg.content.config_records.get(wire.WIRE, {}).get(wire.CODEC_KEY, ""))
        record = msg.content.array_records.get(sk.SPLIT)
        if record is None:
            return f"reply has no '{sk.SPLIT}' tensors"
        name = sk.HIDDEN if kind == sk.ACTS else sk.GRADIENT
        reason = ac.check_encoded(record, name, codec, None if kind == sk.ACTS else run.sent)
        if reason is not None:
            return reason
        if kind == sk.ACTS:
            batch = {sk.MASK: record.get(sk.MASK), sk.LABELS: record.get(sk.LABELS)}
            if batch[sk.MASK] is None:
                return f"activations come without their '{sk.MASK}'"
            mask = torch.from_numpy(np.array(batch[sk.MASK].numpy()))
            labels = torch.from_numpy(np.array(batch[sk.LABELS].numpy())) if batch[sk.LABELS] is not None else None
            reason = self.part.check_batch(tuple(record[name].shape), mask, labels)
            if reason is not None:
                return reason
            run.batch = {"attention_mask": mask, **({"labels": labels} if labels is not None else {})}
        tensor = ac.decode_from(record, name, codec)
        if not bool(tensor.isfinite().all()):
            return f"'{name}' has non-finite values"
        if kind == sk.GRAD:
            loss = echo.get(sk.LOSS)
            if not isinstance(loss, float) or not np.isfinite(loss):
                return f"'{sk.LOSS}' must be a finite float, got {loss!r}"
            run.grad = tensor
        else:
            run.hidden = tensor
        run.codec, run.got = codec, kind
        return None

    def _check_final(self, run: ClientRun, msg: Message) -> str | None:
        decoded, reason = check_delta_reply(msg, self._round.client_shapes)
        if reason is not None:
            return reason
        msg.content[wire.ARRAYS] = ArrayRecord({k: Array(v.numpy()) for k, v in decoded.items()})
        if wire.WIRE in msg.content.config_records:
            del msg.content.config_records[wire.WIRE]
        run.got, run.examples = sk.FINAL, int(msg.content[wire.METRICS][wire.NUM_EXAMPLES])
        return None

    # -- the server's steps -----------------------------------------------------------------------------
    def configure_followup(self, server_round: int, replies: list[Message], grid: Any) -> list[Message]:
        """The next downlink of every client whose reply just passed screening, after the
        server's side of its step (in the order given: by identity)."""
        out = []
        t0 = time.perf_counter()
        for msg in replies:
            node = msg.metadata.src_node_id
            run = self._round.runs[node]
            if run.got == sk.FINAL or run.dropped:
                continue
            try:
                out.append(self._serve(node, run))
            except Exception as err:  # noqa: BLE001 - one client's failed step must not end the round
                log.warning("round %d: rejected client %s: server-side step failed: %s: %s", server_round, run.ident,
                            type(err).__name__, err)
                run.dropped = True
                self._round.server_failures += 1
        self._round.server_s += time.perf_counter() - t0
        return out

    def _serve(self, node: int, run: ClientRun) -> Message:
        part, rnd = self.part, self._round
        seed = step_seed(self.run.seed, rnd.rnd, run.ident, run.step)
        if run.got == sk.ACTS and not part.u_shaped:
            grad, loss = part.train_step(run.hidden, run.batch, run.session, seed)
            rnd.server_steps += 1
            run.step, run.expect = run.step + 1, (sk.ACTS, sk.FINAL)
            return self._downlink(node, sk.GRAD, run.step, {sk.LOSS: loss}, {sk.GRADIENT: grad}, run.codec)
        if run.got == sk.ACTS:  # U-shaped: the middle blocks' output goes down to the client's tail
            out = part.middle_forward(run.hidden, run.batch, run.session, seed)
            run.sent, run.expect = tuple(out.shape), (sk.GRAD,)
            return self._downlink(node, sk.MID, run.step, {}, {sk.HIDDEN: out}, run.codec)
        grad = part.middle_backward(run.hidden, run.batch, run.grad, run.session, seed)  # U-shaped, got the tail's gradient
        rnd.server_steps += 1
        run.step, run.expect, run.grad = run.step + 1, (sk.ACTS, sk.FINAL), None
        return self._downlink(node, sk.GRAD, run.step, {}, {sk.GRADIENT: grad}, run.codec)

    def take_server_failures(self) -> int:
        """Clients dropped by a failed server-side step since the last call."""
        n, self._round.server_failures = self._round.server_failures, 0
        return n

    def final_replies(self, valid: list[Message]) -> list[Message]:
        """The round's final replies (client parts to aggregate), by client identity."""
        finals = [m for m in valid if m.content.config_records.get(sk.ECHO, {}).get("reply") == sk.FINAL]
        return sorted(finals, key=lambda m: self._round.runs[m.metadata.src_node_id].ident)

    # -- aggregation ---------------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        rnd = self._round
        client, metrics = self.inner.aggregate_train(server_round, replies)
        runs = [rnd.runs[m.metadata.src_node_id] for m in replies]
        if self.parallel:  # V1: the finished clients' copies, weighted by examples
            total = sum(r.examples for r in runs)
            server = {k: sum(r.session.values[k] * (r.examples / total) for r in runs) for k in self.part.keys}
        else:
            server = rnd.runs[next(iter(rnd.runs))].session.values if rnd.runs else {}
        merged = ArrayRecord({**{k: a for k, a in (client or ArrayRecord()).items()},
                              **{k: Array(v.numpy()) for k, v in server.items()}})
        out = MetricRecord({**dict(metrics or {}), "server-steps": rnd.server_steps, "server-s": round(rnd.server_s, 3)})
        self._round = None
        return merged, out

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info("%s: client part aggregated with %s; server part at %s", type(self).__name__, self.cfg.client_strategy,
                 self.cfg.server_part)

    # -- checkpoints: the server part lives in the global state; the client strategy's own state here
    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"client/{k}": v for k, v in get_strategy_state(self.inner).items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        set_strategy_state(self.inner, {k.removeprefix("client/"): v for k, v in state.items() if k.startswith("client/")})


class SplitFedV1(SplitFed):
    """SplitFed V1: one server-side copy per client, averaged weighted by examples."""

    parallel = True
