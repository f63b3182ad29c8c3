"""Shared machinery of backprop-free methods whose updates are (seed, scalar) pairs.

The perturbed parameters are the PEFT ones (LoRA + head, on any backbone including
nf4/int8) or, with ``method.zo_params=all``, every parameter of an unquantized
backbone. They are visited in sorted-name order, the order the seeded element indices
refer to (:func:`strategies.seeds.ordered`). Nothing here keeps activations or stores a
perturbation: ``z`` is regenerated from its seed by :mod:`kernels` whenever needed, so
memory is the model's inference footprint plus one tile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from client.batches import forward_loss
from client.methods.base import load_named
from client.methods.configs import SeededConfig  # noqa: F401  (re-exported)
from client.methods.lora import peft_model
from client.methods.prefix_cache import FrozenPrefix
from kernels import accumulate_
from strategies import seeds as sd
from strategies import wire
from strategies.runconfig import ConfigError

# Used only when no seed strategy sends the round's settings (stand-alone use, tests).
DEFAULT_POOL, DEFAULT_PERTURBATIONS, DEFAULT_DIST = 4096, 1, "gaussian16"


@dataclass
class RoundSettings:
    """What the round config prescribes (falling back to the client's method config)."""

    pool: np.ndarray  # (K,) int64 seeds
    indices: np.ndarray  # (max_pairs,) int64: the pool indices the server assigned, in order
    lr: float
    eps: float
    dist: str
    perturbations: int
    max_pairs: int
    backend: str
    used: int = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` assigned pool indices (fewer when the assignment runs out)."""
        out = self.indices[self.used : self.used + n]
        self.used += len(out)
        return out


def _in_head(name: str, heads: tuple[str, ...]) -> bool:
    return any(f".{h}." in f".{name}" for h in heads)


class SeededMethod:
    """Base of zo_seed and forward_grad: parameter selection, settings, restore."""

    kind = wire.KIND_SEEDS

    def __init__(self, backbone: Any, cfg: Any) -> None:
        self.cfg = cfg
        m = cfg.method
        if m.zo_params == "all":
            if cfg.quant.mode != "none":
                raise ConfigError(
                    f"method.zo_params=all perturbs every weight, which needs an unquantized backbone "
                    f"(quant={cfg.quant.mode}); use zo_params=peft on nf4/int8 backbones"
                )
            self.model = backbone.model
            for p in self.model.parameters():
                p.requires_grad_(p.is_floating_point())
        elif m.zo_params == "head":
            if not backbone.head_modules:
                raise ConfigError(
                    f"method.zo_params=head trains the task head, but {cfg.model.name} as {backbone.task} has none; "
                    "use model.task=classification or zo_params=peft"
                )
            self.model = backbone.model
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.split(".")[0] in backbone.head_modules or _in_head(name, backbone.head_modules))
                if p.requires_grad:
                    p.data = p.data.float()
        else:
            self.model = peft_model(backbone, cfg)
        self.model.eval()
        self.prefix = FrozenPrefix(self.model, [p for _, p in self.trainable_parameters()])
        self.synced: tuple[str, int] | None = None  # (run id, global round) the parameters hold
        self.pristine = True  # the parameters are still the loaded initial state

    # -- state ------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return sorted((n, p) for n, p in self.model.named_parameters() if p.requires_grad)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable_parameters()}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_named(dict(self.trainable_parameters()), state)
        self.synced = None
        self.pristine = False

    def seed_params(self) -> list[torch.Tensor]:
        """The perturbed tensors in the canonical order."""
        return [p.data for _, p in self.trainable_parameters()]

    @property
    def exact_restore(self) -> bool:
        """PEFT and head state is small: keep a copy; full models undo their update instead."""
        return self.cfg.method.zo_params != "all"

    # -- per round ----------------------------------------------------------------------------
    def settings(self, rc: Mapping[str, Any], steps: int) -> RoundSettings:
        self.pristine = False  # local steps follow (restored up to fp32 rounding at most)
        m = self.cfg.method
        size = int(rc.get(sd.POOL_SIZE, DEFAULT_POOL))
        pool = sd.seed_pool(int(rc.get(sd.POOL_SEED, self.cfg.seed)), size, int(rc.get(sd.POOL_ROUND, 0)))
        n = int(rc.get(sd.PERTURBATIONS, DEFAULT_PERTURBATIONS))
        max_pairs = int(rc.get(sd.MAX_PAIRS, steps * n))
        indices = rc.get(sd.ASSIGNED)
        if indices is None:  # the server's draw seed; stand-alone: one derived from the run seed and round
            draw = int(rc.get(sd.DRAW, sd.draw_seed(self.cfg.seed, int(rc.get(wire.SERVER_ROUND, 0)), 0)))
            indices = sd.draw_indices(draw, max_pairs, size)
        return RoundSettings(
            pool=pool,
            indices=np.asarray(indices, dtype=np.int64),
            lr=float(rc.get(sd.LR, self.cfg.lr)),
            eps=m.zo_eps,
            dist=str(rc.get(sd.DIST, DEFAULT_DIST)),
            perturbations=n,
            max_pairs=max_pairs,
            backend=str(rc.get(sd.BACKEND, "auto")),
        )

    def loss(self, batch: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            loss, _ = forward_loss(self.model, batch)
        return float(loss)

    def snapshot(self) -> list[torch.Tensor] | None:
        return [p.clone() for p in self.seed_params()] if self.exact_restore else None

    def restore(self, snap: list[torch.Tensor] | None, rs: RoundSettings, seeds: list[int], applied: list[float]) -> None:
        """Return to the round's starting (global) state after local steps applied
        ``sum_j applied[j] * z(seeds[j])``: exactly from the copy, else by subtracting it
        (fp32 rounding of the in-place steps remains, ~1e-7 relative per round)."""
        params = self.seed_params()
        with torch.no_grad():
            if snap is not None:
                for p, s in zip(params, snap):
                    p.copy_(s)
            elif seeds:
                accumulate_(params, seeds, [-a for a in applied], dist=rs.dist, backend=rs.backend)
