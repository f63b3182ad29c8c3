"""Simulated time and energy of rounds on a device population (``device`` is not ``none``).

Per client and round, from what it actually did::

    time   = FLOPs / its FLOP/s (fp32, or its quantized path's when the backbone is nf4/int8)
             + bytes up / uplink + bytes down / downlink
    energy = FLOPs x J/FLOP + (bytes up + bytes down) x J/byte

FLOPs are the ones the client counted for the round's calls (:mod:`client.flops`, every
exchange of a split step included); bytes are the serialized messages the server
counted, both ways. A round:

- samples only clients available this round (each with its profile's probability,
  seeded per round, or as a trace's windows say at the round's simulated start),
  ``ceil(clients_per_round x (1 + device.over_select))`` of them;
- drops a client that drops out mid-round (its profile's probability, seeded) or whose
  time passes ``round_deadline_s`` (a straggler): counted in ``dropped``, not
  aggregated;
- with over-selection, aggregates the ``clients_per_round`` fastest of the rest (the
  others are counted in ``unused``);
- lasts until its last aggregated reply arrives, or the whole deadline when a client it
  waited for never came (a dropout or a straggler). Without a deadline a dropout costs
  no waiting (the server is told at once): set ``round_deadline_s`` to model the wait.
  A round in which nobody is available trains nothing and lasts until a trace's next
  window opens (else one deadline, else no time).

Energy counts every sampled client that trained, the dropped ones included (they spent
it). Split training: a dropped client's activations have already trained the server's
part during the round; what it loses is its client part's place in the average.
Secure aggregation cannot drop anyone after the fact (the server sees only the sum), so
``device`` with ``secagg`` is a config error. Rows gain ``sim_time_s`` (the round), ``sim_elapsed_s`` (since the start),
``sim_energy_j``, ``dropped``, ``unused``, ``unavailable`` and, per device class,
``clients_<class>`` (aggregated this round).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from strategies import wire
from strategies.population import DeviceConfig, DeviceProfile

log = logging.getLogger("anther.server")


@dataclass
class ClientWork:
    """What one client did in a round: FLOPs (and whether quantized), bytes both ways."""

    flops: float = 0.0
    quantized: bool = False
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class Settled:
    """A round's outcome on the simulated devices."""

    kept: list = field(default_factory=list)  # the replies to aggregate
    row: dict = field(default_factory=dict)


class RoundClock:
    """See the module docstring; one per run, over identities ``0 .. num_clients - 1``."""

    def __init__(self, cfg: DeviceConfig, num_clients: int, seed: int, deadline_s: float | None) -> None:
        self.population = cfg.population
        self.over_select, self.num_clients, self.seed, self.deadline_s = cfg.over_select, num_clients, seed, deadline_s
        self.classes = self.population.classes(num_clients, seed)  # (N,) class index of every identity
        self.elapsed_s = 0.0

    def _class(self, ident: int) -> int:
        return int(self.classes[ident % self.num_clients])

    def class_name(self, ident: int) -> str:
        """The device class (profile name) of client ``ident``."""
        return self.population.names[self._class(ident)]

    def _profile(self, ident: int) -> DeviceProfile:
        return self.population.profiles[self.population.names[self._class(ident)]]

    def available(self, idents: list[int], rnd: int) -> list[int]:
        """The identities available in round ``rnd``."""
        mask = self.population.available(self.classes, rnd, self.seed, self.elapsed_s)
        return [i for i in idents if mask[i % self.num_clients]]

    def sample_size(self, k: int, available: int) -> int:
        return min(available, math.ceil(k * (1 + self.over_select)))

    def seconds(self, ident: int, work: ClientWork) -> float:
        profile = self._profile(ident)
        return profile.compute_s(work.flops, work.quantized) + profile.transfer_s(work.bytes_up, work.bytes_down)

    def settle(self, rnd: int, replies: Iterable, ident_of, work: dict[int, ClientWork], k: int,
               unavailable: int) -> Settled:
        """Drop dropouts and stragglers, keep the ``k`` fastest; the row's columns.
        ``ident_of(reply)``: the reply's client identity (None: not a client's, kept)."""
        timed, kept, dropped = [], [], 0
        for reply in replies:
            ident = ident_of(reply)
            if ident is None or ident not in work:
                kept.append(reply)
                continue
            klass, t = self._class(ident), self.seconds(ident, work[ident])
            if self.population.drops_out(ident, klass, rnd, self.seed):
                log.info("round %d: client %d (%s) dropped out mid-round", rnd, ident, self.population.names[klass])
                dropped += 1
            elif self.deadline_s is not None and t > self.deadline_s:
                log.info("round %d: client %d (%s) missed the %g s deadline (%.3g s): dropped", rnd, ident,
                         self.population.names[klass], self.deadline_s, t)
                dropped += 1
            else:
                timed.append((t, ident, reply))
        timed.sort(key=lambda x: (x[0], x[1]))
        unused = timed[k:]
        timed = timed[:k]
        kept += [reply for _, _, reply in timed]
        waited = self.deadline_s if dropped and self.deadline_s is not None else 0.0
        if not work:  # nobody was available: wait for the next one to be (a trace), or one deadline
            waited = self.population.next_available_in(self.elapsed_s) or self.deadline_s or 0.0
        round_s = max([t for t, _, _ in timed] + [waited])
        self.elapsed_s += round_s
        energy = sum(self._profile(i).energy_j(w.flops, w.bytes_up, w.bytes_down) for i, w in work.items())
        row = {"sim_time_s": round(round_s, 3), "sim_elapsed_s": round(self.elapsed_s, 3), "sim_energy_j": round(energy, 3),
               "dropped": dropped, "unused": len(unused), "unavailable": unavailable}
        per_class = {n: 0 for n in self.population.names}
        for _, ident, _ in timed:
            per_class[self.population.names[self._class(ident)]] += 1
        row.update({f"clients_{n}": c for n, c in per_class.items()})
        return Settled(kept=kept, row=row)



def add_flops(metrics: dict, into: ClientWork) -> None:
    """Add a reply's counted FLOPs (``wire.FLOPS``) to ``into``."""
    into.flops += float(metrics.get(wire.FLOPS, 0.0))
    into.quantized = into.quantized or bool(int(metrics.get(wire.QUANTIZED, 0)))
