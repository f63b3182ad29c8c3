"""LoRA (Hu et al., 2021) through Hugging Face PEFT, with optional FedProx.

Each adapted Linear computes ``h = W0 x + (alpha / r) * B A x`` with ``W0`` frozen
(fp32 or a bitsandbytes k-bit layer) and ``A (r x d_in)``, ``B (d_out x r)`` trainable
in fp32; the classification head stays trainable (PEFT ``modules_to_save``). Local
training minimises ``L(w) + mu/2 ||w - w_global||^2`` when the strategy sends
``proximal-mu`` (FedProx, Li et al., 2020), with AdamW or SGD and global-norm clipping.

Heterogeneous ranks: the model is built at the global rank ``r``; a state whose LoRA
tensors have ``k < r`` components (``A (k x d_in)``, ``B (d_out x k)``) makes the client
train rank ``k``: the first ``k`` components hold it, the others stay zero (their
gradients are masked), the scale stays ``alpha / r``, and the trainable state (the
reply) is the first ``k`` components. A state may also carry a dense frozen
``<module>.base_delta`` (``d_out x d_in``) per adapted Linear, added to its output
(FLoRA's merged updates, FlexLoRA's global product in central evaluation):
``h = W0 x + dW x + (alpha / r) B A x``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import TaskType, get_peft_model

from client.methods.backprop import BackpropMethod, make_optimizer, seeded, train_steps  # noqa: F401  (re-exported)
from client.methods.base import Update, load_named
from client.ranks import BASE_DELTA, is_a, module_of, prune_width, rank_of, truncated
from strategies import wire
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

    def __init__(self, backbone: Any, cfg: Any) -> None:
        super().__init__(backbone, cfg)
        self.full_rank = int(cfg.method.r)
        self.rank = self.full_rank
        self._deltas: dict[str, torch.Tensor] = {}
        for name, p in self.trainable_parameters():
            if module_of(name) is not None:
                p.register_hook(self._masked(name))

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        return peft_model(backbone, cfg)

    def _masked(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if self.rank == self.full_rank:
                return grad
            grad = grad.clone()
            if is_a(name):
                grad[self.rank:] = 0
            else:
                grad[:, self.rank:] = 0
            return grad

        return hook

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: truncated(n, p.detach(), self.rank).clone() for n, p in self.trainable_parameters()}

    def local_train(self, batches: Any, steps: int, round_config: Mapping[str, Any]) -> Update:
        """Backprop local training; with HetLoRA's self-pruning (``lora-prune-lambda``),
        the top ``g = prune_width(rank, gamma)`` components are regularised by
        ``lambda * sum ||B_tail A_tail||_F`` and pruned when their norm fell this round."""
        lam = float(round_config.get(wire.PRUNE_LAMBDA, 0.0) or 0.0)
        if lam <= 0 or self.rank <= 1:
            return train_steps(self, batches, steps, round_config)
        g = prune_width(self.rank, float(round_config.get(wire.PRUNE_GAMMA, 0.25)))
        pairs = self._pairs()
        before = float(self._tail_norm(pairs, g))
        update = train_steps(self, batches, steps, round_config, lambda: lam * self._tail_norm(pairs, g))
        if float(self._tail_norm(pairs, g)) < before:
            with torch.no_grad():
                for a, b in pairs:
                    a[self.rank - g:] = 0
                    b[:, self.rank - g:] = 0
            self.rank -= g
            update.state = self.trainable_state()
        update.metrics[wire.LORA_RANK] = self.rank
        return update

    def _pairs(self) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        params = dict(self.trainable_parameters())
        out = []
        for name, p in params.items():
            if is_a(name):
                b = params.get(name.replace(".lora_A.", ".lora_B.").replace(".lora_embedding_A.", ".lora_embedding_B."))
                if b is not None:
                    out.append((p, b))
        return out

    def _tail_norm(self, pairs: list, g: int) -> torch.Tensor:
        lo, hi = self.rank - g, self.rank
        return sum(torch.linalg.matrix_norm(b[:, lo:hi] @ a[lo:hi]) for a, b in pairs)

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        deltas = {k: v for k, v in state.items() if k.endswith(BASE_DELTA)}
        state = {k: v for k, v in state.items() if k not in deltas}
        rank = rank_of(state) or self.full_rank
        if not 1 <= rank <= self.full_rank:
            raise ValueError(f"LoRA rank {rank} outside [1, {self.full_rank}] (method.r is the global rank)")
        params = dict(self.trainable_parameters())
        padded = {}
        for k, v in state.items():
            p = params.get(k)
            if p is not None and module_of(k) is not None and rank < self.full_rank:
                full = torch.zeros_like(p)
                truncated(k, full, rank).copy_(v)
                v = full
            padded[k] = v
        load_named(params, padded)
        self.rank = rank
        self._load_deltas(deltas)

    def _load_deltas(self, deltas: Mapping[str, torch.Tensor]) -> None:
        for key, value in deltas.items():
            module = key[: -len(BASE_DELTA)]
            layer = self.model.get_submodule(module)
            base = getattr(layer, "base_layer", None)
            if base is None:
                raise KeyError(f"'{key}': {module} is not a LoRA-adapted layer")
            if module not in self._deltas:
                base.register_forward_hook(self._add_delta(module))
            self._deltas[module] = value.detach().float().clone()

    def _add_delta(self, module: str):
        def hook(_layer: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            delta = self._deltas[module]
            return output + torch.nn.functional.linear(inputs[0].to(delta.dtype), delta).to(output.dtype)

        return hook
