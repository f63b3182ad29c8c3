"""``anther-deploy``: argument parsing and the ``local`` command (everything on this machine).

Exit codes as ``anther-sim``: 0 done, 2 bad config or input (a message naming the file,
key or address), 1 a step failed (its log's last lines are printed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulation.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from simulation.deploy import procs, steps
from simulation.deploy.layout import DEFAULT_PORT, Layout, layout
from simulation.deploy.supernode_main import DEFAULT_POLL_S
from strategies.runconfig import ConfigError

EPILOG = """\
on one machine (TLS + node authentication, 3 SuperNodes, every process stopped at the end):
  anther-deploy local ./fed --nodes 3 model=tiny-bert rounds=2

a laptop SuperLink (192.168.1.10) and Raspberry Pi SuperNodes:
  laptop$ anther-deploy init ./fed --nodes 2 --host 192.168.1.10
  laptop$ anther-deploy superlink ./fed --host 0.0.0.0
  pi-0$   anther-deploy supernode ./fed --node 0 --superlink 192.168.1.10:9093 --data ~/my_texts.csv
  laptop$ anther-deploy run ./fed model=tiny-bert rounds=2 data.label_names=[a,b,c,d]
  laptop$ anther-deploy stop ./fed
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anther-deploy", description="A Flower deployment with TLS and node authentication: "
                                "certificates and keys, SuperLink, SuperNodes (each running its ClientApp warm), runs.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("init", help="create the CA, the SuperLink's certificate and one key pair per SuperNode")
    q.add_argument("dir")
    q.add_argument("--nodes", type=int, required=True, help="how many SuperNodes (one key pair each)")
    q.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="an address SuperNodes use to reach the SuperLink (repeatable; localhost is always in)")
    q.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the SuperLink's port (default {DEFAULT_PORT})")
    q.add_argument("--days", type=int, default=365, help="certificate validity (default 365)")
    q.add_argument("--force", action="store_true", help="replace an existing deployment's certificates and keys")

    q = sub.add_parser("superlink", help="start the SuperLink (TLS, node authentication) and register the node keys")
    q.add_argument("dir")
    q.add_argument("--host", default="127.0.0.1",
                   help="interface to serve on (default 127.0.0.1: this machine only; 0.0.0.0 for devices on the network)")
    q.add_argument("--port", type=int, default=None, help="default: the port given to init")

    q = sub.add_parser("supernode", help="start one SuperNode with its key and its own data")
    q.add_argument("dir")
    q.add_argument("--node", type=int, required=True)
    q.add_argument("--superlink", required=True, metavar="HOST:PORT")
    q.add_argument("--data", default=None, help="this device's own CSV/JSONL/Parquet (default: partition NODE of the run's data)")
    q.add_argument("--port", type=int, default=None, help="its Runtime API port on 127.0.0.1 (default: a free one)")
    q.add_argument("--poll-s", type=float, default=DEFAULT_POLL_S,
                   help=f"longest wait between the node's pulls for messages while idle (default {DEFAULT_POLL_S}; Flower's own: 3)")
    q.add_argument("--memory-mb", type=float, default=None,
                   help="this device's memory budget (MiB): a call estimated above it is refused before loading the model, "
                        "and the node's ClientApp runtime is held to it by a cgroup where the OS allows")
    q.add_argument("--device", default=None, metavar="PROFILE",
                   help="a device profile (rpi5, phone-mid, ... or the YAML `anther-bench profile` wrote on it): "
                        "its memory_mb is the budget unless --memory-mb is given")
    q.add_argument("--cold", action="store_true",
                   help="Flower's own isolation: a new flwr-clientapp process per message, which imports and loads "
                        "everything each time (default: the ClientApp runs warm in one long-lived process beside the SuperNode)")

    q = sub.add_parser("run", help="submit the App with anther-sim's KEY=VALUE overrides and follow its log")
    q.add_argument("dir")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    q.add_argument("--name", default=None, help="run directory name under DIR/runs (default: a timestamp)")
    q.add_argument("--superlink", default=None, metavar="HOST:PORT", help="default: the address `superlink` recorded")
    q.add_argument("--detach", action="store_true", help="submit and return without following the log")

    q = sub.add_parser("local", help="init (if needed), SuperLink, N SuperNodes and one run on this machine; stop all at the end")
    q.add_argument("dir")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    q.add_argument("--nodes", type=int, default=3)
    q.add_argument("--name", default=None)
    q.add_argument("--device", action="append", default=[], metavar="PROFILE",
                   help="device profile of the nodes, repeatable: node i takes the (i mod count)-th; each node's "
                        "memory budget and what it tells the server (method.rank_assignment=by_device)")

    q = sub.add_parser("stop", help="stop every process started from DIR on this machine")
    q.add_argument("dir")
    return p


LOCAL_ENV = {"OMP_NUM_THREADS": "1"}  # several torch processes share one machine


def device_args(device: str | None, memory_mb: float | None) -> tuple[float | None, tuple[str, float] | None]:
    """(memory budget, (profile name, fp32 GFLOP/s)) of ``--device``: the profile's memory
    unless ``memory_mb`` is given; (memory_mb, None) without a device."""
    if not device:
        return memory_mb, None
    from simulation.cli import CONFIG_DIR
    from simulation.devices import device_profile, profile_memory_mb

    name, numbers = device_profile(device, CONFIG_DIR)
    return (memory_mb if memory_mb is not None else profile_memory_mb(device, numbers),
            (name, float(numbers.get("flops_fp32", 0.0))))


def local(lay: Layout, nodes: int, overrides: list[str], name: str | None, say: steps.Say = print,
          env: dict | None = None, warm: bool = True, poll_s: float = DEFAULT_POLL_S,
          devices: list[str] | None = None) -> Path:
    """Everything on this machine, and every process stopped at the end (also on failure).
    ``env`` is added to every process's environment; ``warm`` and ``poll_s`` as for ``supernode``;
    node i runs with device profile ``devices[i % len(devices)]`` when given."""
    env = {**LOCAL_ENV, **(env or {})}
    if not lay.meta.exists() or lay.read_meta()["nodes"] != nodes:
        steps.init(lay, nodes, [], procs.free_port(), 365, force=True, say=say)
    meta = lay.read_meta()
    port = meta["port"] if not procs.listening("127.0.0.1", meta["port"]) else procs.free_port()
    try:
        address = steps.superlink(lay, "127.0.0.1", port, say=say, extra_env=env)
        for i in range(nodes):
            memory_mb, device = device_args(devices[i % len(devices)] if devices else None, None)
            steps.supernode(lay, i, address, None, None, say=say, extra_env=env, warm=warm, poll_s=poll_s,
                            memory_mb=memory_mb, device=device)
        return steps.run(lay, overrides, name, address, say=say)
    finally:
        steps.stop(lay, say=say)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # KEY=VALUE overrides may come before or after the options (argparse alone would stop at them)
    overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
    args = _parser().parse_args([a for i, a in enumerate(argv) if i < 2 or a not in overrides])
    if hasattr(args, "overrides"):
        args.overrides = overrides
    elif overrides:
        print(f"anther-deploy {args.command}: takes no KEY=VALUE overrides, got {overrides}", file=sys.stderr)
        return EXIT_CONFIG
    lay = layout(args.dir)
    try:
        if args.command == "init":
            steps.init(lay, args.nodes, args.host, args.port, args.days, args.force)
        elif args.command == "superlink":
            steps.superlink(lay, args.host, args.port)
        elif args.command == "supernode":
            memory_mb, device = device_args(args.device, args.memory_mb)
            steps.supernode(lay, args.node, args.superlink, args.data, args.port, warm=not args.cold,
                           poll_s=args.poll_s, memory_mb=memory_mb, device=device)
        elif args.command == "run":
            steps.run(lay, args.overrides, args.name, args.superlink, stream=not args.detach)
        elif args.command == "local":
            local(lay, args.nodes, args.overrides, args.name, devices=args.device)
        elif args.command == "stop":
            steps.stop(lay)
    except ConfigError as err:
        print(f"anther-deploy {args.command}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print(f"anther-deploy {args.command}: interrupted; `anther-deploy stop {lay.root}` stops what it started",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (RuntimeError, OSError) as err:
        print(f"anther-deploy {args.command}: {err}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
