"""Per-process cache of the loaded backbone + method (Flower issue #3670).

A simulation worker (or a SuperNode process) serves many messages; the backbone is
loaded and wrapped once per (model, quant, method, seed, labels) and reused: every
message overwrites all trainable tensors from the global state, so reuse is exact.
``ANTHER_NO_BACKBONE_CACHE=1`` disables the cache (benchmarks measure the difference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
import torch

from client.backbones import Backbone, load_backbone
from client.config import ClientConfig
from client.methods import LocalMethod, build_method

_CACHE: dict[tuple, "Runtime"] = {}


@dataclass
class Runtime:
    backbone: Backbone
    method: LocalMethod
    initial_state: dict[str, torch.Tensor]


def cache_enabled() -> bool:
    return os.environ.get("ANTHER_NO_BACKBONE_CACHE", "") not in ("1", "true", "yes")


def get_runtime(cfg: ClientConfig, num_labels: int) -> Runtime:
    """The cached runtime for ``cfg`` (built on first use)."""
    key = (cfg.model, cfg.quant, cfg.method, cfg.seed, num_labels)
    if cache_enabled() and key in _CACHE:
        return _CACHE[key]
    _CACHE.clear()  # one backbone per process: never hold two
    backbone = load_backbone(cfg.model, cfg.quant, num_labels)  # seeds its own head init
    method = build_method(cfg.method.name, backbone, cfg)
    rt = Runtime(backbone, method, method.trainable_state())
    if cache_enabled():
        _CACHE[key] = rt
    return rt


def clear_cache() -> None:
    _CACHE.clear()

