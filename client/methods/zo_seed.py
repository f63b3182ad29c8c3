"""Zeroth-order local training with seeds: MeZO (Malladi et al., NeurIPS 2023) steps as
FedKSeed (Qin et al., ICML 2024) runs them on clients.

One step on a batch, for each of ``n`` perturbations with the next seed ``s`` the server
assigned from the round's pool (uniform, or FedKSeed-Pro's probabilities)::

    w += eps z(s);   L+ = L(w)          # z regenerated from s, never stored
    w -= 2 eps z(s); L- = L(w)
    g = (L+ - L-) / (2 eps)             # projected gradient (central difference)
    w += eps z(s)                       # restore
    w -= lr * (g / n) * z(s)            # SGD along z  (for n = 1 fused with the restore)

The reply is only the scalars ``g / n``, one per assigned seed in order: the local change
is exactly ``-lr * sum_j (g_j / n) z(s_j)``. Forward passes run without autograd, so
memory is the model's inference footprint plus one tile of ``z``. A perturbation whose
loss is not finite is skipped (restored, sent as 0), as in FedKSeed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from client.methods.base import Update
from client.methods.configs import ZoSeedConfig  # noqa: F401  (re-exported)
from client.methods.seeded import RoundSettings, SeededMethod
from kernels import accumulate_, perturb_
from strategies import wire


class ZoSeedMethod(SeededMethod):
    """MeZO/SPSA steps over the PEFT (or all) parameters; replies (seed, scalar) pairs."""

    name = "zo_seed"

    def local_train(self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]) -> Update:
        rs = self.settings(round_config, steps)
        n = rs.perturbations
        steps = min(steps, max(rs.max_pairs // n, 1))
        snap = self.snapshot()
        done: list[tuple[int, float, int, float]] = []  # (pool index, scalar, seed, applied coeff)
        total, seen, skipped = 0.0, 0.0, 0
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            with self.prefix.reuse():  # layers below the perturbed ones run once per batch
                step = self._step(batch, rs)
            rows = int(batch["input_ids"].shape[0])
            for k, sc, s, coeff, mean_loss in step:
                done.append((k, sc, s, coeff))
                if math.isfinite(mean_loss):
                    total += mean_loss * rows / n
                    seen += rows / n
                else:
                    skipped += 1
        if not seen:
            raise FloatingPointError(f"every one of {len(done)} perturbed losses was non-finite")
        self.restore(snap, rs, [d[2] for d in done], [d[3] for d in done])
        metrics = {wire.TRAIN_LOSS: total / seen, wire.TRAIN_SECONDS: time.perf_counter() - t0}
        if skipped:
            metrics["skipped"] = skipped
        pairs = (np.asarray([d[0] for d in done], dtype=np.int64), np.asarray([d[1] for d in done], dtype=np.float32))
        return Update(metrics=metrics, pairs=pairs)

    def _step(self, batch: dict[str, torch.Tensor], rs: RoundSettings) -> list[tuple[int, float, int, float, float]]:
        """One step: central differences for ``n`` pool draws on ``batch``, then the SGD
        update along them (fused with the restore when ``n == 1``)."""
        params, n, eps = self.seed_params(), rs.perturbations, rs.eps
        out = []
        for k in rs.take(n).tolist():
            s = int(rs.pool[k])
            perturb_(params, s, eps, rs.dist, rs.backend)
            up = self.loss(batch)
            perturb_(params, s, -2 * eps, rs.dist, rs.backend)
            down = self.loss(batch)
            if not (math.isfinite(up) and math.isfinite(down)):
                perturb_(params, s, eps, rs.dist, rs.backend)  # restore; its scalar is 0
                out.append((k, 0.0, s, 0.0, math.nan))
                continue
            sc = float(np.float32((up - down) / (2 * eps) / n))  # exactly what the server sees
            coeff = -rs.lr * sc
            perturb_(params, s, eps + coeff if n == 1 else eps, rs.dist, rs.backend)
            out.append((k, sc, s, coeff, 0.5 * (up + down)))
        if n > 1 and out:
            accumulate_(params, [o[2] for o in out if o[3]], [o[3] for o in out if o[3]], rs.dist, rs.backend)
        return out
