"""Serializable server-side strategy state (optimizer moments, momentum, ...).

A strategy that defines ``state_dict() -> dict[str, np.ndarray]`` and
``load_state_dict(state)`` owns its format. For Flower's built-in strategies the state
lives in known attributes (FedOpt: ``current_arrays``, ``m_t``, ``v_t``; FedAvgM:
``current_arrays``, ``momentum_vector``); they are flattened to ``"attr/key"`` names so
a checkpoint restores them exactly.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

_KNOWN_ATTRS = ("current_arrays", "m_t", "v_t", "momentum_vector")


def get_strategy_state(strategy: object) -> dict[str, np.ndarray]:
    """Return the strategy's state as flat ``name -> array``."""
    if hasattr(strategy, "state_dict"):
        return dict(strategy.state_dict())
    out: dict[str, np.ndarray] = {}
    for attr in _KNOWN_ATTRS:
        value = getattr(strategy, attr, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            items = {k: a.numpy() for k, a in value.items()}
            kind = "record"
        elif isinstance(value, dict):
            items, kind = value, "dict"
        else:
            items, kind = {str(i): v for i, v in enumerate(value)}, "list"
        for k, v in items.items():
            out[f"{attr}/{kind}/{k}"] = np.asarray(v)
    return out


def set_strategy_state(strategy: object, state: dict[str, np.ndarray]) -> None:
    """Restore what :func:`get_strategy_state` returned."""
    if hasattr(strategy, "load_state_dict"):
        strategy.load_state_dict(state)
        return
    grouped: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, value in state.items():
        attr, kind, key = name.split("/", 2)
        grouped.setdefault((attr, kind), {})[key] = value
    for (attr, kind), items in grouped.items():
        if kind == "record":
            setattr(strategy, attr, ArrayRecord({k: Array(v) for k, v in items.items()}))
        elif kind == "dict":
            setattr(strategy, attr, dict(items))
        else:
            setattr(strategy, attr, [items[str(i)] for i in range(len(items))])
