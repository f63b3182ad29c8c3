"""The local-method plug-in interface and its registry.

A method wraps a frozen backbone with its trainable parts (LoRA, prompts, adapters,
...), exposes that trainable state by name, and runs local training on batches. The
ClientApp, central evaluation and the conformance test only talk to this Protocol, so
a new method (zeroth-order seeds, forward gradients, split training) is one new file
plus one ``register`` line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from strategies.runconfig import check_choice


@dataclass
class Update:
    """What a client produced in one round, before encoding.

    kind: wire update kind (``"delta"`` for PEFT tensors, ``"seeds"`` for (seed, scalar)).
    state: trainable state after local training (``kind == "delta"``).
    pairs: (pool indices, scalars) for ``kind == "seeds"``; the local change they stand
        for is ``-lr * sum_j scalar_j * z(pool[index_j])``.
    num_examples: local training-set size, the aggregation weight.
    metrics: scalars for the reply (train-loss, train-s, ...).
    """

    kind: str
    state: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    pairs: tuple[np.ndarray, np.ndarray] | None = None


class LocalMethod(Protocol):
    """What every registered method provides."""

    name: str
    model: torch.nn.Module

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Current trainable tensors by stable name (detached copies)."""

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the trainable tensors; raises on missing/unexpected names or shapes."""

    def local_train(
        self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]
    ) -> Update:
        """Run ``steps`` local steps and return the update (``num_examples`` set by caller)."""


MethodFactory = Callable[..., LocalMethod]
METHODS: dict[str, MethodFactory] = {}


def register(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Class decorator adding a method to :data:`METHODS`."""

    def deco(factory: MethodFactory) -> MethodFactory:
        assert name not in METHODS, f"method '{name}' registered twice"
        METHODS[name] = factory
        return factory

    return deco


def build_method(name: str, backbone: Any, cfg: Any) -> LocalMethod:
    """Instantiate registered method ``name`` on ``backbone`` with the client config."""
    check_choice("method", name, METHODS)
    return METHODS[name](backbone, cfg)


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

