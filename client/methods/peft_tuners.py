"""Prompt tuning and IA3 through Hugging Face PEFT (+ the trainable head).

Prompt tuning (Lester et al., 2021): ``num_virtual_tokens`` learned vectors ``P (n x d)``
are prepended to the input embeddings, ``h = f([P; E(x)])``; only ``P`` (and the head)
train. Initialised from the embeddings of ``init_text``'s tokens (repeated to length),
of random vocabulary tokens, or N(0, 1) noise (PEFT's "random").

IA3 (Liu et al., 2022): learned vectors rescale the keys, values and the feed-forward
activations, ``k' = l_k * k``, ``v' = l_v * v``, ``f' = l_ff * f`` (initialised to ones).
"""

from __future__ import annotations

from typing import Any

import torch
from peft import IA3Config as PeftIA3Config
from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

from client.methods.backprop import BackpropMethod
from client.methods.configs import IA3Config, PromptConfig, check_context  # noqa: F401  (re-exported)
from client.methods.lora import peft_task


def is_decoder(model: torch.nn.Module) -> bool:
    """Causal self-attention (transformers' attention modules carry ``is_causal``)."""
    return any(getattr(m, "is_causal", False) for m in model.modules())


def left_align(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: move right padding to the left, so a decoder's sequence
    classifier, which pools the last position when it gets embeddings instead of ids,
    pools the last real token (positions then come from :func:`contiguous_positions`)."""
    mask = kwargs.get("attention_mask")
    if mask is None or "input_ids" not in kwargs:
        return args, kwargs
    length = mask.shape[1]
    shift = length - mask.sum(1, keepdim=True)  # (B, 1) padding at the end of each row
    index = (torch.arange(length, device=mask.device)[None, :] - shift) % length
    kwargs = dict(kwargs, input_ids=kwargs["input_ids"].gather(1, index), attention_mask=mask.gather(1, index))
    return args, kwargs


def contiguous_positions(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook on a decoder under prompt tuning: positions count the unmasked
    tokens (virtual ones first), so the prompt sits right before the text however much
    left padding the row has (PEFT drops the batch's own ``position_ids``)."""
    mask = kwargs.get("attention_mask")
    if mask is not None and kwargs.get("position_ids") is None and mask.dim() == 2:
        kwargs = dict(kwargs, position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0))
    return args, kwargs


class PromptMethod(BackpropMethod):
    """PEFT prompt tuning (+ trainable head)."""

    name = "prompt"

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        m = cfg.method
        context = int(getattr(backbone.model.config, "max_position_embeddings", 0) or 0)
        if context:
            check_context(m.num_virtual_tokens, cfg.model.max_length, context, cfg.model.name)
        init = {"text": PromptTuningInit.RANDOM, "vocab": PromptTuningInit.SAMPLE_VOCAB,
                "random": PromptTuningInit.RANDOM}[m.init]
        peft_cfg = PromptTuningConfig(num_virtual_tokens=m.num_virtual_tokens, prompt_tuning_init=init,
                                      modules_to_save=list(backbone.head_modules) or None, task_type=peft_task(backbone))
        model = get_peft_model(backbone.model, peft_cfg)
        if m.init == "text":  # PEFT's own TEXT init loads a tokenizer by name (a hub call): do it here
            self._init_from_text(model, backbone.tokenizer, m.init_text, m.num_virtual_tokens)
        if is_decoder(backbone.model):
            if backbone.task == "classification":
                model.register_forward_pre_hook(left_align, with_kwargs=True)
            model.base_model.register_forward_pre_hook(contiguous_positions, with_kwargs=True)
        return model

    @staticmethod
    def _init_from_text(model: Any, tokenizer: Any, text: str, n: int) -> None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = (ids * -(-n // len(ids)))[:n]
        embed = model.get_input_embeddings()
        with torch.no_grad():
            vectors = embed(torch.tensor(ids, device=embed.weight.device)).float()
            model.prompt_encoder[model.active_adapter].embedding.weight.copy_(vectors)


class IA3Method(BackpropMethod):
    """PEFT IA3 on the keys, values and feed-forward output (+ trainable head)."""

    name = "ia3"

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        m = cfg.method
        peft_cfg = PeftIA3Config(target_modules=list(m.target_modules) or None,
                                 feedforward_modules=list(m.feedforward_modules) or None,
                                 modules_to_save=list(backbone.head_modules) or None, task_type=peft_task(backbone))
        return get_peft_model(backbone.model, peft_cfg)
