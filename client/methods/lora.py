"""LoRA (Hu et al., 2021) through Hugging Face PEFT, with optional FedProx.

Each adapted Linear computes ``h = W0 x + (alpha / r) * B A x`` with ``W0`` frozen
(fp32 or a bitsandbytes k-bit layer) and ``A (r x d_in)``, ``B (d_out x r)`` trainable
in fp32; the classification head stays trainable (PEFT ``modules_to_save``). Local
training minimises ``L(w) + mu/2 ||w - w_global||^2`` when the strategy sends
``proximal-mu`` (FedProx, Li et al., 2020), with AdamW or SGD and global-norm clipping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import TaskType, get_peft_model

from client.batches import forward_loss
from client.methods.base import ParameterState, Update, proximal_term
from client.methods.configs import LoraConfig, LoraFields  # noqa: F401  (re-exported)
from strategies import wire


def make_optimizer(params: list[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
    """AdamW or SGD over ``params`` from the client config."""
    m = cfg.method
    if m.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=m.momentum, weight_decay=m.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=m.weight_decay)


def train_steps(method: Any, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]) -> Update:
    """Backprop local training shared by parameter-efficient methods."""
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
        loss.backward()
        if method.cfg.method.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(plist, method.cfg.method.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    metrics = {wire.TRAIN_LOSS: total / max(seen, 1), wire.TRAIN_SECONDS: time.perf_counter() - t0, "examples-seen": seen}
    return Update(state=method.trainable_state(), metrics=metrics)


def peft_model(backbone: Any, cfg: Any) -> torch.nn.Module:
    """The backbone wrapped with PEFT LoRA (+ trainable head), identically on every client."""
    m = cfg.method
    task = TaskType.SEQ_CLS if backbone.task == "classification" else TaskType.CAUSAL_LM
    peft_cfg = PeftLoraConfig(
        r=m.r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.dropout,
        target_modules=list(m.target_modules or backbone.lora_targets),
        modules_to_save=list(backbone.head_modules) or None,
        task_type=task,
    )
    if m.lora_layers:
        n = backbone.model.config.num_hidden_layers
        peft_cfg.layers_to_transform = list(range(max(n - m.lora_layers, 0), n))
    with torch.random.fork_rng():  # identical adapter init on every client
        torch.manual_seed(cfg.seed)
        model = get_peft_model(backbone.model, peft_cfg)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


class LoraMethod(ParameterState):
    """PEFT LoRA over the backbone's attention projections (+ trainable head)."""

    name = "lora"
    kind = wire.KIND_DELTA
    exact_restore = True  # adapters + head: small, the runtime keeps the initial copy
    pristine = False  # not tracked: a delta round always loads the whole global state

    def __init__(self, backbone: Any, cfg: Any) -> None:
        self.cfg = cfg
        self.model = peft_model(backbone, cfg)
        if cfg.method.gradient_checkpointing:
            self.model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.eval()


    def local_train(self, batches: Iterator[dict[str, torch.Tensor]], steps: int, round_config: Mapping[str, Any]) -> Update:
        return train_steps(self, batches, steps, round_config)
