"""What a client process does not import: plotting through flwr-datasets, torch's compiler
through bitsandbytes.

Two libraries the client needs import more than it uses (measured in a client process,
``anther-bench estimate`` and docs/results.md, "client import footprint"):

- ``flwr_datasets/__init__`` imports its ``visualization`` package (matplotlib, seaborn:
  ~85 MiB resident, ~0.8 s), although a client only partitions. That package is loaded
  lazily here (:class:`importlib.util.LazyLoader`): it runs on first use of one of its
  names, as before, and never in a client.
- bitsandbytes, which peft imports whenever it is installed (so every PEFT client, nf4 or
  not), decorates its default backend's ops with ``torch.compile`` at import, and that
  call imports ``torch._dynamo`` and ``torch._inductor`` (~40 MiB, ~1 s). ``torch.compile``
  only compiles at the first call anyway; while bitsandbytes is imported, ``torch.compile``
  is a wrapper that makes that same call at the decorated op's first call, so the compiler
  is imported only if one of those ops runs (on CPU, bitsandbytes' own kernels take them).
  The ops, their results and bitsandbytes' fallback when compiling fails are unchanged.

:func:`install` (called by ``client/__init__.py``) adds a meta path finder for those two
modules; it imports nothing itself and is idempotent.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any, Callable

LAZY = frozenset({"flwr_datasets.visualization"})
DEFER_COMPILE = frozenset({"bitsandbytes"})


def compile_at_first_call(compile_: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for ``torch.compile`` that calls ``compile_`` with the same arguments at the
    returned function's first call (``torch.compile(fn, **kw)`` and ``torch.compile(**kw)(fn)``)."""

    def deferred(model: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        if model is None:
            return lambda fn: deferred(fn, **kwargs)
        compiled: list[Callable[..., Any]] = []

        @functools.wraps(model)
        def call(*args: Any, **kw: Any) -> Any:
            if not compiled:
                compiled.append(compile_(model, **kwargs))
            return compiled[0](*args, **kw)

        return call

    return deferred


class _CompileLater(importlib.abc.Loader):
    """Runs a module with ``torch.compile`` replaced by :func:`compile_at_first_call`."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        import torch

        real = torch.compile
        torch.compile = compile_at_first_call(real)
        try:
            self.loader.exec_module(module)
        finally:
            torch.compile = real

    def __getattr__(self, name: str) -> Any:  # resources, is_package, get_source: the real loader's
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in LAZY and fullname not in DEFER_COMPILE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = importlib.util.LazyLoader(spec.loader) if fullname in LAZY else _CompileLater(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
