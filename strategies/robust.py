"""Byzantine-robust aggregation (``robust=``) as a wrapper over any delta strategy.

The wrapper stands between the round loop and the configured strategy (FedAvg, FedAdam,
FedAvgM, ... or a user's): it turns the round's screened replies into what the inner
strategy then aggregates as usual, so its server optimizer, momentum and checkpointed
state work unchanged.

clip          each update ``d = state - global`` is scaled to norm at most ``max_norm``
              (0: the round's median update norm); the inner strategy averages them.
median        the coordinate-wise median of the states (Yin et al., 2018).
trimmed_mean  the coordinate-wise mean after cutting the ``beta`` fraction of largest and
              of smallest values (Yin et al., 2018).
krum          the one state with the smallest sum of squared distances to its
              ``n - f - 2`` nearest neighbours (Blanchard et al., 2017); needs n > 2f + 2.
multikrum     the inner strategy averages the ``num_selected`` best-scored states
              (0: ``n - f``).
bulyan        Krum picks ``n - 2f`` states one by one; then, per coordinate, the mean of
              the ``n - 4f`` values closest to their median (El Mhamdi et al., 2018);
              needs n >= 4f + 3.

median, trimmed_mean, krum and bulyan produce one state, handed to the inner strategy
as a single reply carrying the round's total ``num-examples``. The selection rules reuse
Flower's own (``flwr.server.strategy.aggregate``: each builds a clients x parameters
matrix, which PEFT states keep small). When screening leaves fewer replies than a rule
needs, that round falls back to the median, with a warning. Replies of different shapes
(heterogeneous LoRA ranks) are not supported: a config error says so.

Seed strategies (FedKSeed, FwdLLM) take ``clip`` and ``median`` on their clients'
scalars instead (:func:`strategies.seeds.replies.robust_coefficients`): clip bounds each
client's scalar vector, median replaces each seed's mean over the clients that used it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from strategies import wire
from strategies.plugins import Registry
from strategies.runconfig import check

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord

log = logging.getLogger("anther.server")


@dataclass(frozen=True)
class RobustConfig:
    """``robust.name``: none (the strategy as it is) or a robust rule below."""

    name: str = "none"

    def min_replies(self) -> int:
        """Fewest replies the rule needs (the config check compares clients_per_round)."""
        return 1

    def requirement(self) -> str:
        return ""


@dataclass(frozen=True)
class ClipConfig(RobustConfig):
    """max_norm: the largest update norm kept (0: the round's median update norm)."""

    name: str = "clip"
    max_norm: float = 0.0

    def __post_init__(self) -> None:
        check(self.max_norm >= 0, "robust.max_norm", "a number >= 0 (0: the round's median norm)", self.max_norm)


@dataclass(frozen=True)
class TrimmedMeanConfig(RobustConfig):
    """beta: the fraction cut at each end of every coordinate, in [0, 0.5)."""

    name: str = "trimmed_mean"
    beta: float = 0.2

    def __post_init__(self) -> None:
        check(0 <= self.beta < 0.5, "robust.beta", "a number in [0, 0.5)", self.beta)


@dataclass(frozen=True)
class KrumConfig(RobustConfig):
    """num_malicious: f, the attackers the rule tolerates among a round's replies."""

    name: str = "krum"
    num_malicious: int = 1

    def __post_init__(self) -> None:
        check(self.num_malicious >= 0, "robust.num_malicious", "an integer >= 0", self.num_malicious)

    def min_replies(self) -> int:
        return 2 * self.num_malicious + 3

    def requirement(self) -> str:
        return f"n > 2f + 2 = {2 * self.num_malicious + 2}"


@dataclass(frozen=True)
class MultiKrumConfig(KrumConfig):
    """As krum; num_selected: the states averaged (0: n - f)."""

    name: str = "multikrum"
    num_selected: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_selected >= 0, "robust.num_selected", "an integer >= 0 (0: n - f)", self.num_selected)


@dataclass(frozen=True)
class BulyanConfig(KrumConfig):
    """As krum, with n >= 4f + 3."""

    name: str = "bulyan"

    def min_replies(self) -> int:
        return 4 * self.num_malicious + 3

    def requirement(self) -> str:
        return f"n >= 4f + 3 = {4 * self.num_malicious + 3}"


@dataclass(frozen=True)
class MedianConfig(RobustConfig):
    """The coordinate-wise median: no settings."""

    name: str = "median"


ROBUST = Registry("robust", RobustConfig)
for _cfg in (RobustConfig, ClipConfig, MedianConfig, TrimmedMeanConfig, KrumConfig, MultiKrumConfig, BulyanConfig):
    ROBUST.add(_cfg.name, _cfg, "strategies.robust:RobustStrategy")


def _flatten(replies: list[Message], keys: list[str]) -> list[tuple[list[np.ndarray], int]]:
    return [([r.content[wire.ARRAYS][k].numpy() for k in keys], int(r.content[wire.METRICS][wire.NUM_EXAMPLES]))
            for r in replies]


def _as_reply(template: Message, keys: list[str], arrays: list[np.ndarray], examples: int) -> Message:
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    content = RecordDict({
        wire.ARRAYS: ArrayRecord({k: Array(np.asarray(a, dtype=np.float32)) for k, a in zip(keys, arrays)}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: examples}),
    })
    return Message(content, reply_to=template)


class RobustStrategy:
    """A delta strategy (``inner``) whose replies pass a robust rule first; every other
    attribute and the checkpointed state are the inner strategy's."""

    def __init__(self, inner: Any, cfg: RobustConfig) -> None:
        self.inner, self.cfg = inner, cfg
        self._global: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Any) -> Iterable[Message]:
        self._global = {k: a.numpy() for k, a in arrays.items()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if replies:
            replies = self.robust_replies(server_round, replies)
        return self.inner.aggregate_train(server_round, replies)

    def robust_replies(self, rnd: int, replies: list[Message]) -> list[Message]:
        """What the inner strategy aggregates instead of ``replies``."""
        keys = sorted(replies[0].content[wire.ARRAYS].keys())
        results = _flatten(replies, keys)
        examples = sum(n for _, n in results)
        name, need = self.cfg.name, self.cfg.min_replies()
        if len(replies) < need:
            log.warning("round %d: %d replies, fewer than robust=%s needs (%s); using the median this round",
                        rnd, len(replies), name, self.cfg.requirement())
            name = "median"
        from flwr.server.strategy import aggregate as fl

        if name == "clip":
            return [_as_reply(r, keys, arrays, n) for r, (arrays, n) in zip(replies, self._clipped(results, keys))]
        if name == "multikrum":
            return [replies[i] for i in self._krum_selection(results)]
        if name == "median":
            agg = fl.aggregate_median(results)
        elif name == "trimmed_mean":
            agg = fl.aggregate_trimmed_avg(results, self.cfg.beta)
        elif name == "krum":
            agg = fl.aggregate_krum(results, self.cfg.num_malicious, to_keep=0)
        else:  # bulyan (it consumes its list)
            agg = fl.aggregate_bulyan(list(results), self.cfg.num_malicious, fl.aggregate_krum, to_keep=0)
        return [_as_reply(replies[0], keys, agg, examples)]

    def _clipped(self, results: list[tuple[list[np.ndarray], int]], keys: list[str]) -> list[tuple[list[np.ndarray], int]]:
        ref = [np.asarray(self._global[k], dtype=np.float64) for k in keys]
        deltas = [[np.asarray(a, dtype=np.float64) - g for a, g in zip(arrays, ref)] for arrays, _ in results]
        norms = [float(np.sqrt(sum(float(np.vdot(d, d)) for d in ds))) for ds in deltas]
        bound = self.cfg.max_norm or float(np.median(norms))
        out = []
        for ds, norm, (_, n) in zip(deltas, norms, results):
            scale = min(1.0, bound / norm) if norm > 0 else 1.0
            out.append(([g + d * scale for g, d in zip(ref, ds)], n))
        return out

    def _krum_selection(self, results: list[tuple[list[np.ndarray], int]]) -> list[int]:
        """Indices of the ``num_selected`` best Krum scores (MultiKrum), in reply order."""
        n, f = len(results), self.cfg.num_malicious
        flat = np.stack([np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64) for arrays, _ in results])
        sq = (flat * flat).sum(1)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)  # squared distances, n x n
        closest = max(1, n - f - 2)
        scores = [np.sort(row)[1:closest + 1].sum() for row in dist]
        keep = self.cfg.num_selected or max(1, n - f)
        return sorted(np.argsort(scores, kind="stable")[:keep].tolist())

    def state_dict(self) -> dict[str, np.ndarray]:
        from strategies.state import get_strategy_state

        return get_strategy_state(self.inner)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        from strategies.state import set_strategy_state

        set_strategy_state(self.inner, state)


SEED_RULES = ("clip", "median")  # the rules seed strategies apply to their scalars


def wrap(strategy: Any, cfg: RobustConfig) -> Any:
    """``strategy`` behind the configured robust rule (as it is with ``robust=none``);
    a seed strategy applies ``clip`` or ``median`` to its clients' scalars itself."""
    if cfg.name == "none":
        return strategy
    if getattr(strategy, "update_kind", "delta") == wire.KIND_SEEDS:
        strategy.robust = (cfg.name, float(getattr(cfg, "max_norm", 0.0)))
        return strategy
    return RobustStrategy(strategy, cfg)
