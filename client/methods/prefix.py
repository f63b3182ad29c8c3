"""Prefix tuning (Li & Liang, 2021): every attention layer attends to ``P`` learned keys
and values before the input's own,

    Attn(Q, [K_p; K], [V_p; V])  with  K_p, V_p  (kv_heads x P x head_dim)  per layer,

visible from every position (the prefix precedes the input; causal masking applies
among the input's tokens only). Only ``K_p, V_p`` (and the classification head) train.
Initialised (``method.init=text``) with the keys and values the frozen model computes
for ``init_text``'s tokens (repeated to ``P``), as Li & Liang found real-word
activations train better than noise, or ``random``: N(0, 1).

Written here rather than through PEFT: PEFT 0.21's prefix tuning passes a
``past_key_values`` argument that transformers 5 renamed, and refuses sequence
classification. This module works at the level transformers 5 itself dispatches
attention through: a registered attention function (``AttentionInterface``) that
prepends each layer's prefix, then calls the model's own implementation (sdpa or
eager). The prefixes are submodules of the attention modules (``<attn>.prefix.key``),
so any model whose attention goes through that interface (BERT, Llama, ...) works,
on fp32 and k-bit backbones alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from client.methods.backprop import BackpropMethod, frozen, train_head
from client.methods.configs import PrefixConfig, check_context  # noqa: F401  (re-exported)

WRAPPED = ("sdpa", "eager")  # the implementations a prefix can go in front of
IMPL = "anther-prefix-{}"


class Prefix(nn.Module):
    """One attention layer's learned keys and values."""

    def __init__(self, kv_heads: int, length: int, head_dim: int) -> None:
        super().__init__()
        self.key = nn.Parameter(torch.randn(kv_heads, length, head_dim))
        self.value = nn.Parameter(torch.randn(kv_heads, length, head_dim))
        self.captured: tuple[torch.Tensor, torch.Tensor] | None = None
        self.capturing = False

    def extend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
               causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``[K_p; K]``, ``[V_p; V]`` and the mask with the prefix's columns visible."""
        batch, length = key.shape[0], self.key.shape[1]
        pk = self.key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        pv = self.value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        q_len, k_len = query.shape[2], key.shape[2]
        if mask is None and causal:
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=key.device).tril(k_len - q_len)[None, None]
        if mask is not None:
            shape = (*mask.shape[:-1], length)
            visible = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool else (
                torch.zeros(shape, dtype=mask.dtype, device=mask.device))
            mask = torch.cat([visible, mask], dim=-1)
        return torch.cat([pk, key], 2), torch.cat([pv, value], 2), mask


def _with_prefix(inner: str):
    def attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
        prefix = getattr(module, "prefix", None)
        if isinstance(prefix, Prefix):
            if prefix.capturing:
                prefix.captured = (key[0].detach(), value[0].detach())
            else:
                causal = kwargs.pop("is_causal", None)
                causal = getattr(module, "is_causal", False) if causal is None else causal
                key, value, attention_mask = prefix.extend(query, key, value, attention_mask, bool(causal))
                kwargs["is_causal"] = False
        return ALL_ATTENTION_FUNCTIONS[inner](module, query, key, value, attention_mask, **kwargs)

    return attention


for _inner in WRAPPED:
    AttentionInterface.register(IMPL.format(_inner), _with_prefix(_inner))
    AttentionMaskInterface.register(IMPL.format(_inner), ALL_MASK_ATTENTION_FUNCTIONS[_inner])


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Transformers' self-attention modules (they carry ``layer_idx`` and ``is_causal``)."""
    return [m for m in model.modules() if hasattr(m, "is_causal") and hasattr(m, "layer_idx")]


def add_prefixes(model: nn.Module, length: int) -> list[Prefix]:
    config = model.config
    inner = config._attn_implementation
    if inner not in WRAPPED:
        raise ValueError(f"method=prefix wraps attention implementations {WRAPPED}; this model uses {inner!r}")
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"method=prefix found no attention modules in {type(model).__name__}")
    prefixes = []
    for module in modules:
        module.prefix = Prefix(kv_heads, length, head_dim)
        prefixes.append(module.prefix)
    config._attn_implementation = IMPL.format(inner)
    return prefixes


@torch.no_grad()
def init_from_text(model: nn.Module, prefixes: list[Prefix], tokenizer: Any, text: str) -> None:
    """Each prefix := the keys and values of ``text``'s tokens in the frozen model."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    for p in prefixes:
        p.capturing = True
    try:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for p in prefixes:
            p.capturing = False
    for p in prefixes:
        key, value = p.captured
        p.captured = None
        length = p.key.shape[1]
        index = torch.arange(length) % key.shape[1]
        p.key.copy_(key[:, index].float())
        p.value.copy_(value[:, index].float())


class PrefixMethod(BackpropMethod):
    """Learned per-layer keys and values (+ trainable head)."""

    name = "prefix"

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        m = cfg.method
        model = frozen(backbone.model)
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        if context:
            check_context(m.num_virtual_tokens, cfg.model.max_length, context, cfg.model.name)
        prefixes = add_prefixes(model, m.num_virtual_tokens)
        if m.init == "text":
            init_from_text(model, prefixes, backbone.tokenizer, m.init_text)
        train_head(model, tuple(backbone.head_modules))
        return model
