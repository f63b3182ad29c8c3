"""Linear probing: the backbone stays frozen (fp32 or k-bit) and only the classification
head trains, so the update is the head alone (minilm: 384 x 4 + 4 = 1,540 values). The
baseline of PEFT comparisons, and the update differential privacy covers best: DP's noise
grows with the square root of what travels."""

from __future__ import annotations

from typing import Any

import torch

from client.methods.backprop import BackpropMethod, frozen, train_head
from client.methods.configs import HeadConfig, no_head  # noqa: F401  (re-exported)
from strategies.runconfig import ConfigError


class HeadMethod(BackpropMethod):
    """The classification head only."""

    name = "head"

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        if not backbone.head_modules:
            raise ConfigError(no_head(cfg.model.name))
        model = frozen(backbone.model)
        train_head(model, tuple(backbone.head_modules))
        return model
