"""Resolve ``"package.module:attr"`` or ``"package.module.attr"`` strings to objects."""

from __future__ import annotations

import importlib
from typing import Any

from strategies.runconfig import ConfigError


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
