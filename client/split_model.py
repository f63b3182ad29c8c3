"""A backbone cut into parts for split training (SplitFed, SplitLoRA).

With ``depth`` blocks, ``cut`` and ``tail`` (U-shaped only, else 0)::

    front  = input embeddings + blocks [0, cut)                  always on the client
    middle = blocks [cut, depth - tail)                          always on the server
    back   = blocks [depth - tail, depth) + final norm/pooler + task head
             on the server (vanilla split), on the client when U-shaped

Each process builds the *whole* model skeleton but loads only its part's tensors (the
rest stays on the meta device and costs no memory), and PEFT puts LoRA only on its
part's blocks. So every trainable tensor keeps the name it has in the unsplit LoRA
model, and the client's and the server's states compose into the state central
evaluation loads into that model.

A part runs through the model's own ``forward`` with its block list (and, past the
front, an input-embedding pass-through) swapped in for the call: attention masks,
rotary positions and the loss are Hugging Face's, for BERT-style encoders and
Llama-style decoders alike. A part never keeps a graph between calls: the side that
receives a gradient recomputes its forward (same parameters, batch and dropout seed),
then back-propagates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from client.split_plan import BACK, CLIENT_PARTS, FRONT, MIDDLE, SERVER_PARTS, SplitPlan  # noqa: F401  (re-exported)
from strategies.runconfig import ConfigError



@dataclass(frozen=True)
class Layout:
    """Where an architecture keeps its parts (attribute names under the top model).

    body: the transformer body (``model.base_model_prefix``: ``bert``, ``model``, ...).
    embeddings: the body's input-embedding module.
    blocks: dotted path of the body's block list.
    finals: body modules applied after the blocks (BERT's pooler, Llama's final norm).
    native_embeds: the body takes ``inputs_embeds`` without running its embedding module.
    """

    body: str
    embeddings: str
    blocks: str
    finals: tuple[str, ...]
    native_embeds: bool


def layout_of(model: nn.Module, method: str = "split") -> Layout:
    """The layout of a transformers model, or a ConfigError naming what is supported."""
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None)
    if body is not None and hasattr(body, "encoder") and hasattr(body.encoder, "layer") and hasattr(body, "embeddings"):
        return Layout(prefix, "embeddings", "encoder.layer", ("pooler",), native_embeds=False)
    if body is not None and hasattr(body, "layers") and hasattr(body, "embed_tokens") and hasattr(body, "norm"):
        return Layout(prefix, "embed_tokens", "layers", ("norm",), native_embeds=True)
    arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise ConfigError(
        f"method={method} supports BERT-style encoders (embeddings, encoder.layer) and Llama-style decoders "
        f"(embed_tokens, layers, norm); model type '{arch}' is neither"
    )


def depth_of(model: nn.Module) -> int:
    lay = layout_of(model)
    return len(getattr(model, lay.body).get_submodule(lay.blocks))


def top_heads(model: nn.Module) -> tuple[str, ...]:
    """Top-level modules outside the body holding parameters (classifier, score, lm_head)."""
    prefix = model.base_model_prefix
    return tuple(n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters()))


def absent_modules(model: nn.Module, plan: SplitPlan, parts: tuple[str, ...]) -> tuple[str, ...]:
    """Qualified names of the modules a process holding ``parts`` leaves out."""
    lay = layout_of(model)
    body = lay.body
    held = set(plan.held(parts))
    out = [f"{body}.{lay.blocks}.{i}" for i in range(plan.depth) if i not in held]
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and lay.native_embeds
    if FRONT not in parts and not (tied and BACK in parts):  # a tied LM head reads the input embeddings
        out.append(f"{body}.{lay.embeddings}")
    if BACK not in parts:
        out += [f"{body}.{f}" for f in lay.finals if getattr(getattr(model, body), f, None) is not None]
        out += list(top_heads(model))
    return tuple(out)


def pruner(cut: int, tail: int, parts: tuple[str, ...]):
    """A ``prune`` for :func:`client.backbones.load_backbone` keeping ``parts``."""

    def prune(model: nn.Module, task: str) -> tuple[str, ...]:
        return absent_modules(model, SplitPlan(depth_of(model), cut, tail), parts)

    return prune


class _Passthrough(nn.Module):
    """Stands in for a body's input embeddings: returns ``inputs_embeds`` as it is."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        return inputs_embeds


@contextmanager
def _swapped(owner: nn.Module, attr: str, value: Any) -> Iterator[None]:
    path, _, name = attr.rpartition(".")
    holder = owner.get_submodule(path) if path else owner
    old = getattr(holder, name)
    setattr(holder, name, value)
    try:
        yield
    finally:
        setattr(holder, name, old)


class PartRunner:
    """Runs the parts of one (pruned, PEFT-wrapped) model.

    ``peft_model``: the PEFT model; ``plan``: the cut. The body's block list is swapped
    for the blocks a call runs, so the model's own masks and positions apply.
    """

    def __init__(self, peft_model: nn.Module, plan: SplitPlan, task: str) -> None:
        self.peft_model, self.plan, self.task = peft_model, plan, task
        self.top = peft_model.get_base_model()
        self.layout = layout_of(self.top)
        self.body = getattr(self.top, self.layout.body)
        self.all_blocks = list(self.body.get_submodule(self.layout.blocks))

    @contextmanager
    def _running(self, blocks: range, embeddings: bool, finals: bool) -> Iterator[None]:
        lay = self.layout
        with ExitStack() as stack:
            stack.enter_context(_swapped(self.body, lay.blocks, nn.ModuleList([self.all_blocks[i] for i in blocks])))
            if not embeddings and not lay.native_embeds:
                stack.enter_context(_swapped(self.body, lay.embeddings, _Passthrough()))
            if not finals:
                for f in lay.finals:
                    if getattr(self.body, f, None) is not None:
                        stack.enter_context(_swapped(self.body, f, None if f == "pooler" else nn.Identity()))
            yield

    def _body_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = {"attention_mask": batch["attention_mask"]}
        if "position_ids" in batch:
            out["position_ids"] = batch["position_ids"]
        return out

    def front(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cut-layer activations ``(B, T, H)`` of a batch (embeddings + the first blocks)."""
        with self._running(self.plan.blocks(FRONT), embeddings=True, finals=False):
            return self.body(input_ids=batch["input_ids"], **self._body_inputs(batch)).last_hidden_state

    def middle(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The middle blocks' output ``(B, T, H)`` (U-shaped server)."""
        with self._running(self.plan.blocks(MIDDLE), embeddings=False, finals=False):
            return self.body(inputs_embeds=hidden, **self._body_inputs(batch)).last_hidden_state

    def back_loss(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor], blocks: range) -> torch.Tensor:
        """The mean training loss from ``hidden`` entering ``blocks`` (then finals and head)."""
        from client.batches import forward_loss

        if self.task == "classification" and self.layout.native_embeds:
            return self._pooled_decoder_loss(hidden, batch, blocks)
        inputs = {k: v for k, v in batch.items() if k != "input_ids"}
        inputs["inputs_embeds"] = hidden
        with self._running(blocks, embeddings=False, finals=True):
            loss, _ = forward_loss(self.peft_model, inputs)
        return loss

    def _pooled_decoder_loss(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor], blocks: range) -> torch.Tensor:
        """A decoder's sequence classification from ``hidden``: its head on the last
        non-padding token (what Hugging Face finds from ``input_ids``, which a part past
        the cut does not have), then the mean cross-entropy."""
        mask = batch["attention_mask"]
        with self._running(blocks, embeddings=False, finals=True):
            out = self.body(inputs_embeds=hidden, **self._body_inputs(batch)).last_hidden_state  # (B, T, H)
        last = (torch.arange(mask.shape[1]) * (mask != 0)).argmax(-1)  # (B,) rightmost token
        (head,) = top_heads(self.top)
        logits = getattr(self.top, head)(out[torch.arange(out.shape[0]), last])  # (B, C)
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"].view(-1))


def lora_blocks(plan: SplitPlan, parts: tuple[str, ...], lora_layers: int) -> list[int]:
    """Blocks of ``parts`` that get LoRA (all, or those among the model's top ``lora_layers``)."""
    top = range(plan.depth - lora_layers, plan.depth) if lora_layers else range(plan.depth)
    return [i for i in plan.held(parts) if i in top]


def part_peft_model(backbone: Any, cfg: Any, plan: SplitPlan, parts: tuple[str, ...]) -> nn.Module:
    """The pruned backbone with LoRA on its part's blocks (and the head when it holds it),
    named as in the unsplit LoRA model (:func:`client.methods.lora.peft_model`)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    m = cfg.method
    blocks = lora_blocks(plan, parts, m.lora_layers)
    heads = list(backbone.head_modules) if BACK in parts else []
    if not blocks and not heads:
        raise ConfigError(f"method.lora_layers={m.lora_layers} leaves the {'+'.join(parts)} part of the split model "
                          f"nothing to train (its blocks {plan.held(parts)})")
    task = None  # without the head, no task type: PEFT would make the (absent) classifier trainable
    if BACK in parts:
        task = TaskType.SEQ_CLS if backbone.task == "classification" else TaskType.CAUSAL_LM
    peft_cfg = PeftLoraConfig(
        r=m.r, lora_alpha=m.lora_alpha, lora_dropout=m.dropout,
        target_modules=list(m.target_modules or backbone.lora_targets),
        modules_to_save=heads or None, task_type=task,
        layers_to_transform=blocks or [plan.depth + 1],  # none of the part's blocks: LoRA nowhere
    )
    with torch.random.fork_rng():  # the same adapter init on every client of the run
        torch.manual_seed(cfg.seed)
        model = get_peft_model(backbone.model, peft_cfg)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    model.eval()
    return model
