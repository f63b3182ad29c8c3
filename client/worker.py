"""A deployed node's warm client worker: ``python -m client.worker --socket PATH``.

Started by ``anther-deploy supernode`` beside ``flower-supernode``; answers the ClientApp
front's calls (:mod:`client.worker_link`) with :mod:`client.handlers`, keeping imports,
backbone, data and per-client state caches between messages as a simulation worker does.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.worker", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="Unix socket path (its key is written to PATH.key, owner-only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import client.handlers  # noqa: F401 - torch, transformers, ... imported once, before the first call
    from client.app import answer
    from client.worker_link import serve

    try:
        serve(args.socket, answer)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
