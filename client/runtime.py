"""Per-process cache of the loaded backbone + method (Flower issue #3670).

A simulation worker (or a SuperNode process) serves many messages; the backbone is
loaded and wrapped once per (model, quant, method, seed, labels) and reused: every
message overwrites all trainable tensors from the global state, so reuse is exact.
``ANTHER_NO_BACKBONE_CACHE=1`` disables the cache (benchmarks measure the difference).

The run's initial trainable state (what seed-based clients catch up from) is kept when
it is small (adapters, heads). When it is the whole model (``zo_params=all``) it is not
copied: an untouched model is its own initial state, and a model that has moved is
reloaded from its checkpoint on the rare occasion the initial state is needed again.

The cache is per *host*: a process, or a part of one that stands for another process.
The simulator's in-process backend runs its clients inside :func:`runtime_host`, so
their backbone is theirs, as in a worker process of their own, and never the one the
server's central evaluation loads weights into.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from client.backbones import Backbone, load_backbone
from client.config import ClientConfig
from client.methods import LocalMethod, build_method

_HOST: ContextVar[str] = ContextVar("anther_runtime_host", default="")  # "": the process itself
_CACHES: dict[str, dict[tuple, "Runtime"]] = {}  # host -> its one cached runtime


@dataclass
class Runtime:
    backbone: Backbone
    method: LocalMethod
    cfg: ClientConfig
    num_labels: int
    kept: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the initial state, when small

    @property
    def initial_state(self) -> dict[str, torch.Tensor]:
        """The trainable state every client of the run starts from (deterministic)."""
        if self.kept is not None:
            return self.kept
        if self.method.pristine:  # untouched: the parameters themselves (no copy)
            return {n: p.detach() for n, p in self.method.trainable_parameters()}
        backbone = load_backbone(self.cfg.model, self.cfg.quant, self.num_labels, self.cfg.method.prune())
        fresh = build_method(self.cfg.method.name, backbone, self.cfg)
        return {n: p.detach() for n, p in fresh.trainable_parameters()}


def cache_enabled() -> bool:
    return os.environ.get("ANTHER_NO_BACKBONE_CACHE", "") not in ("1", "true", "yes")


@contextmanager
def runtime_host(name: str) -> Iterator[None]:
    """Runtimes got inside (in this thread) belong to host ``name``, cached apart from
    the process's own, as if built in another process."""
    token = _HOST.set(name)
    try:
        yield
    finally:
        _HOST.reset(token)


def get_runtime(cfg: ClientConfig, num_labels: int) -> Runtime:
    """The current host's cached runtime for ``cfg`` (built on first use)."""
    key = (cfg.model, cfg.quant, cfg.method, cfg.seed, num_labels)
    cache = _CACHES.setdefault(_HOST.get(), {})
    if cache_enabled() and key in cache:
        return cache[key]
    cache.clear()  # one backbone per host: never hold two
    backbone = load_backbone(cfg.model, cfg.quant, num_labels, cfg.method.prune())  # seeds its own head init
    method = build_method(cfg.method.name, backbone, cfg)
    kept = method.trainable_state() if method.exact_restore else None  # False: the state is the whole model
    rt = Runtime(backbone, method, cfg, num_labels, kept)
    if cache_enabled():
        cache[key] = rt
    return rt


def clear_cache(host: str | None = None) -> None:
    """Forget the cached runtimes of ``host`` (default: of every host)."""
    if host is None:
        _CACHES.clear()
    else:
        _CACHES.pop(host, None)

