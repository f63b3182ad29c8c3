"""``python -m simulation.deploy.supernode_main ARGS``: ``flower-supernode ARGS`` with a shorter
wait between pulls.

Flower 1.42's SuperNode sleeps 3 s after every pull that brought no message, and 0.5 s
between checks for its ClientApp's reply (``flwr/supernode/start_client_internal.py``,
not configurable): a message that arrives just after a pull waits up to 3 s, every round
and, in split training, every exchange. This entry pulls every ``HOT_POLL_S`` (0.05 s)
for ``HOT_WINDOW_S`` (2 s) after the node had a message or sent a reply (a run's next
message usually follows within a round's aggregation), then doubles the wait up to
``ANTHER_SUPERNODE_POLL_S`` seconds (0.25 by default; ``anther-deploy supernode --poll-s``)
while none comes, and makes the second wait 0.02 s, for that module only, then runs
Flower's own ``flower_supernode``. The cost is at most 40 small HTTPS requests per node in
the 2 s after each of its messages, and one per interval while idle. Where the module does not look as expected
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
HOT_POLL_S = 0.05  # between pulls shortly after a message or a reply: the run's next message often follows soon
HOT_WINDOW_S = 2.0  # how long after one the node keeps pulling every HOT_POLL_S


class PollWaits:
    """The waits after empty pulls: ``HOT_POLL_S`` for ``HOT_WINDOW_S`` seconds after the
    node had a message or sent a reply, then doubling up to ``poll_s`` while none comes (a
    few dozen requests after each message, none more while idle). ``clock`` is for tests."""

    def __init__(self, poll_s: float, clock=time.monotonic) -> None:
        self.poll_s, self.next_s, self.clock, self.hot_until = poll_s, poll_s, clock, -1.0

    def had_message(self) -> None:
        self.hot_until = self.clock() + HOT_WINDOW_S
        self.next_s = min(HOT_POLL_S, self.poll_s)

    def empty_pull(self) -> float:
        if self.clock() < self.hot_until:
            return min(HOT_POLL_S, self.poll_s)
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


def _noting_replies(push, waits: PollWaits):
    """Flower's ``_push_messages`` (it returns once the ClientApp's reply was sent), then
    ``waits.had_message()``: the run's next message follows the server's aggregation."""
    def pushed(*args, **kwargs):
        try:
            return push(*args, **kwargs)
        finally:
            waits.had_message()
    return pushed


def main() -> int:
    poll_s = float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    if getattr(loop, "time", None) is time and all(callable(getattr(loop, f, None))
                                                   for f in ("_pull_and_store_message", "_push_messages")):
        waits = PollWaits(poll_s)
        loop.time = _capped_time(waits)
        wake_port = int(os.environ[WAKE_ENV]) if os.environ.get(WAKE_ENV) else None
        loop._pull_and_store_message = _noting_messages(loop._pull_and_store_message, waits, wake_port)
        loop._push_messages = _noting_replies(loop._push_messages, waits)
    else:
        print("anther: flwr.supernode.start_client_internal has no module-level `time`, `_pull_and_store_message` or "
              "`_push_messages` (another Flower version?): the SuperNode keeps Flower's own waits", file=sys.stderr)
    from server.object_pulls import shorten

    shorten("flwr.supernode.start_client_internal")  # its pulls of message objects from the SuperLink
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
