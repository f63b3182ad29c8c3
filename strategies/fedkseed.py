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
(temperature 1), recomputed every round and sent with the round's downlink.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

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

    def probabilities(self) -> np.ndarray:
        """Seed sampling probabilities (K,), float32; uniform before any scalar is seen."""
        imp = np.where(self.count > 0, self.abs_sum / np.maximum(self.count, 1), 0.0)
        span = imp.max() - imp.min()
        norm = (imp - imp.min()) / (span + 1e-10)
        p = np.exp(norm - norm.max())
        return (p / p.sum()).astype(np.float32)

    def extra_records(self, rnd: int, ask: int) -> dict[str, ArrayRecord]:
        return {sd.PROBS: ArrayRecord({"p": Array(self.probabilities())})}

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
