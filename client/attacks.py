"""What a client does to its update beyond training: the attacking client's side of
``attack=`` (settings and semantics: :mod:`strategies.adversary`), and ``dp=client``'s
clipping (:func:`clipped_update`).

An attacker trains like an honest client (so its reply metrics look plausible), then
:func:`craft_update` rewrites the update before its kind encodes it; ``fuzz`` instead
rewrites the encoded reply (:func:`craft_reply`). ``labelflip`` changes the data
(:func:`flips_labels`). Every random draw is seeded by (run seed, round, client).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from client.methods.base import Update
from strategies import wire
from strategies.adversary import FUZZ_CASES, AttackConfig


@lru_cache(maxsize=8)
def _attackers(cfg: AttackConfig, num_clients: int, seed: int) -> frozenset[int]:
    return frozenset(cfg.attackers(num_clients, seed))


def is_attacker(cfg: AttackConfig, ident: int, num_clients: int, seed: int) -> bool:
    return cfg.name != "none" and ident in _attackers(cfg, num_clients, seed)


class SilentAttacker(RuntimeError):
    """``attack=silent``: this client sends no update (its ClientApp fails, as a crash would)."""


def stays_silent(cfg: AttackConfig, attacking: bool, ident: int) -> None:
    """Raise :class:`SilentAttacker` for an ``attack=silent`` attacker, before any work."""
    if attacking and cfg.name == "silent":
        raise SilentAttacker(f"client {ident} is an attack=silent attacker: it sends no update")


def flips_labels(cfg: AttackConfig, attacking: bool) -> bool:
    return attacking and cfg.name == "labelflip"


def _rng(seed: int, rnd: int, ident: int) -> np.random.Generator:
    return np.random.default_rng([seed, rnd, ident, 0xBAD])


def craft_update(cfg: AttackConfig, update: Update, start: Mapping[str, torch.Tensor] | None,
                 rng_key: tuple[int, int, int]) -> Update:
    """The update an attacker sends instead of ``update`` (``start``: the state it was sent)."""
    name, factor = cfg.name, float(cfg.factor)
    if name in ("labelflip", "fuzz", "silent", "none"):
        return update
    rng = _rng(*rng_key)
    if update.pairs is not None:  # seed updates: rewrite the scalars
        index, scalars = update.pairs
        s = np.asarray(scalars, dtype=np.float32)
        crafted = {
            "signflip": lambda: -factor * s, "scale": lambda: factor * s, "nonfinite": lambda: np.full_like(s, np.nan),
            "noise": lambda: rng.normal(0.0, factor, s.shape).astype(np.float32), "freerider": lambda: np.zeros_like(s),
        }[name]()
        return Update(state=update.state, metrics=update.metrics, pairs=(index, crafted.astype(np.float32)))
    state = {}
    for key, value in update.state.items():
        g = start[key].float()[tuple(slice(0, n) for n in value.shape)]  # a self-pruned LoRA rank: its leading block
        d = value.float() - g
        state[key] = {
            "signflip": lambda: g - factor * d, "scale": lambda: g + factor * d,
            "nonfinite": lambda: torch.full_like(g, float("nan")),
            "noise": lambda: g + torch.from_numpy(rng.normal(0.0, factor, tuple(g.shape)).astype(np.float32)),
            "freerider": lambda: g.clone(),
        }[name]()
    return Update(state=state, metrics=update.metrics, pairs=update.pairs)


def clipped_update(update: Update, start: Mapping[str, torch.Tensor], clip: float) -> Update:
    """``dp=client``: the update scaled so that ``state - start`` has L2 norm <= ``clip``
    (what an honest client does; :mod:`strategies.dp`)."""
    from strategies.dp import clip_update

    deltas = {k: (v.detach().double() - start[k].double()[tuple(slice(0, n) for n in v.shape)]).numpy()
              for k, v in update.state.items()}
    clipped, _ = clip_update(deltas, clip)
    state = {k: (start[k].double()[tuple(slice(0, n) for n in v.shape)] + torch.from_numpy(clipped[k])).float()
             for k, v in update.state.items()}
    return Update(state=state, metrics=update.metrics, pairs=update.pairs)


def craft_reply(cfg: AttackConfig, reply: Message, rng_key: tuple[int, int, int]) -> Message:
    """``attack=fuzz``: one malformed variant of a delta reply, drawn per (round, client)."""
    if cfg.name != "fuzz" or reply.has_error() or wire.ARRAYS not in reply.content.array_records:
        return reply
    rng = _rng(*rng_key)
    case = FUZZ_CASES[int(rng.integers(len(FUZZ_CASES)))]
    content = reply.content
    arrays = {k: a.numpy().copy() for k, a in content[wire.ARRAYS].items()}
    first = sorted(arrays)[0]
    wire_rec = content.config_records.get(wire.WIRE, ConfigRecord())
    if case == "nan":
        arrays[first].flat[0] = np.nan
    elif case == "inf":
        arrays[first].flat[-1] = np.inf
    elif case == "shape":
        arrays[first] = arrays[first][..., :-1] if arrays[first].ndim else arrays[first].reshape(1, 1)
    elif case == "missing":
        del arrays[first]
    elif case == "extra":
        arrays["extra.weight"] = np.zeros(4, dtype=arrays[first].dtype)
    elif case == "dtype":
        arrays[first] = arrays[first].astype(np.float64)
    elif case == "oversized":
        total = sum(a.size for a in arrays.values())
        arrays[first] = np.zeros(3 * total + (1 << 19), dtype=np.float32)
    elif case == "huge":
        arrays = {k: np.full(a.shape, 1e30, dtype=np.float32) for k, a in arrays.items()}  # finite in fp32 only
        wire_rec = ConfigRecord({**dict(wire_rec), wire.CODEC_KEY: "fp32"})
    elif case == "stale":
        wire_rec = ConfigRecord({**dict(wire_rec), wire.ROUND_KEY: int(dict(wire_rec).get(wire.ROUND_KEY, 1)) - 1})
    elif case == "kind":
        wire_rec = ConfigRecord({**dict(wire_rec), wire.KIND_KEY: wire.KIND_SEEDS})
    elif case == "examples":
        content[wire.METRICS][wire.NUM_EXAMPLES] = int(10**12)
    record = ArrayRecord({k: Array(a) for k, a in arrays.items()})
    if case == "undecodable":
        a = record[first]
        record[first] = Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=a.data[: max(len(a.data) // 2, 1)])
    content[wire.ARRAYS] = record
    content[wire.WIRE] = wire_rec
    return reply
