"""``python -m simulation.deploy.supernode_main ARGS``: ``flower-supernode ARGS`` with a shorter
wait between pulls.

Flower 1.42's SuperNode sleeps 3 s after every pull that brought no message, and 0.5 s
between checks for its ClientApp's reply (``flwr/supernode/start_client_internal.py``,
not configurable): a message that arrives just after a pull waits up to 3 s, every round
and, in split training, every exchange. This entry caps the first wait at
``ANTHER_SUPERNODE_POLL_S`` seconds (0.25 by default; ``anther-deploy supernode --poll-s``)
and the second at 0.02 s, for that module only, then runs Flower's own ``flower_supernode``. The cost is one small
HTTPS request per node per interval while idle. Where the module does not look as expected
(another Flower version) it runs unchanged, with a warning.
It also shortens the SuperNode's waits for message objects (:mod:`server.object_pulls`).
"""

from __future__ import annotations

import os
import sys
import time
import types

POLL_ENV = "ANTHER_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.25


REPLY_POLL_S = 0.02  # between checks of the node's own state for the ClientApp's reply (Flower: 0.5)


def _capped_time(poll_s: float) -> types.SimpleNamespace:
    """``time`` for Flower's SuperNode loop: its 3 s wait after an empty pull (a request to
    the SuperLink) becomes ``poll_s``; its 0.5 s wait between looks at its own in-memory
    state for the ClientApp's reply becomes ``REPLY_POLL_S`` (no request is made)."""
    sleep = time.sleep
    clock = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    return types.SimpleNamespace(**{**clock, "sleep": lambda s: sleep(min(s, poll_s if s >= 1.0 else REPLY_POLL_S))})


def main() -> int:
    poll_s = float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    if getattr(loop, "time", None) is time:
        loop.time = _capped_time(poll_s)
    else:
        print(f"anther: flwr.supernode.start_client_internal has no module-level `time`: the SuperNode keeps "
              "Flower's own poll interval", file=sys.stderr)
    from server.object_pulls import shorten

    shorten("flwr.supernode.start_client_internal")  # its pulls of message objects from the SuperLink
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
