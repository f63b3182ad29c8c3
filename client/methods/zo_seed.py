"""Zeroth-order local training with seeds: MeZO (Malladi et al., NeurIPS 2023) steps as
FedKSeed (Qin et al., ICML 2024) runs them on clients.

One step on a batch, for each of ``n`` perturbations with a seed ``s`` from the round's
pool (uniform, or FedKSeed-Pro's probabilities)::

    w += eps z(s);   L+ = L(w)          # z regenerated from s, never stored
    w -= 2 eps z(s); L- = L(w)
    g = (L+ - L-) / (2 eps)             # projected gradient (central difference)
    w += eps z(s)                       # restore
    w -= lr * (g / n) * z(s)            # SGD along z  (for n = 1 fused with the restore)

The reply is only the (pool index, g / n) pairs: the local change is exactly
``-lr * sum_j (g_j / n) z(s_j)``. Forward passes run without autograd, so memory is the
model's inference footprint plus one tile of ``z``. A perturbation whose loss is not
finite is skipped (restored, not sent), as in FedKSeed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from client.methods.base import Update, register
from client.methods.seeded import SeededMethod
from kernels import accumulate_, perturb_
from strategies import wire


@register("zo_seed")
class ZoSeedMethod(SeededMethod):
    """MeZO/SPSA steps over the PEFT (or all) parameters; replies (seed, scalar) pairs."""

    name = "zo_seed"

    def local_train(self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]) -> Update:
        rs = self.settings(round_config, steps)
        n, eps, lr = rs.perturbations, rs.eps, rs.lr
        steps = min(steps, max(rs.max_pairs // n, 1))
        params = self.seed_params()
        snap = self.snapshot()
        index: list[int] = []
        scalar: list[float] = []
        applied_seeds: list[int] = []
        applied: list[float] = []
        total, seen, skipped = 0.0, 0, 0
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            step_seeds, step_coeffs = [], []
            for k in rs.draw(n).tolist():
                s = int(rs.pool[k])
                perturb_(params, s, eps, rs.dist, rs.backend)
                up = self.loss(batch)
                perturb_(params, s, -2 * eps, rs.dist, rs.backend)
                down = self.loss(batch)
                if not (math.isfinite(up) and math.isfinite(down)):
                    perturb_(params, s, eps, rs.dist, rs.backend)
                    skipped += 1
                    continue
                sc = float(np.float32((up - down) / (2 * eps) / n))  # what the server sees
                coeff = -lr * sc
                if n == 1:
                    perturb_(params, s, eps + coeff, rs.dist, rs.backend)
                else:
                    perturb_(params, s, eps, rs.dist, rs.backend)
                    step_seeds.append(s)
                    step_coeffs.append(coeff)
                index.append(k)
                scalar.append(sc)
                applied_seeds.append(s)
                applied.append(coeff)
                rows = int(batch["input_ids"].shape[0])
                total += 0.5 * (up + down) * rows / n
                seen += rows / n
            if step_seeds:
                accumulate_(params, step_seeds, step_coeffs, rs.dist, rs.backend)
        if not index:
            raise FloatingPointError(f"every one of {steps * n} perturbed losses was non-finite")
        self.restore(snap, rs, applied_seeds, applied)
        metrics = {
            wire.TRAIN_LOSS: total / max(seen, 1e-9),
            wire.TRAIN_SECONDS: time.perf_counter() - t0,
            "pairs": len(index),
            "skipped": skipped,
        }
        pairs = (np.asarray(index, dtype=np.int64), np.asarray(scalar, dtype=np.float32))
        return Update(kind=wire.KIND_SEEDS, state={}, num_examples=0, metrics=metrics, pairs=pairs)
