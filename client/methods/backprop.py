"""What every backprop method shares: the optimizer, local training, a trainable head and
identical initialisation on every client.

A backprop method (LoRA, prompt, prefix, adapter, IA3, BitFit) freezes the backbone,
marks its own tensors ``requires_grad`` (fp32, whatever the backbone's dtype), and
trains them with :func:`train_steps`; its trainable state is exactly those tensors
(:class:`~client.methods.base.ParameterState`), which is what its reply carries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from client.batches import forward_loss
from client.methods.base import ParameterState, Update, proximal_term
from strategies import wire


def make_optimizer(params: list[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """AdamW or SGD over ``params`` from the client config."""
    m = cfg.method
    if m.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=m.momentum, weight_decay=m.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=m.weight_decay)


def train_steps(method: Any, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any],
                regularizer: Callable[[], torch.Tensor] | None = None) -> Update:
    """Backprop local training shared by parameter-efficient methods; FedProx's
    ``mu/2 ||w - w_global||^2`` when the strategy sends ``proximal-mu``, and the method's
    own ``regularizer()`` added to every step's loss."""
    params = dict(method.trainable_parameters())
    plist = list(params.values())
    opt = make_optimizer(plist, method.cfg)
    mu = float(round_config.get(wire.PROXIMAL_MU, 0.0) or 0.0)
    anchors = [p.detach().clone() for p in plist] if mu > 0 else []
    model = method.model
    model.train()
    total, seen = 0.0, 0
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        loss, _ = forward_loss(model, batch)  # () mean over examples (answer tokens for causal LM)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()}")
        n = int(batch["input_ids"].shape[0])
        total += float(loss.detach()) * n
        seen += n
        if mu > 0:
            loss = loss + proximal_term(plist, anchors, mu)
        if regularizer is not None:
            loss = loss + regularizer()
        loss.backward()
        if method.cfg.method.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(plist, method.cfg.method.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    metrics = {wire.TRAIN_LOSS: total / max(seen, 1), wire.TRAIN_SECONDS: time.perf_counter() - t0, "examples-seen": seen}
    return Update(state=method.trainable_state(), metrics=metrics)


@contextmanager
def seeded(seed: int):
    """The same trainable initialisation on every client (and in central evaluation)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def trainable_fp32(params: Iterator[torch.nn.Parameter]) -> None:
    """Mark ``params`` trainable, in fp32 (a k-bit backbone keeps its biases in fp16/bf16)."""
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
        p.requires_grad_(True)


def train_head(model: torch.nn.Module, head_modules: tuple[str, ...]) -> None:
    """The classification head's parameters train (fp32); () for causal LM."""
    for name in head_modules:
        trainable_fp32(model.get_submodule(name).parameters())


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class BackpropMethod(ParameterState):
    """A delta method trained by backprop: subclasses set ``self.model`` (its trainable
    tensors ``requires_grad``) in :meth:`build`."""

    kind = wire.KIND_DELTA
    exact_restore = True  # small trainable state: the runtime keeps the initial copy
    pristine = False  # not tracked: a delta round always loads the whole global state

    def __init__(self, backbone: Any, cfg: Any) -> None:
        self.cfg = cfg
        with seeded(cfg.seed):
            self.model = self.build(backbone, cfg)
        for p in self.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        if getattr(cfg.method, "gradient_checkpointing", False):
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.eval()

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        raise NotImplementedError

    def local_train(self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]) -> Update:
        return train_steps(self, batches, steps, round_config)
