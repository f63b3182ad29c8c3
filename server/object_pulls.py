"""Shorter waits for Flower's message objects on the deployment runtime.

Flower 1.42 makes a message visible before its content: the SuperNode stores a pulled
message (and its ClientApp task becomes ready) before it has fetched the message's
objects from the SuperLink, and a reply reaches the SuperLink before its objects do. Who
pulls the objects meanwhile finds them missing and backs off for 1 s, doubling up to 10 s
(``flwr.supercore.inflatable.inflatable_utils.pull_objects``; ``PULL_INITIAL_BACKOFF``,
``PULL_BACKOFF_CAP``): measured here, 0.8 s of a 2.9 s round went to one such wait
between the SuperNode and its ClientApp. :func:`shorten` rebinds a Flower module's
``pull_objects`` / ``pull_and_inflate_object_from_tree`` to the same functions with a
``INITIAL_S`` first wait doubling up to ``CAP_S``, for that module only; nothing else
changes (the retries and the 2-hour limit stay). Applied by the ServerApp
(``flwr.superlink.grid.http_grid``, the deployment's Grid; the simulation's in-memory Grid
does not pull objects) and by ``anther-deploy``'s SuperNodes (their pulls from the
SuperLink and their warm ClientApp's pulls from the SuperNode). A module that does not
look as expected (another Flower version) is left as it is.
"""

from __future__ import annotations

import functools
import importlib
import logging

INITIAL_S, CAP_S = 0.02, 0.25
NAMES = ("pull_objects", "pull_and_inflate_object_from_tree")
log = logging.getLogger("anther.server")


def shorten(module_name: str) -> bool:
    """Rebind ``module_name``'s object-pull functions; False where it has none."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    done = False
    for name in NAMES:
        fn = getattr(module, name, None)
        if callable(fn) and not isinstance(fn, functools.partial):
            setattr(module, name, functools.partial(fn, initial_backoff=INITIAL_S, backoff_cap=CAP_S))
            done = True
    if not done:
        log.debug("%s has no %s: Flower's own waits for message objects stay", module_name, " or ".join(NAMES))
    return done
