"""Typed config dataclasses <-> raw values (Hydra) and Flower's flat ``run_config``.

Anther's library code only sees frozen dataclasses. :func:`build` makes one from raw
values (a Hydra node as a dict, or a nested dict rebuilt from the flat run_config):
every value is converted to its field's annotated type, and every problem (an unknown
key, a value of the wrong type, a missing required value, a failed ``__post_init__``
check) is collected into one :class:`ConfigError` that names the key.

A field declared ``field(metadata={"registry": "pkg.mod:REGISTRY"})`` holds one plug-in's
config (see :mod:`strategies.plugins`): its ``name`` picks the config class, and keys
that belong to no field of that class are rejected with the valid ones listed.

Flower ships run configuration as a flat ``{str: scalar}`` dict with dotted keys. A
plug-in field flattens to ``<group>.name``, the registry base class's shared fields
``<group>.<field>``, and the plug-in's own fields ``<group>.<name>.<field>`` (so every
plug-in's defaults can sit side by side in ``[tool.flwr.app.config]``). Lists and dicts
travel as JSON strings, ``None`` as "".
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")
MISSING = "???"  # Hydra's mark of a value the user must set


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def check_choice(key: str, value: str, choices: typing.Iterable[str]) -> None:
    """Raise ConfigError naming the valid choices when ``value`` is not one of them."""
    choices = sorted(choices)
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not known; valid choices: {', '.join(choices)}")


def check(cond: bool, key: str, expected: str, got: Any) -> None:
    """Raise ConfigError('<key>: expected <expected>, got <got>') unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


# -- types --------------------------------------------------------------------------------
def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _base(tp: Any) -> Any:
    if _is_optional(tp):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (int, float, bool, str, Optional, tuple[str | int | float, ...], dict),
    or ConfigError naming ``key``, the expected type and the value."""
    if value == MISSING:
        raise ConfigError(f"{key}: a value is required (set {key}=...)")
    if _is_optional(tp):
        return None if value is None or value == "" else coerce(key, value, _base(tp))
    origin = typing.get_origin(tp) or tp
    if origin in (tuple, list):
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip().startswith("[") else [value]
            except json.JSONDecodeError as err:
                raise ConfigError(f"{key}: expected a list, got {value!r}") from err
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = (typing.get_args(tp) or (str,))[0]
        if item in (int, float):
            return tuple(coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
        return tuple(str(v) for v in value)
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value or "{}")
            except json.JSONDecodeError as err:
                raise ConfigError(f"{key}: expected a mapping, got {value!r}") from err
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp in (int, float):  # an int field takes whole numbers only (2.0, not 2.5)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or float(value).is_integer()):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # e.g. resume=true: a switch that also takes words
            return str(value).lower()
        if isinstance(value, (int, float)):
            return str(value)
    else:
        return value
    raise ConfigError(f"{key}: expected {_NAMES[tp]}, got {value!r}")


# -- building dataclasses -----------------------------------------------------------------
def registry_of(f: dataclasses.Field) -> Any:
    """The plug-in registry a field is declared with, or None."""
    spec = f.metadata.get("registry")
    if spec is None:
        return None
    from strategies.plugins import import_string

    return import_string(spec)


def build(cls: type[T], raw: Mapping[str, Any], prefix: str = "", errors: list[str] | None = None, label: str = "") -> T | None:
    """``cls`` from raw values; see the module docstring. With ``errors`` given, problems
    are appended to it (and None may be returned); else they raise one ConfigError."""
    own = errors is None
    errors = [] if own else errors
    if not isinstance(raw, Mapping):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        raw = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = label or prefix.rstrip(".") or cls.__name__
        shown = ", ".join(f"{prefix}{k}" for k in unknown)
        errors.append(f"{where}: unknown key(s) {shown}; valid keys: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    failed = False
    for name, f in fields.items():
        key = f"{prefix}{name}"
        registry = registry_of(f)
        base = _base(hints[name])
        if registry is not None:
            value = build_plugin(registry, raw.get(name, {}), key, errors)
        elif dataclasses.is_dataclass(base):
            value = build(base, raw.get(name, {}), key + ".", errors)
        elif name in raw:
            try:
                value = coerce(key, raw[name], hints[name])
            except ConfigError as err:
                errors.append(str(err))
                failed = True
                continue
        else:
            continue
        if value is None and (registry is not None or dataclasses.is_dataclass(base)):
            failed = True
        kwargs[name] = value
    obj = None
    if not failed:
        try:
            obj = cls(**kwargs)
        except ConfigError as err:
            errors.append(str(err))
    if own and errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return obj


def _default_name(registry: Any) -> str:
    """The plug-in a group takes when its ``name`` is not given (the base config's default)."""
    return next(f.default for f in dataclasses.fields(registry.base) if f.name == "name")


def build_plugin(registry: Any, raw: Any, key: str, errors: list[str]) -> Any:
    """The config of the plug-in ``raw["name"]`` names (the base class default if absent)."""
    if not isinstance(raw, Mapping):
        errors.append(f"{key}: expected a mapping, got {raw!r}")
        return None
    name = str(raw.get("name", _default_name(registry)))
    if name not in registry:
        errors.append(f"{registry.group}={name!r} is not known; valid choices: {', '.join(registry.names())}")
        return None
    return build(registry[name].config, raw, key + ".", errors, label=f"{registry.group}={name}")


# -- flat run_config ------------------------------------------------------------------------
def _flat_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return value


def plugin_keys(registry: Any, obj: Any, key: str) -> dict[str, Any]:
    """``obj`` (a plug-in config) as flat keys: shared fields, then its own."""
    shared = {f.name for f in dataclasses.fields(registry.base)}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        where = f"{key}.{f.name}" if f.name in shared else f"{key}.{obj.name}.{f.name}"
        out[where] = _flat_value(getattr(obj, f.name))
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a (nested) config dataclass into Flower run_config scalars."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        registry = registry_of(f)
        if registry is not None:
            out.update(plugin_keys(registry, value, key))
        elif dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = _flat_value(value)
    return out


def _nest(cls: type, flat: Mapping[str, Any], prefix: str, errors: list[str]) -> dict[str, Any]:
    """The raw values of ``cls`` from a flat run_config (keys of other classes ignored)."""
    hints = typing.get_type_hints(cls)
    raw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        registry = registry_of(f)
        base = _base(hints[f.name])
        if registry is not None:
            raw[f.name] = _nest_plugin(registry, flat, key, errors)
        elif dataclasses.is_dataclass(base):
            raw[f.name] = _nest(base, flat, key + ".", errors)
        elif key in flat:
            raw[f.name] = flat[key]
    return raw


def _nest_plugin(registry: Any, flat: Mapping[str, Any], key: str, errors: list[str]) -> dict[str, Any]:
    shared = {f.name for f in dataclasses.fields(registry.base)}
    raw = {k: flat[f"{key}.{k}"] for k in shared if f"{key}.{k}" in flat}
    name = str(raw.get("name", _default_name(registry)))
    known = {f"{key}.{k}" for k in shared}
    for other in registry:  # every plug-in's own keys may be present (the App's declared defaults)
        known |= {f"{key}.{other}.{f.name}" for f in dataclasses.fields(registry[other].config) if f.name not in shared}
    for k in sorted(flat):
        if k.startswith(key + ".") and k not in known:
            own = [f.name for f in dataclasses.fields(registry[name].config) if f.name not in shared] if name in registry else []
            errors.append(
                f"run_config key '{k}' is not a setting of {registry.group}={name}; its keys are "
                + ", ".join([*(f"{key}.{s}" for s in sorted(shared)), *(f"{key}.{name}.{o}" for o in own)])
            )
    own_prefix = f"{key}.{name}."
    raw.update({k[len(own_prefix):]: v for k, v in flat.items() if k.startswith(own_prefix)})
    return raw


def unflatten(cls: type[T], flat: Mapping[str, Any], prefix: str = "") -> T:
    """Rebuild dataclass ``cls`` from a flat run_config; missing keys keep defaults."""
    errors: list[str] = []
    raw = _nest(cls, flat, prefix, errors)
    obj = build(cls, raw, prefix, errors)
    if errors:
        raise ConfigError("invalid run_config:\n  - " + "\n  - ".join(errors))
    return obj
