"""FwdLLM (Xu et al., "FwdLLM: Efficient FedLLM using Forward Gradient", 2024), server side.

Clients (``client/methods/forward_grad.py``) keep the global PEFT parameters fixed and
reply ``n`` pairs ``(index_j, d_j / n)`` with ``d_j = grad L_c(w) . z_j``: client ``c``'s
forward-gradient estimate is ``g_c = sum_j scalar_j z_j``. Per round ``t``:

- a fresh seed pool (``pool-round = t``) and plain SGD on the server, no momentum:
  ``w <- w - lr_t * server_lr * sum_c (N_c / N) g_c`` with ``lr_t`` decayed linearly over
  the run (``strategy.lr_schedule=linear``);
- variance control: from the replies so far, the variance of the estimate
  (see :func:`half_split_variance`); while it exceeds ``variance_threshold`` and fewer
  than ``max_asks`` extra requests were made, the same clients are asked for ``n`` more
  perturbations (request number ``zo-ask`` = 1, 2, ..., so they draw other seeds). A
  client that answered ``A_c`` requests contributes the mean of all its perturbations,
  ``g_c = (1/A_c) sum_asks sum_j scalar_j z_j`` (each request's scalars were already
  divided by that request's ``n``);
- discriminative sampling: with ``candidates`` C > 1 the server draws ``n * C``
  candidate directions per request and keeps the ``n`` whose ``z`` is best aligned
  (largest ``|cos|``) with the previous round's update; it sends the chosen pool indices
  down (``zo-assigned``). FwdLLM's clients make this choice themselves; it depends on no
  client data, so the server makes it once, and clients neither receive the previous
  update nor spend ``n * C`` perturbation passes on it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from kernels import accumulate_
from strategies import seeds as sd
from strategies import wire
from strategies.seed_strategy import SeedStrategy

log = logging.getLogger("anther.server")

CLIENT = "fwdllm-node"  # set on parsed replies: the node that sent it


def client_key(reply: sd.SeedReply) -> Any:
    """The client a parsed reply came from (its node, else its partition id, else itself)."""
    m = reply.metrics
    return m.get(CLIENT, m.get(wire.PARTITION_ID, id(reply)))


def group_by_client(replies: Iterable[sd.SeedReply]) -> list[list[sd.SeedReply]]:
    """Replies grouped per client (in first-seen order), each group in request order;
    a repeated (client, request) keeps the first reply."""
    groups: dict[Any, dict[int, sd.SeedReply]] = {}
    for r in replies:
        groups.setdefault(client_key(r), {}).setdefault(int(r.metrics.get(sd.ASK, 0)), r)
    return [[g[a] for a in sorted(g)] for g in groups.values()]


def combine_asks(replies: Iterable[sd.SeedReply]) -> list[sd.SeedReply]:
    """One reply per client whose scalars stand for the mean over all its requests:
    ``g_c = (1/A_c) sum_asks sum_j scalar_j z_j``."""
    out = []
    for group in group_by_client(replies):
        a = len(group)
        out.append(
            sd.SeedReply(
                index=np.concatenate([r.index for r in group]),
                scalar=np.concatenate([r.scalar for r in group]) / a,
                weight=group[0].weight,
                metrics=group[0].metrics,
            )
        )
    return out


def aligned(
    candidates: np.ndarray, pool: np.ndarray, direction: list[torch.Tensor], n: int, dist: str, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` candidate pool indices whose ``z`` has the largest ``|cos(z, direction)|``
    (ties: candidate order) and those cosines. The sign does not matter: ``d z`` is the
    same estimate for ``z`` and ``-z``."""
    u = torch.cat([t.reshape(-1).double() for t in direction])
    u_norm = float(u.norm())
    z = [torch.zeros_like(t, dtype=torch.float32) for t in direction]
    cos = np.zeros(len(candidates))
    for i, k in enumerate(candidates.tolist()):
        for t in z:
            t.zero_()
        accumulate_(z, [int(pool[k])], [1.0], dist=dist, backend=backend)
        flat = torch.cat([t.reshape(-1).double() for t in z])
        norm = float(flat.norm())
        cos[i] = float(flat @ u) / (norm * u_norm) if norm > 0 and u_norm > 0 else 0.0
    best = np.argsort(-np.abs(cos), kind="stable")[:n]
    return candidates[best], cos[best]


def half_split_variance(
    replies: Iterable[sd.SeedReply], params: list[torch.Tensor], pool: np.ndarray, dist: str, backend: str = "auto"
) -> float:
    """FwdLLM's variance of the round's gradient estimate, mean over elements.

    Each client's per-perturbation estimates ``d_j z_j`` (``d_j = n * scalar_j``, ``n`` the
    pairs in that request) are split into two halves by alternating position (requests
    in order); with ``m_h = sum_c (N_c / N) mean_{j in half h of c} d_j z_j`` the result is
    ``mean_elements(var(m_1, m_2)) = mean((m_1 - m_2)^2) / 2`` (unbiased two-sample
    variance), about twice the variance of the round's estimate. Splitting within every
    client keeps client heterogeneity, which more perturbations cannot reduce, out of it.
    A client with a single perturbation adds it to both halves. ``params`` only gives the
    shapes (sorted-name order); NaN when no client has two perturbations.
    """
    groups = group_by_client(replies)
    if not groups:
        return float("nan")
    total = float(sum(g[0].weight for g in groups))
    halves: list[tuple[list[int], list[float]]] = [([], []), ([], [])]
    split = False
    for group in groups:
        w = group[0].weight / total
        idx = np.concatenate([r.index for r in group])
        d = np.concatenate([r.scalar * len(r.scalar) for r in group])  # per-perturbation d_j
        parts = [np.arange(len(d))] * 2 if len(d) < 2 else [np.arange(0, len(d), 2), np.arange(1, len(d), 2)]
        split |= len(d) >= 2
        for (seeds, coeffs), part in zip(halves, parts):
            seeds.extend(int(s) for s in pool[idx[part]])
            coeffs.extend(float(c) for c in w * d[part] / len(part))
    if not split:
        return float("nan")
    m = [[torch.zeros_like(p, dtype=torch.float32) for p in params] for _ in range(2)]
    for bufs, (seeds, coeffs) in zip(m, halves):
        accumulate_(bufs, seeds, coeffs, dist=dist, backend=backend)
    sq = sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(*m))
    return sq / 2 / max(sum(p.numel() for p in params), 1)


class FwdLLM(SeedStrategy):
    """Forward-gradient FedSGD with variance control and discriminative sampling."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prev: sd.RoundUpdate | None = None  # the last applied round update
        self.asked: dict[int, int] = {}  # round -> extra requests made
        self._staged: sd.RoundUpdate | None = None
        self._direction: tuple[int, list[torch.Tensor]] | None = None  # (round, previous update as tensors)
        self._cos: list[float] = []  # |cos| of this round's chosen directions

    # -- hooks -----------------------------------------------------------------------------
    def pool_round(self, rnd: int) -> int:
        return rnd  # a fresh pool every round

    def max_pairs(self) -> int:
        return self.cfg.perturbations  # forward_grad averages its batches: n pairs per request

    def assign(self, rnd: int, ask: int, draw: int) -> tuple[np.ndarray, bool]:
        """Discriminative sampling when the previous round's update is known, else uniform."""
        n, c = self.max_pairs(), self.cfg.candidates
        if c <= 1 or self.prev is None or self.prev.round != rnd - 1 or not len(self.prev.index):
            return sd.draw_indices(draw, n, self.cfg.num_seeds), False
        if self._direction is None or self._direction[0] != rnd:
            u = [torch.zeros(np.asarray(self.current[k]).shape, dtype=torch.float32) for k in sorted(self.current)]
            self.prev.apply_(u, self.pool_seed, self.cfg.num_seeds, self.cfg.dist, self.cfg.kernel_backend)
            self._direction, self._cos = (rnd, u), []
        pool = sd.seed_pool(self.pool_seed, self.cfg.num_seeds, self.pool_round(rnd))
        candidates = sd.draw_indices(draw, n * c, self.cfg.num_seeds)
        index, cos = aligned(candidates, pool, self._direction[1], n, self.cfg.dist, self.cfg.kernel_backend)
        self._cos.extend(np.abs(cos).tolist())
        return index, True

    def _parse(self, rnd: int, msg: Message) -> sd.SeedReply | None:
        parsed = super()._parse(rnd, msg)
        if parsed is not None:
            parsed.metrics[CLIENT] = msg.metadata.src_node_id
        return parsed

    # -- variance control ------------------------------------------------------------------
    def estimate_variance(self, rnd: int, replies: Iterable[sd.SeedReply]) -> float:
        """:func:`half_split_variance` of the round's replies so far."""
        shapes = [torch.from_numpy(np.asarray(self.current[k])) for k in sorted(self.current)]
        pool = sd.seed_pool(self.pool_seed, self.cfg.num_seeds, self.pool_round(rnd))
        return half_split_variance(replies, shapes, pool, self.cfg.dist, self.cfg.kernel_backend)

    def configure_followup(self, rnd: int, replies: list[Message], grid: Any) -> list[Message]:
        """Ask the clients of the last request again while the variance is above threshold."""
        done = self.asked.get(rnd, 0)
        if done >= self.cfg.max_asks:
            return []
        parsed = [p for p in (self._parse(rnd, m) for m in replies) if p is not None]
        var = self.estimate_variance(rnd, parsed)
        last = sorted({p.metrics[CLIENT] for p in parsed if int(p.metrics.get(sd.ASK, 0)) == done})
        if not (var > self.cfg.variance_threshold) or not last:
            return []
        self.asked = {rnd: done + 1}
        log.info(
            "round %d: variance %.4g > %g after %d request(s); asking %d clients for more perturbations",
            rnd, var, self.cfg.variance_threshold, done + 1, len(last),
        )
        return [self.build_message(node, rnd, ask=done + 1) for node in last]

    # -- aggregation -----------------------------------------------------------------------
    def round_update(self, rnd: int, replies: list[sd.SeedReply]) -> sd.RoundUpdate:
        """``-lr_t * server_lr *`` the example-weighted mean of the clients' estimates,
        each the mean over all of its requests (:func:`combine_asks`)."""
        index, coeff = self.coefficients(combine_asks(replies), -self.round_lr(rnd) * self.cfg.server_lr, rnd)
        self._staged = sd.RoundUpdate(rnd, self.pool_round(rnd), index, coeff)
        return self._staged

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        parsed = [p for p in (self._parse(server_round, m) for m in replies) if p is not None]
        var = self.estimate_variance(server_round, parsed) if parsed else float("nan")
        self._staged = None
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self._staged is None:
            return arrays, metrics
        self.prev = self._staged
        asks = 1 + self.asked.get(server_round, 0)
        lr = self.round_lr(server_round)
        log.info("round %d: FwdLLM variance %.4g after %d request(s), lr %.4g", server_round, var, asks, lr)
        if metrics is not None:
            metrics["requests"] = asks
            metrics["lr"] = float(lr)
            if math.isfinite(var):
                metrics["grad-variance"] = float(var)
            if self._cos and self._direction is not None and self._direction[0] == server_round:
                metrics["abs-cos"] = float(np.mean(self._cos))  # discriminative sampling's alignment
        return arrays, metrics

    def summary(self) -> None:
        log.info(
            "FwdLLM: K=%d fresh seeds per round, n=%d, C=%d candidates, variance threshold %g, <= %d extra requests, lr=%g (%s)",
            self.cfg.num_seeds, self.cfg.perturbations, self.cfg.candidates, self.cfg.variance_threshold,
            self.cfg.max_asks, self.cfg.lr, self.cfg.lr_schedule,
        )

    # -- checkpoint ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        prev = sd.History([self.prev] if self.prev is not None else [])
        return {**super().state_dict(), **prev.state_dict(prefix="fwdllm/prev")}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        prev = sd.History()
        prev.load_state_dict(state, prefix="fwdllm/prev")
        self.prev = prev.entries[-1] if prev.entries else None
