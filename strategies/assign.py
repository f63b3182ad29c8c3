"""Which configuration each simulated device trains: ``assign=fixed|resource_aware``.

An *option* is a (local steps, batch size) pair a client can train in a round with the
run's model, quantization and method; ``assign.local_steps`` and ``assign.batch_size``
list them best first (an empty list: the run's own ``local_steps`` / ``batch_size`` for
every option). Before training, the simulator estimates each option's peak memory and
FLOPs per train call (:mod:`client.estimate`) and fills ``peak_mb``, ``flops`` and
``bytes`` (the state down and the update up): the run's config holds the numbers it
planned with, and a resume plans with them again.

- ``fixed``: every client trains the run's own configuration. A device class whose
  memory cannot hold it never takes part (its clients are not sampled; counted in
  ``unfit``).
- ``resource_aware``: each client gets the first option that fits its memory and whose
  estimated time on its device (compute at its FLOP/s, both transfers at its
  bandwidths) is within ``round_deadline_s``; when none is, the fastest option that fits
  its memory (it may still miss the deadline: the round's clock decides). A class that
  holds no option is unfit, as above.

Choices depend only on a client's device profile, so they repeat every round and on
resume. Rows count the clients asked per class and option (``assign_<class>_<i>``)
and the available clients left out as unfit (``unfit``). A population in which no
class holds any option is a config error before training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from strategies import wire
from strategies.population import DeviceProfile, Population
from strategies.runconfig import ConfigError, check, check_choice

ASSIGN_POLICIES = ("fixed", "resource_aware")


@dataclass(frozen=True)
class AssignConfig:
    """The ``assign`` group (module docstring); ``peak_mb``, ``flops`` and ``bytes`` are
    the simulator's estimates per option (filled before training)."""

    name: str = "fixed"
    local_steps: tuple[int, ...] = ()
    batch_size: tuple[int, ...] = ()
    peak_mb: tuple[float, ...] = ()
    flops: tuple[float, ...] = ()
    bytes: tuple[float, ...] = ()
    quantized: bool = False  # the backbone is nf4/int8: devices compute at their quantized FLOP/s
    run_local_steps: int = 0  # the run's own local_steps and batch_size (filled with the plan)
    run_batch_size: int = 0

    def __post_init__(self) -> None:
        check_choice("assign", self.name, ASSIGN_POLICIES)
        for key in ("local_steps", "batch_size"):
            values = getattr(self, key)
            check(all(isinstance(v, int) and v >= 1 for v in values), f"assign.{key}", "integers >= 1", list(values))
        if self.local_steps and self.batch_size:
            check(len(self.local_steps) == len(self.batch_size), "assign.batch_size",
                  f"as many values as assign.local_steps ({len(self.local_steps)}), or none", list(self.batch_size))
        if self.name == "fixed":
            check(not self.local_steps and not self.batch_size, "assign.local_steps",
                  "empty with assign=fixed (options are for assign=resource_aware)", list(self.local_steps))

    def options(self, local_steps: int, batch_size: int) -> list[tuple[int, int]]:
        """The (local steps, batch size) options, the run's values filling empty lists."""
        n = max(len(self.local_steps), len(self.batch_size), 1)
        return [(self.local_steps[i] if self.local_steps else local_steps,
                 self.batch_size[i] if self.batch_size else batch_size) for i in range(n)]

    @property
    def planned(self) -> bool:
        return bool(self.peak_mb)

    def with_plan(self, peak_mb: list[float], flops: list[float], nbytes: list[float], quantized: bool,
                  local_steps: int, batch_size: int) -> AssignConfig:
        return dataclasses.replace(self, quantized=quantized, run_local_steps=local_steps, run_batch_size=batch_size,
                                   peak_mb=tuple(round(float(v), 1) for v in peak_mb),
                                   flops=tuple(float(v) for v in flops), bytes=tuple(float(v) for v in nbytes))


class Assigner:
    """Each device class's option (index) under the policy, from the planned estimates;
    None: the class holds no option (unfit)."""

    def __init__(self, cfg: AssignConfig, population: Population, deadline_s: float | None) -> None:
        if not cfg.planned:
            raise ValueError("assign: the options have no estimates; the simulator plans them before training")
        self.cfg, self.deadline_s, self.quantized = cfg, deadline_s, cfg.quantized
        self.names, self.profiles = population.names, population.profiles
        self.choice = {n: self.choose(self.profiles[n]) for n in self.names}

    def seconds(self, i: int, profile: DeviceProfile) -> float:
        return profile.compute_s(self.cfg.flops[i], self.quantized) + profile.transfer_s(self.cfg.bytes[i] / 2,
                                                                                        self.cfg.bytes[i] / 2)

    def choose(self, profile: DeviceProfile) -> int | None:
        fits = [i for i, peak in enumerate(self.cfg.peak_mb) if peak <= profile.memory_mb]
        if self.cfg.name == "fixed":
            return 0 if 0 in fits else None
        if not fits:
            return None
        on_time = [i for i in fits if self.deadline_s is None or self.seconds(i, profile) <= self.deadline_s]
        return on_time[0] if on_time else min(fits, key=lambda i: (self.seconds(i, profile), i))

    def overrides(self, name: str) -> dict[str, int]:
        """What the train message of a client of class ``name`` carries (resource_aware: its
        option's local steps and batch size; fixed: nothing)."""
        i = self.choice[name]
        if self.cfg.name == "fixed" or i is None:
            return {}
        steps, batch = self.cfg.options(self.cfg.run_local_steps, self.cfg.run_batch_size)[i]
        return {wire.ASSIGN_LOCAL_STEPS: steps, wire.ASSIGN_BATCH_SIZE: batch}

    def check_someone_fits(self) -> None:
        if all(c is None for c in self.choice.values()):
            smallest = min(self.cfg.peak_mb)
            raise ConfigError(
                f"assign={self.cfg.name}: no device class can hold any configured option (smallest estimated peak "
                f"{smallest:.0f} MiB; memory: " + ", ".join(
                    f"{n} {self.profiles[n].memory_mb:.0f} MiB" for n in self.names) + "); add cheaper options "
                "(assign=resource_aware assign.batch_size=[...]), a smaller model or quant=nf4, or more memory "
                "(++device.profiles.<name>.memory_mb=...)")

    def table(self) -> list[str]:
        """One line per class: its option, estimated peak and time (for the run's log)."""
        profiles, lines = self.profiles, []
        for n in self.names:
            i = self.choice[n]
            if i is None:
                lines.append(f"{n}: unfit (memory {profiles[n].memory_mb:.0f} MiB < every option's estimated peak)")
            else:
                lines.append(f"{n}: option {i} (estimated peak {self.cfg.peak_mb[i]:.0f} of {profiles[n].memory_mb:.0f}"
                             f" MiB, {self.seconds(i, profiles[n]):.1f} s per round)")
        return lines
