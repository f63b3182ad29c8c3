"""Split training's server part: the blocks after the cut (and the head, unless U-shaped).

The split strategies (:mod:`strategies.split`) build it by import path
(``strategy.server_part``), as the server builds its central evaluator, so server code
never imports client code and the client never imports this. It loads only its
part's tensors from the same backbone zoo (quantized as the run says), with LoRA named
as in the unsplit model, and trains it per :class:`Session`: SplitFed V2 runs one
session for all clients, V1 one per client (averaged by the strategy). A session is its
own copy of the part's trainable tensors and optimizer state, swapped into the one
model for its steps, so V1 needs one model and ``clients`` small states, not ``clients``
models.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from client.backbones import load_backbone
from client.config import ClientConfig
from client.data_source import label_names
from client.methods.base import load_named
from client.methods.backprop import make_optimizer
from client.split_model import BACK, MIDDLE, SERVER_PARTS, PartRunner, SplitPlan, depth_of, part_peft_model, pruner
from strategies.runconfig import ConfigError, unflatten


@dataclass
class Session:
    """One server-side copy being trained: its tensors and its optimizer state."""

    values: dict[str, torch.Tensor]
    optim: dict[str, Any] = field(default_factory=dict)
    examples: int = 0  # what the strategy weights this copy by (V1)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded causal-LM rows (as :meth:`client.batches.Encoded.batch`)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class ServerPart:
    """The server's part of the split model for one run (see the module docstring)."""

    def __init__(self, run_config: Mapping[str, Any]) -> None:
        cfg = unflatten(ClientConfig, dict(run_config))
        m = cfg.method
        if m.name != "split":
            raise ConfigError(f"the split strategies train a split model: use method=split (got method={m.name})")
        self.cfg, self.u_shaped = cfg, bool(m.u_shaped)
        self.num_labels = len(label_names(cfg))
        parts = SERVER_PARTS[self.u_shaped]
        backbone = load_backbone(cfg.model, cfg.quant, self.num_labels, pruner(m.cut, m.tail_blocks, parts))
        self.plan = SplitPlan(depth_of(backbone.model), m.cut, m.tail_blocks)
        self.task = backbone.task
        self.model = part_peft_model(backbone, cfg, self.plan, parts)
        self.runner = PartRunner(self.model, self.plan, backbone.task)
        config = backbone.model.config
        self.hidden_size, self.vocab_size = int(config.hidden_size), int(config.vocab_size)
        self.max_batch, self.max_tokens = cfg.batch_size, cfg.model.max_length
        self.params = dict((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
        self.initial_state = self.state()
        self._blocks = self.plan.blocks(MIDDLE) if self.u_shaped else range(self.plan.cut, self.plan.depth)

    # -- state ---------------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return sorted(self.params)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def session(self, values: Mapping[str, torch.Tensor]) -> Session:
        """A copy starting from ``values`` (checked against the part's tensors)."""
        load_named(self.params, values)
        return Session(self.state())

    @contextmanager
    def _active(self, session: Session, seed: int) -> Iterator[torch.optim.Optimizer]:
        load_named(self.params, session.values)
        plist = list(self.params.values())
        opt = make_optimizer(plist, self.cfg)
        if session.optim:
            opt.load_state_dict(session.optim)
        self.model.train()
        try:
            with torch.random.fork_rng():  # dropout: seeded per (client, step), never the caller's RNG
                torch.manual_seed(seed)
                yield opt
            if self.cfg.method.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(plist, self.cfg.method.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            session.values = self.state()
            session.optim = opt.state_dict()
        finally:
            self.model.eval()
            for p in plist:
                p.grad = None

    def _batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        out = {"attention_mask": batch["attention_mask"].long()}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        if self.task == "causal_lm":
            out["position_ids"] = positions(out["attention_mask"])
            if "labels" in out:
                out["logits_to_keep"] = int(out["labels"].shape[1])
        return out

    # -- steps -----------------------------------------------------------------------------------------
    def train_step(self, hidden: torch.Tensor, batch: Mapping[str, torch.Tensor], session: Session | None = None,
                   seed: int = 0) -> tuple[torch.Tensor, float]:
        """Vanilla split: the loss from the cut activations through the server's blocks and
        the head, one optimizer step; returns ``(d loss / d hidden, loss)``."""
        session = session or self._default
        h = hidden.detach().float().requires_grad_(True)
        with self._active(session, seed):
            loss = self.runner.back_loss(h, self._batch(batch), self._blocks)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite server-side loss {loss.item()}")
            loss.backward()
        return h.grad.detach(), float(loss.detach())

    def middle_forward(self, hidden: torch.Tensor, batch: Mapping[str, torch.Tensor], session: Session | None = None,
                       seed: int = 0) -> torch.Tensor:
        """U-shaped: the middle blocks' output (no graph kept; :meth:`middle_backward` recomputes)."""
        session = session or self._default
        load_named(self.params, session.values)
        self.model.train()
        try:
            with torch.no_grad(), torch.random.fork_rng():
                torch.manual_seed(seed)
                return self.runner.middle(hidden.float(), self._batch(batch))
        finally:
            self.model.eval()

    def middle_backward(self, hidden: torch.Tensor, batch: Mapping[str, torch.Tensor], grad_out: torch.Tensor,
                        session: Session | None = None, seed: int = 0) -> torch.Tensor:
        """U-shaped: recompute the middle blocks' forward, back-propagate the client's
        gradient of their output, one optimizer step; returns ``d loss / d hidden``."""
        session = session or self._default
        h = hidden.detach().float().requires_grad_(True)
        with self._active(session, seed):
            out = self.runner.middle(h, self._batch(batch))
            torch.autograd.backward(out, grad_out.to(out.dtype))
        return h.grad.detach()

    @property
    def _default(self) -> Session:
        """The session :meth:`local <client.methods.split.SplitMethod.local_train>` runs use."""
        if not hasattr(self, "_local"):
            self._local = Session(self.state())
        return self._local

    # -- screening ---------------------------------------------------------------------------------
    def check_batch(self, hidden: tuple[int, ...], mask: torch.Tensor, labels: torch.Tensor | None) -> str | None:
        """Why a client's activations (shape ``hidden``), mask and labels are not a batch
        this part can train on, or None."""
        if len(hidden) != 3 or hidden[2] != self.hidden_size:
            return f"activations have shape {hidden}, expected (batch, tokens, {self.hidden_size})"
        b, t = hidden[0], hidden[1]
        if not (1 <= b <= self.max_batch and 1 <= t <= self.max_tokens):
            return f"activations of {b} x {t} tokens exceed batch_size={self.max_batch} x model.max_length={self.max_tokens}"
        if tuple(mask.shape) != (b, t) or not bool(((mask == 0) | (mask == 1)).all()) or not bool(mask.any(-1).all()):
            return f"attention mask must be 0/1 of shape ({b}, {t}) with a token in every row"
        if self.u_shaped:
            return None
        if labels is None:
            return "no labels (the vanilla split server computes the loss)"
        if labels.dtype != torch.int64:
            return f"labels have dtype {labels.dtype}, expected int64"
        if self.task == "classification":
            if tuple(labels.shape) != (b,) or not bool(((labels >= 0) & (labels < self.num_labels)).all()):
                return f"labels must be {b} class ids in [0, {self.num_labels})"
        elif labels.ndim != 2 or labels.shape[0] != b or not 1 <= labels.shape[1] <= t or not bool(
                ((labels == -100) | ((labels >= 0) & (labels < self.vocab_size))).all()):
            return f"labels must be ({b}, keep <= {t}) token ids in [0, {self.vocab_size}) or -100"
        return None


def make_server_part(run_config: Mapping[str, Any]) -> ServerPart:
    """The default ``strategy.server_part`` factory."""
    return ServerPart(run_config)


__all__ = ["BACK", "ServerPart", "Session", "make_server_part"]
