"""The local-method plug-in interface (the registry is :mod:`client.methods.registry`).

A method wraps a frozen backbone with its trainable parts (LoRA, prompts, adapters,
...), exposes that trainable state by name, and runs local training on batches. The
ClientApp, central evaluation and the conformance test only talk to this Protocol, so
a new method is its file, its config dataclass (``client/methods/configs.py``) with one
line in ``client/methods/registry.py``, and its ``configs/method/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch


@dataclass
class Update:
    """What a client produced in one round, before its update kind encodes it.

    state: trainable state after local training (``delta`` methods).
    pairs: (pool indices, scalars) (``seeds`` methods); the local change they stand for
        is ``-lr * sum_j scalar_j * z(pool[index_j])``.
    metrics: scalars for the reply (train-loss, train-s, ...).
    """

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    pairs: tuple[np.ndarray, np.ndarray] | None = None


class LocalMethod(Protocol):
    """What every registered method provides, and all that its callers use.

    kind: the update kind it sends (``strategies.kinds``): ``"delta"`` or ``"seeds"``.
    exact_restore: True when its trainable state is small enough that the runtime keeps
        a copy of the initial state (adapters, heads); False for whole models.
    pristine: the trainable parameters still hold the loaded initial state.
    """

    name: str
    kind: str
    model: torch.nn.Module
    exact_restore: bool
    pristine: bool

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The trainable parameters by stable name (live, not copies)."""

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Current trainable tensors by stable name (detached copies)."""

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the trainable tensors; raises on missing/unexpected names or shapes."""

    def local_train(
        self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]
    ) -> Update:
        """Run ``steps`` local steps and return the update."""


class SeedMethod(LocalMethod, Protocol):
    """A ``seeds`` method, as the seeds kind's client half uses it.

    synced: ``(run id, global round)`` its parameters hold, or None when unknown.
    """

    synced: tuple[str, int] | None

    def seed_params(self) -> list[torch.Tensor]:
        """The perturbed tensors in the canonical (sorted-name) order."""


class ParameterState:
    """The trainable state of a method whose trainable tensors are the ``requires_grad``
    parameters of ``self.model`` (LoRA, split training's parts)."""

    model: torch.nn.Module

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable_parameters()}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_named(dict(self.trainable_parameters()), state)


def load_named(params: Mapping[str, torch.nn.Parameter], state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``params`` exactly; shared by methods whose state is parameters."""
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(f"trainable state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            src = state[name]
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(f"'{name}': shape {tuple(src.shape)} != expected {tuple(p.shape)}")
            p.copy_(src.to(dtype=p.dtype, device=p.device))


def proximal_term(params: list[torch.nn.Parameter], anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx (Li et al., 2020): ``mu/2 * sum_i ||w_i - w_global_i||^2``."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))

