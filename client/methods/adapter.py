"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021), as FedAdapter
(Cai et al., 2022) trains them federated in BERT.

An adapter maps a sublayer's output ``h`` (before its residual connection) to
``h + U relu(D h + b_D) + b_U`` with ``D (m x d)``, ``U (d x m)``, ``m`` the bottleneck
(``method.adapter_dim``); ``U`` and ``b_U`` start at zero, so a fresh adapter is the
identity and training starts from the pretrained model. Placement: "houlsby" after the
attention output projection and after the feed-forward output projection of each block
(BERT's ``attention.output.dense`` and ``output.dense``, Llama's ``self_attn.o_proj`` and
``mlp.down_proj``); "pfeiffer" after the feed-forward one only. ``method.adapter_layers``
keeps them to the top N blocks. The adapters are submodules of their block (named
``<block>.adapter_attn`` / ``<block>.adapter_ffn``) called by a forward hook on the
projection, so the backbone's own modules and names are untouched, and a k-bit
projection's output is adapted in fp32.

Written here because the maintained ``adapters`` library (1.3) requires transformers
4.57 and this project runs transformers 5.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from client.methods.backprop import BackpropMethod, frozen, train_head
from client.methods.configs import AdapterConfig  # noqa: F401  (re-exported)
from client.split_model import layout_of

# (attention output projection, feed-forward output projection) inside a block
SUBLAYER_OUTPUTS = (("attention.output.dense", "output.dense"), ("self_attn.o_proj", "mlp.down_proj"))


class Bottleneck(nn.Module):
    """``h + up(relu(down(h)))``, identity at initialisation."""

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.float()
        return (x + self.up(torch.relu(self.down(x)))).to(h.dtype)


def _adapt_output(adapter: Bottleneck):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return adapter(output)

    return hook


def sublayer_outputs(block: nn.Module) -> tuple[str, str]:
    for pair in SUBLAYER_OUTPUTS:
        if all(_has(block, path) for path in pair):
            return pair
    raise ValueError(f"method=adapter: no known sublayer output projections in {type(block).__name__} "
                     f"(looked for {SUBLAYER_OUTPUTS})")


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def add_adapters(model: nn.Module, dim: int, layers: int, placement: str) -> list[str]:
    """Insert adapters into the top ``layers`` blocks (0 = all); returns the adapted blocks."""
    lay = layout_of(model, "adapter")
    blocks = getattr(model, lay.body).get_submodule(lay.blocks)
    width = int(model.config.hidden_size)
    start = len(blocks) - layers if layers else 0
    names = []
    for i in range(max(start, 0), len(blocks)):
        block = blocks[i]
        attn_out, ffn_out = sublayer_outputs(block)
        sites = [("adapter_ffn", ffn_out)] if placement == "pfeiffer" else [("adapter_attn", attn_out), ("adapter_ffn", ffn_out)]
        for name, path in sites:
            adapter = Bottleneck(width, dim)
            block.add_module(name, adapter)
            block.get_submodule(path).register_forward_hook(_adapt_output(adapter))
        names.append(f"{lay.body}.{lay.blocks}.{i}")
    return names


class AdapterMethod(BackpropMethod):
    """Bottleneck adapters in the backbone's blocks (+ trainable head)."""

    name = "adapter"

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        m = cfg.method
        model = frozen(backbone.model)
        add_adapters(model, m.adapter_dim, m.adapter_layers, m.placement)
        train_head(model, tuple(backbone.head_modules))
        return model
