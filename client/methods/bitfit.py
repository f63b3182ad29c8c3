"""BitFit (Ben Zaken et al., 2022): only the backbone's bias terms (every Linear's and
every norm's) and the classification head train; the weights stay frozen (fp32 or k-bit:
a bitsandbytes layer keeps its bias as an ordinary tensor, trained here in fp32)."""

from __future__ import annotations

from typing import Any

import torch

from client.methods.backprop import BackpropMethod, frozen, train_head, trainable_fp32
from client.methods.configs import BitFitConfig, no_biases  # noqa: F401  (re-exported)
from strategies.runconfig import ConfigError


class BitFitMethod(BackpropMethod):
    """Bias terms + head."""

    name = "bitfit"

    def build(self, backbone: Any, cfg: Any) -> torch.nn.Module:
        model = frozen(backbone.model)
        heads = tuple(backbone.head_modules)
        biases = [p for n, p in model.named_parameters()
                  if n.rsplit(".", 1)[-1] == "bias" and not any(n.startswith(h + ".") for h in heads)]
        if not biases:
            raise ConfigError(no_biases(cfg.model.name))
        trainable_fp32(iter(biases))
        train_head(model, heads)
        return model
