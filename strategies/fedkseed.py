"""FedKSeed and FedKSeed-Pro (Qin et al., ICML 2024, "Federated Full-Parameter Tuning
of Billion-Sized Language Models with Communication Cost under 18 Kilobytes").

Clients run MeZO steps (``client/methods/zo_seed.py``) whose perturbations come from
one pool of K candidate seeds fixed for the run, and send one (seed index, projected
gradient) pair per step. The server sums each seed's scalars weighted by the clients'
example counts and applies the round's update once (:class:`SeedStrategy`); with
zero weight decay this equals FedAvg of the clients' local deltas exactly.

FedKSeed-Pro samples seeds non-uniformly: a seed's importance is the mean absolute
projected gradient it has received so far (scalars clipped to ``PRO_CLIP``); the
importances are min-max normalised and turned into probabilities by a softmax
(temperature 1), recomputed every round. The server draws each request's seeds from
them and sends the chosen pool indices down (``zo-assigned``, 2 bytes each) instead of
the K probabilities.
"""

from __future__ import annotations

import numpy as np

from strategies import seeds as sd
from strategies.seed_strategy import SeedStrategy

PRO_CLIP = 1000.0  # |projected gradient| clip for the importance statistics


class FedKSeed(SeedStrategy):
    """Uniform sampling from a fixed pool of K seeds."""


class FedKSeedPro(SeedStrategy):
    """FedKSeed with importance-weighted seed probabilities."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        k = self.cfg.num_seeds
        self.abs_sum = np.zeros(k, dtype=np.float64)
        self.count = np.zeros(k, dtype=np.int64)
        self._probs: tuple[int, np.ndarray] | None = None  # (round, probabilities) of the current round

    def probabilities(self) -> np.ndarray:
        """Seed sampling probabilities (K,), float32; uniform before any scalar is seen."""
        imp = np.where(self.count > 0, self.abs_sum / np.maximum(self.count, 1), 0.0)
        span = imp.max() - imp.min()
        norm = (imp - imp.min()) / (span + 1e-10)
        p = np.exp(norm - norm.max())
        return (p / p.sum()).astype(np.float32)

    def assign(self, rnd: int, ask: int, draw: int) -> tuple[np.ndarray, bool]:
        if self._probs is None or self._probs[0] != rnd:
            p = self.probabilities().astype(np.float64)
            self._probs = (rnd, p / p.sum())
        rng = np.random.default_rng(draw)
        return rng.choice(self.cfg.num_seeds, size=self.max_pairs(), p=self._probs[1]).astype(np.int64), True

    def on_round_aggregated(self, rnd: int, replies: list[sd.SeedReply]) -> None:
        for r in replies:
            np.add.at(self.abs_sum, r.index, np.abs(np.clip(r.scalar, -PRO_CLIP, PRO_CLIP)))
            np.add.at(self.count, r.index, 1)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**super().state_dict(), "pro/abs_sum": self.abs_sum, "pro/count": self.count}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if "pro/abs_sum" in state:
            self.abs_sum = np.asarray(state["pro/abs_sum"], dtype=np.float64).copy()
            self.count = np.asarray(state["pro/count"], dtype=np.int64).copy()
