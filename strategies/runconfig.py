"""Typed config dataclasses <-> Flower ``run_config`` (a flat ``{str: scalar}`` dict).

Flower ships run configuration to the ServerApp and every ClientApp as a flat dict
whose keys are dotted paths (``"model.name"``). Anther's library code only sees frozen
dataclasses; this module is the bridge, used by the simulator (which builds the flat
dict) and by both apps (which parse it). Lists travel as JSON strings, ``None`` as "".
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _base(tp: Any) -> Any:
    if _is_optional(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) dataclass into Flower run_config scalars."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        elif value is None:
            out[key] = ""
        elif isinstance(value, (list, tuple, dict)):
            out[key] = json.dumps(value)
        else:
            out[key] = value
    return out


def unflatten(cls: type[T], flat: dict[str, Any], prefix: str = "") -> T:
    """Rebuild dataclass ``cls`` from a flat run_config; missing keys keep defaults."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        base = _base(tp)
        if dataclasses.is_dataclass(base):
            kwargs[f.name] = unflatten(base, flat, key + ".")
            continue
        if key not in flat:
            continue
        raw = flat[key]
        if raw == "" and _is_optional(tp):
            kwargs[f.name] = None
        elif typing.get_origin(base) in (list, tuple, dict) or base in (list, tuple, dict):
            val = json.loads(raw) if isinstance(raw, str) else raw
            kwargs[f.name] = tuple(val) if typing.get_origin(base) is tuple else val
        elif base is bool:
            kwargs[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        elif base in (int, float, str):
            try:
                kwargs[f.name] = base(raw)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"run_config key '{key}': expected {base.__name__}, got {raw!r}") from err
        else:
            kwargs[f.name] = raw
    return cls(**kwargs)


def check_choice(key: str, value: str, choices: typing.Iterable[str]) -> None:
    """Raise ConfigError naming the valid choices when ``value`` is not one of them."""
    choices = sorted(choices)
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not known; valid choices: {', '.join(choices)}")


def check(cond: bool, key: str, expected: str, got: Any) -> None:
    """Raise ConfigError('<key>: expected <expected>, got <got>') unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")
