"""Aggregation plug-ins: ``from strategies import FedKSeed, FedKSeedPro, FwdLLM, SeedStrategy``.

Flower's own FedAvg/FedProx/FedAdam/... are used as they are (``strategies.registry``);
the seed-based strategies are imported lazily so that importing a submodule (wire keys,
codecs) stays light.
"""

_LAZY = {
    "FedKSeed": "strategies.fedkseed",
    "FedKSeedPro": "strategies.fedkseed",
    "FwdLLM": "strategies.fwdllm",
    "SeedStrategy": "strategies.seed_strategy",
    "build_strategy": "strategies.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")


__all__ = sorted(_LAZY)
