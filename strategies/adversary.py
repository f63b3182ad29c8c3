"""Adversary simulation settings (``attack=``), shared by the ClientApp and the server.

A seeded choice of ``attack.fraction`` of the population (client identities, the
partition ids in simulation) attacks in every round it is sampled; the ClientApp crafts
its reply (:mod:`client.attacks`) and sends it through the same path an honest reply
takes, so what the server screens and aggregates is what it would receive from such a
client. The server derives the same set to report ``attackers`` sampled per round.

Attacks (``d``: the honest update, the trained state minus the state the client was
sent; for seed updates, the scalars):

signflip   sends ``-factor * d``
scale      sends ``factor * d``
noise      sends Gaussian noise of standard deviation ``factor`` instead of ``d`` (no training)
nonfinite  sends NaN everywhere (Hydra reads ``attack=nan`` as a number, hence the name)
labelflip  trains on flipped labels (``C - 1 - y``) and sends that update honestly
freerider  sends ``d = 0`` (no training) and claims its examples
fuzz       a malformed reply per round, drawn from :data:`FUZZ_CASES` (delta updates)
silent     sends nothing: its ClientApp fails before training, as a crashed client's

``silent`` is the control for the others: with the same seed, the same clients attack,
so a run whose attackers' replies are all rejected (``fuzz``) must produce the same
global states, round by round, as the run whose attackers never answer. A rejected
reply then has exactly the effect of no reply; what such a run still loses against an
all-honest run is the attackers' data, which no screening can give back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies.plugins import Registry
from strategies.runconfig import check

FUZZ_CASES = ("nan", "inf", "shape", "missing", "extra", "dtype", "oversized", "huge", "stale", "undecodable",
              "kind", "examples")


@dataclass(frozen=True)
class AttackConfig:
    """``attack.name`` (none: every client honest), the attacking ``fraction`` of the
    population in [0, 1), and the attack's ``factor`` (signflip, scale: the multiplier;
    noise: the standard deviation)."""

    name: str = "none"
    fraction: float = 0.2
    factor: float = 1.0

    def __post_init__(self) -> None:
        check(0 <= self.fraction < 1, "attack.fraction", "a number in [0, 1)", self.fraction)
        check(np.isfinite(self.factor), "attack.factor", "a finite number", self.factor)

    def attackers(self, num_clients: int, seed: int) -> set[int]:
        """The attacking client identities: ``round(fraction * num_clients)`` of
        ``0..num_clients-1``, drawn from the run seed (empty with ``attack=none``)."""
        if self.name == "none":
            return set()
        k = int(round(self.fraction * num_clients))
        rng = np.random.default_rng([seed, 0xA77AC])
        return {int(i) for i in rng.choice(num_clients, size=k, replace=False)}


@dataclass(frozen=True)
class SignFlipConfig(AttackConfig):
    """Sends ``-factor * d``."""

    name: str = "signflip"
    factor: float = 5.0


@dataclass(frozen=True)
class ScaleConfig(AttackConfig):
    """Sends ``factor * d``."""

    name: str = "scale"
    factor: float = 10.0


ATTACKS = Registry("attack", AttackConfig)
for _name in ("none", "noise", "nonfinite", "labelflip", "freerider", "fuzz", "silent"):
    ATTACKS.add(_name, AttackConfig, _name)
ATTACKS.add("signflip", SignFlipConfig, "signflip")
ATTACKS.add("scale", ScaleConfig, "scale")
DELTA_ONLY = ("fuzz",)  # attacks that craft delta replies only
