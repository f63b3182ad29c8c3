"""Plug-in registries and import paths.

Every extension point (local methods, strategies, codecs, partitioners) is one
:class:`Registry`: a name maps to a :class:`Plugin` holding the plug-in's frozen config
dataclass (a subclass of the registry's base config, PEFT-style), what builds it, and,
for methods and strategies, the update kind it sends or aggregates. Config parsing
(:mod:`strategies.runconfig`) looks the config class up here by the chosen ``name``, so
keys of another plug-in are a config error that lists the valid ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from strategies.runconfig import ConfigError, check_choice


def import_string(spec: str) -> Any:
    """Import ``spec`` ("pkg.mod:Name" or "pkg.mod.Name") with a readable error."""
    module_name, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"'{spec}' is not an import path like 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import module '{module_name}' (from '{spec}'): {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ConfigError(f"module '{module_name}' has no attribute '{attr}' (from '{spec}')") from err


@dataclass(frozen=True)
class Plugin:
    """One registered plug-in.

    name: its registry key (the config's ``name``).
    config: its frozen config dataclass.
    target: what builds it (a class, a factory, an object, or an import path string
        resolved on first use so that registries stay light to import).
    kind: the update kind it sends (methods) or aggregates (strategies), else None.
    """

    name: str
    config: type
    target: Any
    kind: str | None = None

    def resolve(self) -> Any:
        return import_string(self.target) if isinstance(self.target, str) else self.target


class Registry:
    """Name -> :class:`Plugin` for one config group (``method``, ``strategy``, ...).

    ``base`` is the config class every plug-in's config extends; its fields are shared
    settings of the group (flat run_config keys ``<group>.<field>``), the rest belong to
    one plug-in (``<group>.<name>.<field>``).
    """

    def __init__(self, group: str, base: type) -> None:
        self.group, self.base = group, base
        self._plugins: dict[str, Plugin] = {}

    def add(self, name: str, config: type, target: Any, kind: str | None = None) -> Plugin:
        assert name not in self._plugins, f"{self.group} '{name}' registered twice"
        assert issubclass(config, self.base), f"{config.__name__} must extend {self.base.__name__}"
        plugin = Plugin(name, config, target, kind)
        self._plugins[name] = plugin
        return plugin

    def __getitem__(self, name: str) -> Plugin:
        check_choice(self.group, name, self._plugins)
        return self._plugins[name]

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(self._plugins)

    def __len__(self) -> int:
        return len(self._plugins)

    def names(self, kind: str | None = None) -> list[str]:
        """Registered names (those of update kind ``kind`` when given), sorted."""
        return sorted(n for n, p in self._plugins.items() if kind is None or p.kind == kind)
