"""``python -m simulation.deploy.supernode_main ARGS``: ``flower-supernode ARGS`` with a shorter
wait between pulls.

Flower 1.42's SuperNode sleeps 3 s after every pull that brought no message, and 0.5 s
between checks for its ClientApp's reply (``flwr/supernode/start_client_internal.py``,
not configurable): a message that arrives just after a pull waits up to 3 s, every round
and, in split training, every exchange. This entry makes the first wait 0.02 s
after the node had a message (a run's next message often follows soon), doubling up to
``ANTHER_SUPERNODE_POLL_S`` seconds (0.25 by default; ``anther-deploy supernode --poll-s``)
while none comes, and the second 0.02 s, for that module only, then runs Flower's own
``flower_supernode``. The cost is one small
HTTPS request per node per interval while idle. Where the module does not look as expected
(another Flower version) it runs unchanged, with a warning.
It also shortens the SuperNode's waits for message objects (:mod:`server.object_pulls`)
and, with ``ANTHER_WAKE_PORT``, sends a datagram to the node's warm ClientApp runtime for
every message it stores (:mod:`simulation.deploy.warm_runtime`).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import types

POLL_ENV = "ANTHER_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.25
REPLY_POLL_S = 0.02  # between checks of the node's own state for the ClientApp's reply (Flower: 0.5)
FIRST_POLL_S = 0.02  # the first wait after a message: the run's next one often follows soon


class PollWaits:
    """The waits after empty pulls: ``FIRST_POLL_S`` after the node had a message, doubling
    up to ``poll_s`` while none comes (a few more requests after each message, none more
    while idle)."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s, self.next_s = poll_s, poll_s

    def had_message(self) -> None:
        self.next_s = min(FIRST_POLL_S, self.poll_s)

    def empty_pull(self) -> float:
        wait, self.next_s = self.next_s, min(self.next_s * 2, self.poll_s)
        return wait


def _capped_time(waits: PollWaits) -> types.SimpleNamespace:
    """``time`` for Flower's SuperNode loop: its 3 s wait after an empty pull (a request to
    the SuperLink) becomes ``waits.empty_pull()``; its 0.5 s waits between looks at its own
    in-memory state (for the ClientApp's reply, for an object) become ``REPLY_POLL_S``
    (no request is made)."""
    sleep = time.sleep
    clock = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    return types.SimpleNamespace(**{**clock, "sleep": lambda s: sleep(waits.empty_pull() if s >= 1.0 else
                                                                      min(s, REPLY_POLL_S))})


WAKE_ENV = "ANTHER_WAKE_PORT"  # UDP port of the node's warm ClientApp runtime (simulation.deploy.warm_runtime)


def _noting_messages(pull, waits: PollWaits, wake_port: int | None = None):
    """Flower's ``_pull_and_store_message``, telling ``waits`` when a message came, and the
    warm ClientApp runtime at ``wake_port`` (a datagram to 127.0.0.1; lost if none listens)."""
    wake = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if wake_port else None

    def pulled(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            waits.had_message()
            if wake is not None:
                try:
                    wake.sendto(b"m", ("127.0.0.1", wake_port))
                except OSError:
                    pass
        return run_id
    return pulled


def main() -> int:
    poll_s = float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    if getattr(loop, "time", None) is time and callable(getattr(loop, "_pull_and_store_message", None)):
        waits = PollWaits(poll_s)
        loop.time = _capped_time(waits)
        wake_port = int(os.environ[WAKE_ENV]) if os.environ.get(WAKE_ENV) else None
        loop._pull_and_store_message = _noting_messages(loop._pull_and_store_message, waits, wake_port)
    else:
        print("anther: flwr.supernode.start_client_internal has no module-level `time` or `_pull_and_store_message` "
              "(another Flower version?): the SuperNode keeps Flower's own waits", file=sys.stderr)
    from server.object_pulls import shorten

    shorten("flwr.supernode.start_client_internal")  # its pulls of message objects from the SuperLink
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
