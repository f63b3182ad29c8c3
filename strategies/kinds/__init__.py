"""Update kinds: each one registered exchange between the server and its clients.

An :class:`~strategies.kinds.base.UpdateKind` owns everything that differs between what
clients send (PEFT tensors, (seed, scalar) pairs, ...): the downlink the server
completes, how a client brings its model to the global state and encodes its reply, how
the server screens and decodes that reply, and the follow-up round trips within a
round. The round loop (``server/loop.py``), the ClientApp (``client/app.py``) and the
config check (``simulation/config.py``) dispatch through :data:`KINDS` and never branch
on the kind. A method declares the kind it sends (``kind``), a strategy the kind it
aggregates (``update_kind``; Flower's own strategies aggregate ``delta``): they pair
when the two agree.

Adding a kind is one file here plus one line below, and its method and strategy.
"""

from __future__ import annotations

from strategies.kinds.activations import ActivationsKind
from strategies.kinds.base import ClientCall, RoundExchange, UpdateKind
from strategies.kinds.delta import DeltaKind
from strategies.kinds.secagg import SecAggKind
from strategies.kinds.seeds import SeedsKind
from strategies.runconfig import check_choice

KINDS: dict[str, UpdateKind] = {k.name: k for k in (DeltaKind(), SeedsKind(), ActivationsKind(), SecAggKind())}


def serving_kind(method_kind: str, downlink_kind: str | None) -> UpdateKind:
    """The kind that serves a downlink: the one it names when that kind carries the
    method's updates (secure aggregation carries delta updates), else the method's."""
    named = KINDS.get(downlink_kind or "")
    if named is not None and getattr(named, "carries", None) == method_kind:
        return named
    return get_kind(method_kind)


def get_kind(name: str) -> UpdateKind:
    """The registered kind ``name`` (ConfigError listing the kinds otherwise)."""
    check_choice("update kind", name, KINDS)
    return KINDS[name]


__all__ = ["KINDS", "ClientCall", "RoundExchange", "UpdateKind", "get_kind", "serving_kind"]
