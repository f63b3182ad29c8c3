"""Seeded client sampling over stable client identities.

Flower node ids are random per run, so the server first learns each node's identity
(its ``partition-id`` in simulation, else its node id) and samples identities with its
own ``numpy.random.Generator`` — never the global RNG — whose state is checkpointed.
Strategies see a :class:`SampledGrid` that exposes only the sampled nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


class ClientSampler:
    """Draw ``k`` distinct client identities per round, reproducibly."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def sample(self, identities: Sequence[int], k: int) -> list[int]:
        """Return ``k`` identities, sorted, drawn without replacement."""
        pool = sorted(identities)
        picked = self.rng.choice(len(pool), size=min(k, len(pool)), replace=False)
        return sorted(pool[i] for i in picked)

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


class SampledGrid:
    """A Flower ``Grid`` proxy whose ``get_node_ids`` returns only ``node_ids``.

    Given a mapping ``node id -> identity``, ``identity_of`` exposes it (strategies that
    track per-client state, e.g. seed strategies' sync rounds, key it by identity).
    """

    def __init__(self, grid: Any, node_ids: Iterable[int] | Mapping[int, int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)
        self.identity_of = dict(node_ids) if isinstance(node_ids, Mapping) else {}

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
