"""Device-realistic populations: profiles, each client's profile, availability, dropouts.

Shared by the server (sampling, simulated time and energy, deadlines) and the clients
(which may read their own profile), so it lives here rather than in ``server/``.

A :class:`DeviceProfile` is one class of device: the memory an app may use, its
effective FLOP/s (fp32, and on the quantized path of an nf4/int8 backbone), its link
bandwidths, the probability it is available in a round and the probability it drops out
mid-round, and its energy per FLOP and per byte sent or received. The numbers of the
built-in profiles, with their sources, are in ``configs/device/*.yaml``.

A :class:`DeviceConfig` is the ``device`` group: ``none`` (no device simulation: no
simulated time, everyone always available), one profile for every client
(``device=rpi5``), a mix (``device=mix device.shares={phone-mid: 0.5, rpi5: 0.3,
laptop: 0.2}``), a profile file written by ``anther-bench profile``
(``device=file device.path=...``), or a trace of each client's profile and availability
windows (``device=trace device.path=trace.csv``, :mod:`strategies.traces`). The CLI resolves it into ``profiles`` (every
profile's numbers) and ``shares``, so a run's config holds the numbers it used and a
resume with other numbers is refused.

Draws are functions of the run seed, not of any stateful generator, so they repeat on
resume and on every process: every client's profile (drawn once per run), its
availability in round ``r``, and whether it drops out of round ``r``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from strategies.runconfig import ConfigError, check
from strategies.traces import Trace, read_trace

PROFILE_KEYS = ("memory_mb", "flops_fp32", "flops_quant", "uplink_mbps", "downlink_mbps", "availability", "dropout",
                "joules_per_gflop", "joules_per_mb")
_DRAW_PROFILE, _DRAW_AVAILABLE, _DRAW_DROPOUT = 0xDE71CE, 0xA7A1, 0xD209  # streams of the run seed


@dataclass(frozen=True)
class DeviceProfile:
    """One class of device (see the module docstring); FLOP/s in GFLOP/s, links in Mbit/s."""

    name: str
    memory_mb: float
    flops_fp32: float  # effective GFLOP/s of training and inference in fp32
    flops_quant: float  # effective GFLOP/s with an nf4/int8 backbone
    uplink_mbps: float
    downlink_mbps: float
    availability: float  # probability of being available in a round
    dropout: float  # probability of dropping out mid-round
    joules_per_gflop: float
    joules_per_mb: float  # per megabyte (1e6 bytes) sent or received

    def __post_init__(self) -> None:
        where = f"device profile {self.name!r}"
        for key in ("memory_mb", "flops_fp32", "flops_quant", "uplink_mbps", "downlink_mbps"):
            value = getattr(self, key)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{where}: {key}",
                  "a number > 0", value)
        for key in ("availability", "dropout"):
            value = getattr(self, key)
            check(0 <= value <= 1, f"{where}: {key}", "a probability in [0, 1]", value)
        for key in ("joules_per_gflop", "joules_per_mb"):
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, f"{where}: {key}", "a number >= 0", value)

    @classmethod
    def from_numbers(cls, name: str, numbers: dict[str, Any]) -> DeviceProfile:
        """A profile from its numbers; unknown or missing keys are a ConfigError naming them."""
        unknown, missing = sorted(set(numbers) - set(PROFILE_KEYS)), [k for k in PROFILE_KEYS if k not in numbers]
        if unknown or missing:
            raise ConfigError(f"device profile {name!r}: " + "; ".join(
                ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
                + ([f"missing key(s) {', '.join(missing)}"] if missing else [])) + f"; valid keys: {', '.join(PROFILE_KEYS)}")
        try:
            values = {k: float(numbers[k]) for k in PROFILE_KEYS}
        except (TypeError, ValueError) as err:
            raise ConfigError(f"device profile {name!r}: every value must be a number ({err})") from None
        return cls(name=name, **values)

    def compute_s(self, flops: float, quantized: bool = False) -> float:
        """Seconds to compute ``flops`` floating-point operations."""
        return flops / ((self.flops_quant if quantized else self.flops_fp32) * 1e9)

    def transfer_s(self, bytes_up: float, bytes_down: float) -> float:
        """Seconds to send ``bytes_up`` and receive ``bytes_down`` (one after the other)."""
        return 8 * bytes_up / (self.uplink_mbps * 1e6) + 8 * bytes_down / (self.downlink_mbps * 1e6)

    def energy_j(self, flops: float, bytes_up: float, bytes_down: float) -> float:
        """Joules for ``flops`` and the bytes both ways."""
        return flops / 1e9 * self.joules_per_gflop + (bytes_up + bytes_down) / 1e6 * self.joules_per_mb


@dataclass(frozen=True)
class DeviceConfig:
    """The ``device`` group (module docstring). ``profiles``: name -> numbers of every
    profile the population uses (the CLI fills it from ``configs/device/``); ``shares``:
    name -> fraction of the clients (one profile: itself, 1.0); ``path``: the profile
    file of ``device=file``; ``over_select``: sample this fraction more clients than
    ``clients_per_round`` and aggregate the first ``clients_per_round`` to finish."""

    name: str = "none"
    shares: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, float]] = field(default_factory=dict)
    path: str = ""
    over_select: float = 0.0
    period_s: float = 0.0  # device=trace: the windows repeat with this period (0: they do not)

    def __post_init__(self) -> None:
        check(0 <= self.over_select <= 10, "device.over_select", "a fraction in [0, 10]", self.over_select)
        check(self.period_s >= 0, "device.period_s", "seconds >= 0 (0: windows do not repeat)", self.period_s)
        if not self.active:
            return
        shares = self.shares or ({self.name: 1.0} if self.name in self.profiles else {})
        check(bool(shares), "device.shares", "a mapping profile -> fraction (e.g. {rpi5: 0.5, laptop: 0.5})", self.shares)
        unknown = sorted(set(shares) - set(self.profiles))
        check(not unknown, "device.shares", f"profiles among {', '.join(sorted(self.profiles))}", unknown)
        check(all(isinstance(v, (int, float)) and v >= 0 for v in shares.values()), "device.shares",
              "fractions >= 0", shares)
        total = sum(shares.values())
        check(abs(total - 1) < 1e-6, "device.shares", "fractions that sum to 1", f"{shares} (sum {total:g})")
        for name, numbers in self.profiles.items():
            DeviceProfile.from_numbers(name, numbers)

    def __hash__(self) -> int:  # the client's config is a cache key; its dicts hash as sorted JSON
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True))

    @property
    def active(self) -> bool:
        return self.name != "none"

    @cached_property
    def population(self) -> Population:
        return Population(self)


class Population:
    """A resolved device population over client identities ``0 .. num_clients - 1``."""

    def __init__(self, cfg: DeviceConfig) -> None:
        shares = cfg.shares or {cfg.name: 1.0}
        self.names = sorted(n for n, s in shares.items() if s > 0)
        self.shares = np.array([shares[n] for n in self.names], dtype=np.float64)
        self.profiles = {n: DeviceProfile.from_numbers(n, cfg.profiles[n]) for n in self.names}
        self.trace_path, self.period_s = (cfg.path, cfg.period_s) if cfg.name == "trace" else ("", 0.0)
        self.trace: Trace | None = None

    def classes(self, num_clients: int, seed: int) -> np.ndarray:
        """(num_clients,) index into ``names`` of every client's profile: the trace's, or
        exactly round(share x num_clients) of each class (largest remainders) in a
        seeded order."""
        if self.trace_path:
            self.trace = read_trace(self.trace_path, num_clients)
            index = {n: k for k, n in enumerate(self.names)}
            return np.array([index[p] for p in self.trace.profiles], dtype=np.int64)
        counts = np.floor(self.shares * num_clients).astype(np.int64)
        rest = self.shares * num_clients - counts
        counts[np.argsort(-rest, kind="stable")[: num_clients - counts.sum()]] += 1
        classes = np.repeat(np.arange(len(self.names)), counts)
        return np.random.default_rng([seed, _DRAW_PROFILE]).permutation(classes)

    def available(self, classes: np.ndarray, rnd: int, seed: int, elapsed_s: float = 0.0) -> np.ndarray:
        """(N,) bool: which clients are available in round ``rnd``, which starts at
        simulated time ``elapsed_s``: the trace's windows, else each client with its
        profile's probability (independent per round and client); ``classes`` as
        :meth:`classes` gives them."""
        if self.trace is not None:
            return self.trace.available(elapsed_s, self.period_s)
        p = np.array([self.profiles[n].availability for n in self.names])[classes]
        return np.random.default_rng([seed, _DRAW_AVAILABLE, rnd]).random(len(classes)) < p

    def next_available_in(self, elapsed_s: float) -> float | None:
        """Seconds from ``elapsed_s`` until a trace's next window opens (None: no trace,
        or no window opens again)."""
        return self.trace.next_start_in(elapsed_s, self.period_s) if self.trace is not None else None

    def drops_out(self, ident: int, klass: int, rnd: int, seed: int) -> bool:
        """Whether client ``ident`` drops out in the middle of round ``rnd``."""
        u = np.random.default_rng([seed, _DRAW_DROPOUT, rnd, ident]).random()
        return bool(u < self.profiles[self.names[klass]].dropout)
