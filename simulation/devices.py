"""The ``device`` group resolved into numbers: every profile a population uses.

``device=rpi5`` carries its own numbers; ``device=mix`` names profiles in
``device.shares`` whose numbers come from ``configs/device/<name>.yaml`` (unless the
run overrides them under ``device.profiles``); ``device=file`` reads a profile YAML that
``anther-bench profile`` wrote; ``device=trace`` reads a CSV of each client's profile and
availability windows (:mod:`strategies.traces`). The result is a plain mapping for
:class:`strategies.population.DeviceConfig` with ``profiles`` and ``shares`` filled, so
the run's config holds every number it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from strategies.runconfig import ConfigError
from strategies.traces import read_trace

SPECIAL = ("none", "mix", "file", "trace")  # the group's options that are not profiles


def profile_names(config_dir: Path) -> list[str]:
    """The built-in profiles: ``configs/device/*.yaml`` less none, mix, file."""
    return sorted(p.stem for p in (config_dir / "device").glob("*.yaml") if p.stem not in SPECIAL)


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{what}: cannot read {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("profiles"), dict) or not raw["profiles"]:
        raise ConfigError(f"{what}: {path} has no 'profiles' mapping (name -> numbers); "
                          "write one with `anther-bench profile`")
    return raw


def _required_path(raw: dict[str, Any], what: str) -> Path:
    if str(raw.get("path", "")) in ("", "???"):
        raise ConfigError(f"device.path: a value is required (set device.path={what})")
    return Path(str(raw["path"])).expanduser()


def resolve(raw: dict[str, Any] | None, config_dir: Path, num_clients: int = 0) -> dict[str, Any]:
    """``raw`` (the composed ``device`` group) with ``profiles`` and ``shares`` filled;
    a trace is read and checked against ``num_clients``."""
    raw = dict(raw or {})
    name = str(raw.get("name", "none"))
    if name == "none":
        return raw
    profiles = {k: dict(v) for k, v in (raw.get("profiles") or {}).items()}
    if name == "trace":
        path = _required_path(raw, "trace.csv: client_id,profile,windows")
        trace = read_trace(path, num_clients)
        raw["path"] = str(path.resolve())
        used = sorted(set(trace.profiles))
        raw["shares"] = {n: trace.profiles.count(n) / num_clients for n in used}
    if name == "file":
        path = _required_path(raw, "PROFILE.yaml, written by `anther-bench profile`")
        loaded = _read(path, "device.path")
        profiles = {**loaded["profiles"], **profiles}
        raw["path"] = str(path.resolve())
        if not raw.get("shares"):  # a file of several profiles: equal shares
            raw["shares"] = {n: 1.0 / len(loaded["profiles"]) for n in loaded["profiles"]}
    default = raw.pop("default_shares", None) or {}
    shares = dict(raw.get("shares") or default) or ({name: 1.0} if name not in SPECIAL else {})
    known = profile_names(config_dir)
    for wanted in shares:
        if wanted in known:  # the file's numbers, under any the run overrides
            numbers = _read(config_dir / "device" / f"{wanted}.yaml", f"device={wanted}")["profiles"][wanted]
            profiles[wanted] = {**numbers, **profiles.get(wanted, {})}
        elif wanted not in profiles:
            raise ConfigError(f"device profile {wanted!r} is not known; valid profiles: {', '.join(known)} "
                              "(or a file: device=file device.path=...)")
    raw.update(profiles=profiles, shares=shares)
    return raw


def device_profile(device: str, config_dir: Path) -> tuple[str, dict[str, Any]]:
    """(name, numbers) of a built-in profile name or of a profile YAML that
    ``anther-bench profile`` wrote (its first profile)."""
    path = Path(device).expanduser()
    if path.suffix in (".yaml", ".yml"):
        profiles = _read(path, "--device")["profiles"]
    elif device in profile_names(config_dir):
        profiles = _read(config_dir / "device" / f"{device}.yaml", f"--device {device}")["profiles"]
    else:
        raise ConfigError(f"--device {device!r} is neither a profile ({', '.join(profile_names(config_dir))}) "
                          "nor a profile YAML written by `anther-bench profile`")
    name = device if device in profiles else next(iter(profiles))
    return name, profiles[name]


def profile_memory_mb(device: str, numbers: dict[str, Any]) -> float:
    """A device profile's memory budget (MiB); ``device`` names it in the error."""
    if "memory_mb" not in numbers:
        raise ConfigError(f"--device {device}: the profile has no memory_mb")
    return float(numbers["memory_mb"])
