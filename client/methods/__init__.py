"""Local training methods. The registry (:data:`METHODS`) is light to import; the
method classes (torch, PEFT) are imported when first used."""

from client.methods.registry import METHODS, build_method, register

_LAZY = {"LocalMethod": "client.methods.base", "Update": "client.methods.base"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'client.methods' has no attribute {name!r}")


__all__ = ["METHODS", "LocalMethod", "Update", "build_method", "register"]
