"""Heterogeneous LoRA ranks: one global model, each client training the rank its
configuration gives it (``method.rank_choices``, ``method.rank_assignment``;
:func:`client.ranks.client_rank`).

Notation: for each adapted Linear, client ``k`` trains ``A_k (r_k x d_in)`` and
``B_k (d_out x r_k)``; ``p_k = n_k / sum n`` are example weights; ``s = lora_alpha / r``
with ``r`` the global rank (``method.r``, at least the largest choice). **Scaling across
ranks**: every client computes ``W0 x + s B_k A_k x`` with the same ``s`` (PEFT builds
the model at rank ``r``; a rank-``r_k`` client uses its first ``r_k`` components), so
a truncation means the same thing on every device and the products below are comparable
across ranks without rescaling.

- :class:`HetLoRA` (Cho et al., 2024): the server holds LoRA at rank ``r``. Down: each
  client gets the first ``r_k`` components. Up: its ``r_k`` components. Aggregation:
  zero-pad to ``r`` and average, weighted by examples or (``weighting=norm``, HetLoRA's
  sparsity-weighted aggregation) by ``||B_k A_k||_F`` per module; or
  (``padding=holders``, HeteroFL's rule) each component averaged over the clients that
  trained it, so components only high-rank clients hold are not pulled toward zero; or
  (``padding=global``) the updates averaged: a client's components beyond ``r_k`` count
  as the global values it did not change, so component ``j`` moves by
  ``sum_{k: r_k >= j} p_k (x_kj - g_j)`` and nothing shrinks (zeros: ``x_j`` becomes
  ``sum_{k: r_k >= j} p_k x_kj``, a quarter of itself each round where a quarter of the
  weight trains it).
- :class:`FLoRA` (Wang et al., 2024): stacking. The server holds the merged update
  ``dW`` per adapted Linear (a dense ``<module>.base_delta``) and LoRA's initial
  factors. Down: ``dW`` (the client adds it to its frozen layer) and fresh adapters
  (the initial ``A`` truncated to ``r_k``, ``B = 0``). Up: ``A_k, B_k``. Aggregation:
  stack ``B = [p_1 s B_1 | ... | p_K s B_K]``, ``A = [A_1; ...; A_K]`` (rank ``sum r_k``),
  whose product is exactly ``sum_k p_k s B_k A_k``, and merge it: ``dW += B A``. The
  stack is merged every round rather than kept: a sampled, stateless client would need
  every earlier round's stack, so keeping it would grow the downlink without bound.
- :class:`FlexLoRA` (Bai et al., 2024): the server holds the full-size global update
  ``dW = sum_k p_k s B_k A_k`` (a dense ``<module>.base_delta``). Down: a truncated SVD
  of ``dW / s`` at the client's rank, ``B = U_r S_r^1/2``, ``A = S_r^1/2 V_r^T``
  (components with a zero singular value get LoRA's initial ``A`` row and ``B = 0``,
  so they can still learn); no dense tensor. Up: ``A_k, B_k``. At full rank the
  truncation is exact. ``average=updates`` averages the products' changes instead,
  ``dW += sum_k p_k (s B_k A_k - T_k(dW))`` with ``T_k(dW)`` the truncation client ``k``
  started from: the part of ``dW`` beyond a client's rank counts as unchanged rather
  than as zero (FlexLoRA's own mean drops a quarter of it each round where a quarter of
  the weight trains rank 2).

The classification head (and any other non-LoRA tensor) is averaged by examples in all
three. Central evaluation loads the global state as it is: LoRA at rank ``r`` plus, for
FLoRA and FlexLoRA, the dense ``dW`` (:class:`client.methods.lora.LoraMethod`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from client.config import ClientConfig
from client.ranks import (BASE_DELTA, BY_DEVICE_NEEDS_DEVICES, client_rank, device_ranks, is_a, is_b, module_of,
                          prune_width, rank_of, ranks_by_identity, truncated)
from strategies import wire
from strategies.runconfig import ConfigError, unflatten

log = logging.getLogger("anther.server")


def lora_pairs(state: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Adapted module -> (its A tensor's name, its B tensor's name)."""
    pairs: dict[str, dict[str, str]] = {}
    for name in state:
        module = module_of(name)
        if module is not None:
            pairs.setdefault(module, {})["A" if is_a(name) else "B"] = name
    return {m: (p["A"], p["B"]) for m, p in pairs.items() if "A" in p and "B" in p}


def stack(factors: list[tuple[np.ndarray, np.ndarray]], weights: list[float], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """FLoRA's stacking: ``(B_stack, A_stack)`` with ``B_stack @ A_stack = sum_k w_k s B_k A_k``."""
    b = np.concatenate([w * scale * b_k for (a_k, b_k), w in zip(factors, weights)], axis=1)
    a = np.concatenate([a_k for a_k, _ in factors], axis=0)
    return b, a


def svd_factors(delta: np.ndarray, rank: int, scale: float, init_a: np.ndarray,
                svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """FlexLoRA's redistribution: ``(A, B)`` of rank ``rank`` with ``s B A`` the best
    rank-``rank`` approximation of ``delta``; components with a zero singular value get
    ``init_a``'s row and ``B = 0`` (LoRA's own initialisation). ``svd``: ``delta / s``'s
    SVD when already computed."""
    u, sv, vt = svd if svd is not None else np.linalg.svd(delta / scale, full_matrices=False)
    k = min(rank, sv.shape[0])
    root = np.sqrt(sv[:k])
    a = np.zeros((rank, delta.shape[1]), dtype=np.float32)
    b = np.zeros((delta.shape[0], rank), dtype=np.float32)
    a[:k] = root[:, None] * vt[:k]
    b[:, :k] = u[:, :k] * root[None, :]
    alive = np.zeros(rank, dtype=bool)
    alive[:k] = sv[:k] > (sv.max() * 1e-6 if sv.size else 0.0)
    a[~alive] = init_a[:rank][~alive]
    b[:, ~alive] = 0.0
    return a, b


def weighted_mean(values: list[np.ndarray], weights: list[float]) -> np.ndarray:
    return sum(w * v for v, w in zip(values, weights)).astype(np.float32)


class HetRankStrategy(FedAvg):
    """What the three share: ranks per client, per-client downlink and reply shapes
    (:class:`strategies.kinds.delta.DeltaKind` asks for them), example-weighted heads."""

    update_kind = wire.KIND_DELTA
    dense = False  # the global state holds a dense ``base_delta`` per adapted module

    def __init__(self, cfg: Any, run: Any) -> None:
        from strategies.registry import SAMPLING_KWARGS

        super().__init__(**SAMPLING_KWARGS)
        self.cfg = cfg
        client = unflatten(ClientConfig, dict(run.run_config)) if run.run_config else None
        method = client.method if client is not None else None
        if method is not None and method.name != "lora":
            raise ConfigError(f"strategy={cfg.name} aggregates heterogeneous LoRA ranks: use method=lora "
                              f"(got method={method.name})")
        self.rank = int(getattr(method, "r", 8))
        self.scale = float(getattr(method, "lora_alpha", 16)) / self.rank
        self.choices = tuple(getattr(method, "rank_choices", ()) or (self.rank,))
        self.assignment = str(getattr(method, "rank_assignment", "cycle"))
        self.seed = int(run.seed)
        self.by_device: dict[int, int] | None = None  # rank_assignment=by_device: identity -> rank
        if self.assignment == "by_device" and not bool(dict(run.run_config).get("deployed", False)):  # else set_devices
            if client is None or not client.device.active:
                raise ConfigError(BY_DEVICE_NEEDS_DEVICES)
            ranks, per_class = ranks_by_identity(self.choices, client.device.population, client.num_clients, self.seed)
            self.by_device = dict(enumerate(int(r) for r in ranks))
            log.info("ranks by device class: %s", ", ".join(f"{n} {r}" for n, r in per_class.items()))
        self._ranks: dict[int, int] = {}  # node id -> rank, this round
        self.current: dict[str, np.ndarray] = {}  # the global state this round trains from
        self._svd: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # FlexLoRA: per module, this round
        self._identity: dict[int, int] = {}  # node id -> stable identity, this round

    # -- ranks -------------------------------------------------------------------------------------
    def set_devices(self, devices: dict[int, dict[str, Any]], identities: list[int]) -> None:
        """A deployment with ``rank_assignment=by_device``: each client's rank from the device
        profile its node declared in its "hello" reply (``anther-deploy supernode --device``),
        the classes present ordered by compute, then memory, as in simulation."""
        if self.assignment != "by_device" or self.by_device is not None:
            return
        missing = sorted(i for i in identities if i not in devices)
        if missing:
            raise ConfigError(f"method.rank_assignment=by_device: the node(s) of client(s) {missing} declared no device "
                              "profile; start every SuperNode with `anther-deploy supernode ... --device PROFILE` "
                              "or use method.rank_assignment=cycle|random")
        speeds = {d[wire.DEVICE_NAME]: (d[wire.DEVICE_GFLOPS], d[wire.DEVICE_MEMORY_MB]) for d in devices.values()}
        per_class = device_ranks(self.choices, speeds)
        self.by_device = {i: per_class[devices[i][wire.DEVICE_NAME]] for i in identities}
        log.info("ranks by the nodes' device classes: %s", ", ".join(f"{n} {r}" for n, r in per_class.items()))

    def rank_for(self, identity: int) -> int:
        if self.by_device is not None:
            return int(self.by_device[identity])
        if self.assignment == "by_device":
            raise RuntimeError("rank_assignment=by_device on a deployment: the nodes' devices are not known yet")
        return client_rank(identity, self.choices, self.assignment, self.seed)

    def round_config(self) -> dict[str, Any]:
        """What every client's train message carries besides its rank."""
        return {}

    def node_rank(self, node_id: int) -> int:
        return self._ranks.get(node_id, self.rank)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        self.current = {k: a.numpy() for k, a in arrays.items()}
        if server_round != getattr(self, "_configured", None):  # a round's further clients keep the first ones' ranks
            self._svd, self._ranks, self._identity, self._configured = {}, {}, {}, server_round
        self._identity.update(getattr(grid, "identity_of", {}))
        return super().configure_train(server_round, arrays, config, grid)

    def _construct_messages(self, record: RecordDict, node_ids: list[int], message_type: str) -> list[Message]:
        """One content per client (FedAvg shares one): each carries its own rank, and the
        delta kind puts each client's own view of the state in it."""
        messages = []
        for node in node_ids:
            self._ranks[node] = rank = self.rank_for(self._identity.get(node, node))
            config = ConfigRecord({**dict(record[wire.CONFIG]), **self.round_config(), wire.LORA_RANK: rank})
            content = RecordDict({wire.ARRAYS: record[wire.ARRAYS], wire.CONFIG: config})
            messages.append(Message(content=content, message_type=message_type, dst_node_id=node))
        return messages

    # -- what the delta kind asks -------------------------------------------------------------------
    def initial_global(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.dense:
            return state
        out = dict(state)
        if any(".lora_embedding_" in k for k in state):
            raise ConfigError(f"strategy={self.cfg.name} merges LoRA products into Linear layers; LoRA on embeddings "
                              "(method.target_modules) works with strategy=hetlora only")
        for module, (a, b) in lora_pairs(state).items():
            out[module + BASE_DELTA] = np.zeros((state[b].shape[0], state[a].shape[1]), dtype=np.float32)
        return out

    def client_state(self, global_state: Mapping[str, np.ndarray], node_id: int) -> dict[str, np.ndarray]:
        rank = self.node_rank(node_id)
        return {k: truncated(k, v, rank) for k, v in global_state.items() if not k.endswith(BASE_DELTA)}

    def reply_rank(self, reply: Message) -> int:
        """The rank a reply must have: its client's."""
        return self.node_rank(reply.metadata.src_node_id)

    def reply_shapes(self, global_shapes: Mapping[str, tuple[int, ...]], reply: Message) -> dict[str, tuple[int, ...]]:
        rank = self.reply_rank(reply)
        out = {}
        for k, shape in global_shapes.items():
            if k.endswith(BASE_DELTA):
                continue
            out[k] = (rank, shape[1]) if is_a(k) else (shape[0], rank) if is_b(k) else tuple(shape)
        return out

    # -- aggregation ------------------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        states = [{k: a.numpy() for k, a in c[wire.ARRAYS].items()} for c in contents]
        weights = np.array([float(c[wire.METRICS][wire.NUM_EXAMPLES]) for c in contents])
        weights = list(weights / weights.sum())
        new = self.aggregate_states(states, weights, self.current)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in new.items()}), metrics

    def aggregate_states(self, states: list[dict[str, np.ndarray]], weights: list[float],
                         global_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def others(states: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
        """Every non-LoRA tensor (the head), averaged by examples."""
        return {k: weighted_mean([s[k] for s in states], weights) for k in states[0] if module_of(k) is None}


def padded(name: str, value: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``value`` (a client's first ``r_k`` components) completed to ``base``'s rank with
    ``base``'s other components: zeros (HetLoRA's zero-padding) or the global values, what
    the client would have sent had it held the global rank and left the rest untouched."""
    out = np.array(base, np.float32)
    if is_a(name):
        out[: value.shape[0]] = value
    else:
        out[:, : value.shape[1]] = value
    return out


def zeros_at_rank(name: str, value: np.ndarray, rank: int) -> np.ndarray:
    """Zeros of ``value``'s LoRA factor at ``rank`` components."""
    return np.zeros((rank, value.shape[1]) if is_a(name) else (value.shape[0], rank), np.float32)


def holders_mean(name: str, values: list[np.ndarray], weights: list[float], current: np.ndarray) -> np.ndarray:
    """Each LoRA component (a row of A, a column of B) as the weighted mean over the
    clients whose rank includes it (weights renormalised per component); a component no
    client holds keeps its ``current`` value."""
    rank = current.shape[0] if is_a(name) else current.shape[1]
    total = np.zeros(rank, np.float64)
    acc = np.zeros(current.shape, np.float64)
    for v, w in zip(values, weights):
        r = v.shape[0] if is_a(name) else v.shape[1]
        total[:r] += w
        if is_a(name):
            acc[:r] += w * v
        else:
            acc[:, :r] += w * v
    held = total > 0
    out = np.array(current, np.float64)
    if is_a(name):
        out[held] = acc[held] / total[held, None]
    else:
        out[:, held] = acc[:, held] / total[held]
    return out.astype(np.float32)


class HetLoRA(HetRankStrategy):
    """Zero-padding aggregation (see the module docstring), with HetLoRA's rank
    self-pruning as an option (``strategy.self_pruning``): a client may reply with
    ``prune_width(rank, gamma)`` fewer components, and trains that rank from then on."""

    def __init__(self, cfg: Any, run: Any) -> None:
        super().__init__(cfg, run)
        self.pruned: dict[int, int] = {}  # identity -> its pruned rank

    def rank_for(self, identity: int) -> int:
        return min(super().rank_for(identity), self.pruned.get(identity, self.rank))

    def round_config(self) -> dict[str, Any]:
        if not self.cfg.self_pruning:
            return {}
        return {wire.PRUNE_LAMBDA: float(self.cfg.prune_lambda), wire.PRUNE_GAMMA: float(self.cfg.prune_gamma)}

    def reply_rank(self, reply: Message) -> int:
        given = super().reply_rank(reply)
        if self.cfg.self_pruning and not reply.has_error() and wire.ARRAYS in reply.content.array_records:
            got = rank_of({k: a for k, a in reply.content[wire.ARRAYS].items()})
            if got == given - prune_width(given, self.cfg.prune_gamma):
                return got
        return given

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        for reply in replies:
            node = reply.metadata.src_node_id
            got = rank_of({k: a.numpy() for k, a in reply.content[wire.ARRAYS].items()})
            if got and got < self.node_rank(node):
                self.pruned[self._identity.get(node, node)] = got
        return super().aggregate_train(server_round, replies)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"pruned": np.array(sorted(self.pruned.items()), dtype=np.int64).reshape(-1, 2)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.pruned = {int(i): int(r) for i, r in np.asarray(state.get("pruned", np.zeros((0, 2)))).reshape(-1, 2)}

    def aggregate_states(self, states, weights, global_state):
        out = self.others(states, weights)
        for module, (a, b) in lora_pairs(states[0]).items():
            w = weights
            if self.cfg.weighting == "norm":  # HetLoRA's sparsity-weighted aggregation
                norms = [float(np.linalg.norm(s[b] @ s[a])) for s in states]
                total = sum(norms)
                w = [n / total for n in norms] if total > 0 else weights
            for name in (a, b):
                values = [s[name] for s in states]
                if self.cfg.padding == "holders":
                    out[name] = holders_mean(name, values, w, global_state[name])
                    continue
                base = global_state[name] if self.cfg.padding == "global" else zeros_at_rank(name, values[0], self.rank)
                out[name] = weighted_mean([padded(name, v, base) for v in values], w)
        return out


class FLoRA(HetRankStrategy):
    """Stacking, merged into the dense global update (see the module docstring)."""

    dense = True

    def client_state(self, global_state, node_id):
        rank = self.node_rank(node_id)
        return {k: v if k.endswith(BASE_DELTA) else truncated(k, v, rank) for k, v in global_state.items()}

    def aggregate_states(self, states, weights, global_state):
        out = self.others(states, weights)
        for module, (a, b) in lora_pairs(states[0]).items():
            b_stack, a_stack = stack([(s[a], s[b]) for s in states], weights, self.scale)
            out[module + BASE_DELTA] = (global_state[module + BASE_DELTA] + b_stack @ a_stack).astype(np.float32)
            out[a], out[b] = global_state[a], global_state[b]  # fresh adapters next round: the initial ones
        return out


class FlexLoRA(HetRankStrategy):
    """Full-size average of the products, SVD down (see the module docstring)."""

    dense = True

    def client_state(self, global_state, node_id):
        rank = self.node_rank(node_id)
        out = {k: v for k, v in global_state.items() if module_of(k) is None and not k.endswith(BASE_DELTA)}
        for module, (a, b) in lora_pairs(global_state).items():
            out[a], out[b] = self.factors(module, a, global_state, rank)
        return out

    def factors(self, module: str, a: str, global_state: Mapping[str, np.ndarray], rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B)`` a rank-``rank`` client receives this round: the truncated SVD of the
        global ``dW`` (computed once per module and round)."""
        delta = global_state[module + BASE_DELTA]
        if module not in self._svd:
            self._svd[module] = np.linalg.svd(delta / self.scale, full_matrices=False)
        return svd_factors(delta, rank, self.scale, global_state[a], self._svd[module])

    def aggregate_states(self, states, weights, global_state):
        out = self.others(states, weights)
        for module, (a, b) in lora_pairs(states[0]).items():
            products = [self.scale * s[b] @ s[a] for s in states]
            if self.cfg.average == "updates":  # minus what each client started from: s B0 A0, dW's truncation
                delta = global_state[module + BASE_DELTA]
                starts = {}
                for rank in {s[a].shape[0] for s in states}:
                    a0, b0 = self.factors(module, a, global_state, rank)
                    starts[rank] = self.scale * b0 @ a0
                products = [p + delta - starts[s[a].shape[0]] for p, s in zip(products, states)]
            out[module + BASE_DELTA] = weighted_mean(products, weights)
            out[a], out[b] = global_state[a], np.zeros_like(global_state[b])  # the product lives in base_delta
        return out
