"""Forward gradients on the PEFT parameters, as FwdLLM clients compute them (Xu et al.,
"FwdLLM: Efficient FedLLM using Forward Gradient", 2024; server side in
``strategies/fwdllm.py``).

FedSGD-style: the parameters ``w`` never change on the client. For ``n`` perturbations
``z_j = z(s_j)`` (Gaussian, regenerated from pool seeds by :mod:`kernels`) and the
round's ``steps`` batches, the client measures the directional derivatives

    d_j = grad L(w) . z_j        averaged over the batches

and replies the pairs ``(index_j, d_j / n)``: its gradient estimate is
``g_hat = (1/n) sum_j d_j z_j = sum_j scalar_j z_j``, unbiased for ``grad L(w)`` since
``E[z z^T] = I``. The server's step is ``-lr * (example-weighted mean of g_hat)``.

``d_j`` comes from one of two modes (``method.fg_mode``):

- ``jvp``: exact forward-mode AD, ``torch.func.jvp`` of the loss as a function of the
  trainable tensors (``torch.func.functional_call``), vmapped over a chunk of tangents
  so the primal forward runs once per batch and chunk. SDPA attention runs its math
  kernel here (the fused CPU kernel has no forward-mode formula). bitsandbytes k-bit
  layers silently drop tangents (the derivative comes out 0), so quantized backbones
  need ``fd``: this is a ConfigError at construction, never a silent fallback. Any other
  op without forward AD falls back to ``fd`` with a warning, once per process.
- ``fd``: the central difference ``(L(w + eps z) - L(w - eps z)) / (2 eps)``, as FwdLLM's
  code does (eps = ``method.zo_eps``, 1e-2 there); PEFT parameters are restored from a
  copy after each perturbation, so they are bit-for-bit unchanged.

Either way the frozen layers below the perturbed ones (``method.lora_layers``,
``zo_params=head``) run once per batch: ``fd`` replays them (:mod:`client.methods.prefix_cache`),
``jvp`` recomputes them once per vmapped chunk of ``method.jvp_chunk`` tangents (they
carry no tangent, but the primal forward runs per call).

Which perturbations: the pool indices the server assigned (uniform draws, or FwdLLM's
discriminative sampling, which the server does: ``strategies/fwdllm.py``). A perturbation
with a non-finite loss or derivative is sent as 0 (the mean is over the kept ones); all
skipped raises ``FloatingPointError``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from client.batches import forward_loss
from client.methods.base import Update
from client.methods.configs import ForwardGradConfig  # noqa: F401  (re-exported)
from client.methods.seeded import RoundSettings, SeededMethod
from kernels import perturb_
from strategies import wire
from strategies.runconfig import ConfigError

log = logging.getLogger("anther.client")

JVP_TANGENT_ELEMENTS = 1 << 24  # and at most this many tangent elements at once (64 MB fp32)


class _LossOf(torch.nn.Module):
    """``forward(batch) -> loss`` of a model, for ``torch.func.functional_call``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return forward_loss(self.inner, batch)[0]


class ForwardGradMethod(SeededMethod):
    """FwdLLM's client: forward-gradient (seed, directional derivative / n) pairs, no step."""

    name = "forward_grad"

    def __init__(self, backbone: Any, cfg: Any) -> None:
        if cfg.method.fg_mode == "jvp" and cfg.quant.mode != "none":
            raise ConfigError(
                f"method.fg_mode=jvp on a quant={cfg.quant.mode} backbone: bitsandbytes layers have no "
                "forward-mode AD (their tangents come out 0); use method.fg_mode=fd"
            )
        super().__init__(backbone, cfg)
        self.mode = cfg.method.fg_mode
        self._loss_of = _LossOf(self.model)

    # -- one round ---------------------------------------------------------------------------
    def local_train(self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]) -> Update:
        t0 = time.perf_counter()
        rs = self.settings(round_config, steps)
        n = max(1, min(rs.perturbations, rs.max_pairs))
        data = [next(batches) for _ in range(max(steps, 1))]
        index = rs.take(n)
        seeds = [int(rs.pool[k]) for k in index]
        deriv, loss = self.directional_derivatives(seeds, data, rs)
        ok = np.isfinite(deriv)
        if not ok.any():
            raise FloatingPointError(f"every one of {len(seeds)} perturbations gave a non-finite loss or derivative")
        kept = int(ok.sum())
        scalar = np.where(ok, deriv / kept, 0.0).astype(np.float32)
        metrics = {wire.TRAIN_LOSS: loss, wire.TRAIN_SECONDS: time.perf_counter() - t0}
        if kept < len(seeds):
            metrics["skipped"] = len(seeds) - kept
        return Update(metrics=metrics, pairs=(index, scalar))

    # -- directional derivatives --------------------------------------------------------------
    def directional_derivatives(
        self, seeds: list[int], data: list[dict[str, torch.Tensor]], rs: RoundSettings
    ) -> tuple[np.ndarray, float]:
        """``(d, loss)``: ``d[j] = mean_b grad L_b(w) . z(seeds[j])`` (NaN where non-finite)
        and the mean loss at ``w``."""
        if self.mode == "jvp":
            try:
                return self._jvp(seeds, data, rs)
            except (NotImplementedError, RuntimeError) as err:
                log.warning("forward_grad: jvp is unsupported by this backbone (%s); using fd from now on", err)
                self.mode = "fd"
        return self._fd(seeds, data, rs)

    def _jvp(self, seeds: list[int], data: list[dict[str, torch.Tensor]], rs: RoundSettings) -> tuple[np.ndarray, float]:
        named = self.trainable_parameters()
        primals = {f"inner.{k}": p.detach() for k, p in named}
        numel = sum(p.numel() for _, p in named)
        chunk = max(1, min(len(seeds), self.cfg.method.jvp_chunk, JVP_TANGENT_ELEMENTS // max(numel, 1)))
        deriv = np.zeros(len(seeds))
        losses: list[float] = []
        with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            for lo in range(0, len(seeds), chunk):
                part = seeds[lo : lo + chunk]
                tangents = {k: torch.zeros((len(part), *p.shape), dtype=p.dtype) for k, p in primals.items()}
                for j, s in enumerate(part):
                    perturb_([t[j] for t in tangents.values()], s, 1.0, rs.dist, rs.backend)
                for batch in data:

                    def loss_at(prm, batch=batch):
                        return torch.func.functional_call(self._loss_of, prm, (batch,), strict=False)

                    def one(tangent):
                        return torch.func.jvp(loss_at, (primals,), (tangent,))

                    loss, d = torch.func.vmap(one)(tangents)  # (chunk,) each
                    deriv[lo : lo + len(part)] += d.double().numpy() / len(data)
                    if lo == 0:
                        losses.append(float(loss[0]))
        mean_loss = float(np.mean(losses))
        if not math.isfinite(mean_loss):
            deriv[:] = np.nan
        return np.where(np.isfinite(deriv), deriv, np.nan), mean_loss

    def _fd(self, seeds: list[int], data: list[dict[str, torch.Tensor]], rs: RoundSettings) -> tuple[np.ndarray, float]:
        params, eps = self.seed_params(), rs.eps
        snap = self.snapshot()
        diff = np.empty((len(data), len(seeds)))  # (L(w + eps z) - L(w - eps z)) / 2 eps per batch
        mid = np.empty((len(data), len(seeds)))  # (L(w + eps z) + L(w - eps z)) / 2
        for b, batch in enumerate(data):
            with self.prefix.reuse():  # layers below the perturbed ones run once per batch
                for j, s in enumerate(seeds):
                    perturb_(params, s, eps, rs.dist, rs.backend)
                    up = self.loss(batch)
                    perturb_(params, s, -2 * eps, rs.dist, rs.backend)
                    down = self.loss(batch)
                    if snap is not None:
                        self.restore(snap, rs, [], [])  # exact
                    else:
                        perturb_(params, s, eps, rs.dist, rs.backend)  # full models: fp32 rounding remains
                    diff[b, j], mid[b, j] = (up - down) / (2 * eps), 0.5 * (up + down)
        with np.errstate(invalid="ignore"):
            deriv, loss = diff.mean(0), mid.mean(0)
        ok = np.isfinite(deriv) & np.isfinite(loss)
        return np.where(ok, deriv, np.nan), float(loss[ok].mean()) if ok.any() else float("nan")
