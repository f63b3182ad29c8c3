"""Split training's client part (SplitFed, Thapa et al. 2022; SplitLoRA).

The client loads only the input embeddings and the first ``method.cut`` blocks (plus,
U-shaped, the last ``method.tail`` blocks and the head) and trains LoRA on them
(:mod:`client.split_model`). A step is: cut-layer activations up, their gradient down,
back-propagation through the client's blocks, one optimizer step (U-shaped: the server's
output comes down, the client's tail computes the loss with its own labels and sends
that output's gradient up, then the cut gradient comes down). The exchanges are the
``activations`` update kind's (:mod:`strategies.kinds.activations`), which keeps the
optimizer state between messages through :meth:`optimizer_state`.

:meth:`local_train` runs whole steps against a server given in the round config
(``SERVER``: an object with the :class:`client.split_server.ServerPart` step methods),
in this process: the reference the message protocol must reproduce, and what tests and
benchmarks use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from client.methods.base import ParameterState, Update
from client.methods.configs import SplitConfig  # noqa: F401  (re-exported)
from client.methods.backprop import make_optimizer
from client.split_model import BACK, CLIENT_PARTS, PartRunner, SplitPlan, depth_of, part_peft_model
from strategies import wire

SERVER = "split-server"  # round_config key of an in-process server (local_train only)


class SplitMethod(ParameterState):
    """The client part of a split model, with LoRA (+ the head when U-shaped)."""

    name = "split"
    kind = wire.KIND_ACTIVATIONS
    exact_restore = True
    pristine = False

    def __init__(self, backbone: Any, cfg: Any) -> None:
        m = cfg.method
        self.cfg = cfg
        self.u_shaped = bool(m.u_shaped)
        self.activation_codec = m.activation_codec
        self.plan = SplitPlan(depth_of(backbone.model), m.cut, m.tail_blocks)
        self.model = part_peft_model(backbone, cfg, self.plan, CLIENT_PARTS[self.u_shaped])
        self.runner = PartRunner(self.model, self.plan, backbone.task)
        self.hidden_size = int(backbone.model.config.hidden_size)
        self.opt: torch.optim.Optimizer | None = None


    # -- one step, in pieces ---------------------------------------------------------------------
    def start_round(self) -> None:
        """A fresh optimizer and no gradients (every round, as LoRA's local training)."""
        params = [p for _, p in self.trainable_parameters()]
        for p in params:
            p.grad = None
        self.opt = make_optimizer(params, self.cfg)

    def front(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Cut-layer activations ``(B, T, H)`` (in train mode: dropout as in training)."""
        self.model.train()
        try:
            return self.runner.front(dict(batch))
        finally:
            self.model.eval()

    def backward_front(self, hidden: torch.Tensor, grad: torch.Tensor) -> None:
        """Accumulate the client blocks' gradients from the cut gradient ``grad``."""
        torch.autograd.backward(hidden, grad.to(hidden.dtype))

    def back(self, hidden: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
        """U-shaped: the loss from the server's output ``hidden`` through the client's tail
        and head; accumulates the tail's gradients and returns ``(loss, d loss / d hidden)``."""
        h = hidden.detach().requires_grad_(True)
        self.model.train()
        try:
            loss = self.runner.back_loss(h, dict(batch), self.plan.blocks(BACK))
        finally:
            self.model.eval()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()}")
        loss.backward()
        return float(loss.detach()), h.grad.detach()

    def step(self) -> None:
        """Clip (this part's gradients) and step the optimizer; zero the gradients."""
        params = [p for _, p in self.trainable_parameters()]
        if self.cfg.method.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.method.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    # -- what persists between messages ---------------------------------------------------------
    def gradients(self) -> dict[str, torch.Tensor]:
        return {n: p.grad.detach().clone() for n, p in self.trainable_parameters() if p.grad is not None}

    def load_gradients(self, grads: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.trainable_parameters())
        unknown = sorted(set(grads) - set(params))
        if unknown:
            raise KeyError(f"gradients for unknown parameters {unknown[:3]}")
        for n, p in params.items():
            p.grad = grads[n].clone() if n in grads else None

    def optimizer_state(self) -> dict[str, torch.Tensor]:
        """The optimizer's per-parameter state as flat ``"<index>/<field>"`` tensors."""
        out = {}
        for i, st in self.opt.state_dict()["state"].items():
            for key, value in st.items():
                out[f"{i}/{key}"] = value.detach().clone() if torch.is_tensor(value) else torch.tensor(value)
        return out

    def load_optimizer_state(self, flat: Mapping[str, torch.Tensor]) -> None:
        self.start_round()
        sd = self.opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in flat.items():
            i, _, key = name.partition("/")
            state.setdefault(int(i), {})[key] = value.clone()
        sd["state"] = state
        self.opt.load_state_dict(sd)

    # -- a whole round in this process -------------------------------------------------------------
    def local_train(self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]) -> Update:
        """``steps`` split steps against the in-process server ``round_config[SERVER]``."""
        server = round_config.get(SERVER)
        if server is None:
            raise RuntimeError("method=split trains with a server: run it with strategy=sfl_v1|sfl_v2 "
                               "(or pass an in-process server part as round_config['split-server'])")
        self.start_round()
        total, seen = 0.0, 0
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            hidden = self.front(batch)
            if self.u_shaped:
                out = server.middle_forward(hidden.detach(), batch)
                loss, grad_out = self.back(out, batch)
                grad = server.middle_backward(hidden.detach(), batch, grad_out)
            else:
                grad, loss = server.train_step(hidden.detach(), batch)
            self.backward_front(hidden, grad)
            self.step()
            n = int(batch["attention_mask"].shape[0])
            total, seen = total + loss * n, seen + n
        metrics = {wire.TRAIN_LOSS: total / max(seen, 1), wire.TRAIN_SECONDS: time.perf_counter() - t0, "examples-seen": seen}
        return Update(state=self.trainable_state(), metrics=metrics)
