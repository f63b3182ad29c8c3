"""Reuse the frozen prefix of a forward pass across the perturbed evaluations of a batch.

A seed-based step evaluates the loss of one batch several times (``L(w + eps z)``,
``L(w - eps z)``, for each of ``n`` perturbations). When every perturbed parameter sits
in transformer layers ``k..L-1`` or after them (LoRA on the top layers, the task head),
layers ``0..k-1`` compute the same hidden states every time. :class:`FrozenPrefix`
records the output of layer ``k-1`` during the first evaluation of a batch and makes
layers ``0..k-1`` return it for the others, so an evaluation costs the embeddings plus
layers ``k..L-1`` plus the head. Nothing is kept across batches.

Whether the shortcut is valid is checked once, on the first forward pass, by the order in
which modules run: every module that owns a perturbed parameter must run after layer ``k-1``
(perturbed embeddings, e.g. ``zo_params=all``, disable it). The model's own forward code
runs unchanged around the replayed layers, so masks, pooling, heads and losses stay
those of the architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

log = logging.getLogger("anther.client")


def layer_list(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The transformer's block list (``bert.encoder.layer``, ``model.layers``, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for _, mod in base.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    return None


class FrozenPrefix:
    """See the module docstring. ``enabled`` is None until the first batch decides."""

    def __init__(self, model: torch.nn.Module, perturbed: Sequence[torch.nn.Parameter]) -> None:
        self.model = model
        self.layers = layer_list(model)
        ids = {id(p) for p in perturbed}
        self.owners = [m for m in model.modules() if any(id(p) in ids for p in m.parameters(recurse=False))]
        self.k = 0
        if self.layers is not None:
            self.k = next(
                (i for i, layer in enumerate(self.layers) if any(id(p) in ids for p in layer.parameters())),
                len(self.layers),
            )
        self.enabled: bool | None = None if self.k > 0 else False

    @contextmanager
    def reuse(self) -> Iterator[None]:
        """Within the block, every forward pass is on the same batch (and inputs): the first
        one runs the whole model (and, the first time ever, decides whether the shortcut is
        valid); the others replay layer ``k-1``'s output."""
        if self.enabled is False:
            yield
            return
        saved: dict[str, object] = {}
        order: list[str] = []
        probing = self.enabled is None

        def after_prefix(module, args, output):
            if probing:
                order.append("prefix")
            saved.setdefault("out", output)

        def before_owner(module, args):
            if probing:
                order.append("owner")

        def after_pass(module, args, output):  # one whole forward pass is done
            nonlocal probing
            if probing:
                probing = False
                self._decide(order)
            if self.enabled and "out" in saved and "forward" not in self.layers[0].__dict__:
                for layer in self.layers[: self.k]:
                    layer.forward = lambda *a, **kw: saved["out"]  # noqa: B023 - same batch

        handles = [self.layers[self.k - 1].register_forward_hook(after_prefix), self.model.register_forward_hook(after_pass)]
        if probing:
            handles += [m.register_forward_pre_hook(before_owner) for m in self.owners]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for layer in self.layers[: self.k]:
                layer.__dict__.pop("forward", None)

    def _decide(self, order: list[str]) -> None:
        first = order.index("prefix") if "prefix" in order else len(order)
        self.enabled = bool(order) and "owner" not in order[:first]
        log.info(
            "frozen-prefix reuse %s (perturbed parameters start at layer %d of %d)",
            "on" if self.enabled else "off",
            self.k,
            len(self.layers),
        )
