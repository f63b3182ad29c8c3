"""Availability traces: each client's device profile and the windows it is available in.

``device=trace device.path=trace.csv`` reads a CSV with a header and one row per client::

    client_id,profile,windows
    0,phone-mid,0-3600 7200-10800
    1,rpi5,
    2,laptop,3600-86400

``client_id``: every identity ``0 .. num_clients - 1`` exactly once; ``profile``: a
built-in profile or one under ``device.profiles``; ``windows``: space-separated
``start-end`` pairs in simulated seconds (``start < end``, not overlapping), empty for
a client that is always available. With ``device.period_s`` > 0 the windows repeat
with that period (86400: the same day every day). A client is available in a round when
the simulated time at the round's start lies in one of its windows; the profile's own
``availability`` is then not used (its ``dropout`` still is).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strategies.runconfig import ConfigError

COLUMNS = ("client_id", "profile", "windows")


@dataclass(frozen=True)
class Trace:
    """A parsed trace: ``profiles[i]`` of client ``i``; windows as flat arrays
    (``owner``: client of each window, ``start``, ``end``); clients with no window are
    always available (``always``)."""

    profiles: tuple[str, ...]
    owner: np.ndarray
    start: np.ndarray
    end: np.ndarray
    always: np.ndarray  # (N,) bool

    def available(self, t: float, period_s: float = 0.0) -> np.ndarray:
        """(N,) bool: who is available at simulated time ``t``."""
        if period_s > 0:
            t = t % period_s
        mask = self.always.copy()
        inside = (self.start <= t) & (t < self.end)
        mask[self.owner[inside]] = True
        return mask


    def next_start_in(self, t: float, period_s: float = 0.0) -> float | None:
        """Seconds from ``t`` until the next window opens (None: none opens again)."""
        if not len(self.start):
            return None
        phase = t % period_s if period_s > 0 else t
        later = self.start[self.start > phase]
        if len(later):
            return float(later.min() - phase)
        return float(self.start.min() + period_s - phase) if period_s > 0 else None


def _windows(text: str, where: str) -> list[tuple[float, float]]:
    out = []
    for part in text.split():
        try:
            a, b = (float(x) for x in part.split("-", 1))
        except ValueError:
            raise ConfigError(f"{where}: window {part!r} is not START-END in seconds") from None
        if not 0 <= a < b:
            raise ConfigError(f"{where}: window {part!r} needs 0 <= start < end")
        out.append((a, b))
    out.sort()
    for (a0, b0), (a1, b1) in zip(out, out[1:]):
        if a1 < b0:
            raise ConfigError(f"{where}: windows {a0:g}-{b0:g} and {a1:g}-{b1:g} overlap")
    return out


def read_trace(path: str | Path, num_clients: int) -> Trace:
    """Parse and check a trace file; every problem is a ConfigError naming the row."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
            header = tuple(rows[0].keys()) if rows else ()
    except OSError as err:
        raise ConfigError(f"device.path: cannot read the trace {path}: {err.strerror or err}") from None
    if tuple(h.strip() for h in header) != COLUMNS:
        raise ConfigError(f"device.path: {path} must have the columns {','.join(COLUMNS)} (got {','.join(header) or 'none'})")
    profiles: dict[int, str] = {}
    owner, start, end = [], [], []
    for line, row in enumerate(rows, start=2):
        where = f"{path.name} line {line}"
        try:
            ident = int(row["client_id"])
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: client_id {row['client_id']!r} is not an integer") from None
        if not 0 <= ident < num_clients:
            raise ConfigError(f"{where}: client {ident} is not in this population (num_clients={num_clients}: 0..{num_clients - 1})")
        if ident in profiles:
            raise ConfigError(f"{where}: client {ident} appears twice")
        profiles[ident] = (row["profile"] or "").strip()
        for a, b in _windows(row["windows"] or "", where):
            owner.append(ident)
            start.append(a)
            end.append(b)
    missing = [i for i in range(num_clients) if i not in profiles]
    if missing:
        raise ConfigError(f"device.path: {path.name} has no row for client(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}"
                          f" ({len(missing)} of {num_clients})")
    owner_a = np.array(owner, dtype=np.int64)
    always = np.ones(num_clients, dtype=bool)
    always[owner_a] = False
    return Trace(tuple(profiles[i] for i in range(num_clients)), owner_a, np.array(start, dtype=np.float64),
                 np.array(end, dtype=np.float64), always)
