"""LoRA (Hu et al., 2021) through Hugging Face PEFT, with optional FedProx.

Each adapted Linear computes ``h = W0 x + (alpha / r) * B A x`` with ``W0`` frozen
(fp32 or a bitsandbytes k-bit layer) and ``A (r x d_in)``, ``B (d_out x r)`` trainable
in fp32; the classification head stays trainable (PEFT ``modules_to_save``). Local
training minimises ``L(w) + mu/2 ||w - w_global||^2`` when the strategy sends
``proximal-mu`` (FedProx, Li et al., 2020), with AdamW or SGD and global-norm clipping.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import TaskType, get_peft_model

from client.methods.backprop import BackpropMethod, make_optimizer, seeded, train_steps  # noqa: F401  (re-exported)
from client.methods.configs import LoraConfig, LoraFields  # noqa: F401  (re-exported)


def peft_task(backbone: Any) -> TaskType:
    return TaskType.SEQ_CLS if backbone.task == "classification" else TaskType.CAUSAL_LM


def peft_model(backbone: Any, cfg: Any) -> torch.nn.Module:
    """The backbone wrapped with PEFT LoRA (+ trainable head), identically on every client."""
    m = cfg.method
    peft_cfg = PeftLoraConfig(
        r=m.r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.dropout,
        target_modules=list(m.target_modules or backbone.lora_targets),
        modules_to_save=list(backbone.head_modules) or None,
        task_type=peft_task(backbone),
    )
    if m.lora_layers:
        n = backbone.model.config.num_hidden_layers
        peft_cfg.layers_to_transform = list(range(max(n - m.lora_layers, 0), n))
    with seeded(cfg.seed):  # identical adapter init on every client
        model = get_peft_model(backbone.model, peft_cfg)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


class LoraMethod(BackpropMethod):
    """PEFT LoRA over the backbone's attention projections (+ trainable head)."""

    name = "lora"

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        return peft_model(backbone, cfg)
