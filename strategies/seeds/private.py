"""Client-level DP for seed updates (``dp=server`` with FedKSeed, FedKSeed-Pro, FwdLLM).

What a client contributes to a round is its vector of per-seed sums over the pool,
``a_c[k] = sum_{j: index_j = k} scalar_j`` (its local change is ``-lr sum_k a_c[k] z_k``).
The server clips each ``a_c`` to L2 norm ``dp.clip``, sums them, adds Gaussian noise of
standard deviation ``noise_multiplier * clip`` to every one of the pool's ``K`` seeds (not
only those the clients used: which seeds carry signal must not show), and divides by
``clients_per_round``. The round's update then moves along all ``K`` perturbations.

What it guarantees: the sequence of released coefficient vectors, and so the model (a
function of them and of the public seeds), is (epsilon, delta)-DP with respect to one
client's whole participation, as accounted by :mod:`strategies.dp`, given that the
server clips and adds the noise honestly. It does not cover what clients send in clear
beside their scalars (example counts, losses, timings). Cost: every round applies, and
clients replay, ``K`` perturbations instead of the few hundred used; with LoRA
parameters (``method.zo_params=peft``) that is cheap, with a whole model it is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from strategies.seeds.replies import SeedReply


class SeedPrivacy:
    """The server's clipping, noise and accounting for one seed strategy."""

    def __init__(self, cfg: Any, sigma: float, num_clients: int, clients_per_round: int, key: int) -> None:
        self.cfg, self.sigma = cfg, sigma
        self.num_clients, self.per_round, self.key = num_clients, clients_per_round, key
        self.samples: list[int] = []

    def coefficients(self, replies: Sequence[SeedReply], scale: float, pool_size: int, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        total = np.zeros(pool_size, dtype=np.float64)
        for r in replies:
            a = np.zeros(pool_size, dtype=np.float64)
            np.add.at(a, np.asarray(r.index, dtype=np.int64), np.asarray(r.scalar, dtype=np.float64))
            norm = float(np.linalg.norm(a))
            total += a * (min(1.0, self.cfg.clip / norm) if norm > 0 else 1.0)
        rng = np.random.default_rng([self.key & 0xFFFFFFFF, self.key >> 32, rnd, 0x5D])
        noisy = (total + rng.normal(0.0, self.sigma * self.cfg.clip, pool_size)) / self.per_round
        return np.arange(pool_size, dtype=np.int64), (scale * noisy).astype(np.float32)

    def account(self, asked: int) -> dict[str, float]:
        """Record one release that sampled ``asked`` clients; the metrics to report."""
        from strategies.dp import epsilon

        self.samples.append(asked)
        eps = epsilon(self.sigma, self.samples, self.num_clients, self.cfg.delta)
        return {"epsilon": eps, "dp-noise-multiplier": self.sigma}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"dp/samples": np.asarray(self.samples, dtype=np.int64), "dp/key": np.asarray([self.key], dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.samples = [int(v) for v in state.get("dp/samples", np.zeros(0, np.int64))]
        if "dp/key" in state:
            self.key = int(state["dp/key"][0])
