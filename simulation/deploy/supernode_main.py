"""``python -m simulation.deploy.supernode_main ARGS``: ``flower-supernode ARGS`` with a shorter
wait between pulls.

Flower 1.42's SuperNode sleeps 3 s after every pull that brought no message, and 0.5 s
between checks for its ClientApp's reply (``flwr/supernode/start_client_internal.py``,
not configurable): a message that arrives just after a pull waits up to 3 s, every round
and, in split training, every exchange. This entry caps those waits at
``ANTHER_SUPERNODE_POLL_S`` seconds (0.25 by default; ``anther-deploy supernode --poll-s``)
for that module only, then runs Flower's own ``flower_supernode``. The cost is one small
HTTPS request per node per interval while idle. Where the module does not look as expected
(another Flower version) it runs unchanged, with a warning.

With ``ANTHER_WARM_RUNTIME=HOST:PORT`` (the SuperNode's own Runtime API; ``anther-deploy
supernode`` sets it and passes ``--isolation process``), the node's ClientApp tasks run in
this process, warm, instead of a ``flwr-clientapp`` process per message
(:mod:`simulation.deploy.warm_runtime`).
"""

from __future__ import annotations

import os
import sys
import time
import types

POLL_ENV = "ANTHER_SUPERNODE_POLL_S"
WARM_ENV = "ANTHER_WARM_RUNTIME"
DEFAULT_POLL_S = 0.25


def _capped_time(poll_s: float) -> types.SimpleNamespace:
    sleep = time.sleep
    clock = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    return types.SimpleNamespace(**{**clock, "sleep": lambda s: sleep(min(s, poll_s))})


def main() -> int:
    poll_s = float(os.environ.get(POLL_ENV, DEFAULT_POLL_S))
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    if getattr(loop, "time", None) is time:
        loop.time = _capped_time(poll_s)
    else:
        print(f"anther: flwr.supernode.start_client_internal has no module-level `time`: the SuperNode keeps "
              "Flower's own poll interval", file=sys.stderr)
    if os.environ.get(WARM_ENV):
        import logging

        from simulation.deploy.warm_runtime import WarmRuntime

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
        for name in ("anther", "client"):  # Anther's loggers; Flower's keep their own handler
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)
        WarmRuntime(os.environ[WARM_ENV], poll_s=min(poll_s, 0.05)).start()
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
