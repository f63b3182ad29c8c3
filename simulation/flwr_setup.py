"""Add the ``local-simulation`` SuperLink connection to the Flower configuration file.

Flower 1.42 reads SuperLink connections from ``$FLWR_HOME/config.toml`` (default
``~/.flwr/config.toml``), not from ``pyproject.toml``; on a fresh HOME ``flwr`` creates it
with ``local`` (local simulation runtime, 2 SuperNodes) and ``supergrid`` only. This adds
or updates one connection, so that ``flwr run . local-simulation`` works::

    python -m simulation.flwr_setup [--name local-simulation] [--num-supernodes N] [--flwr-home DIR]

    [superlink.local-simulation]
    address = ":local:"            # flwr starts a local SuperLink in simulation mode
    options.num-supernodes = 10    # default: num_clients of [tool.flwr.app.config]

Other connections are kept. A missing connection is appended (the rest of the file,
comments included, stays as it is); updating one rewrites the file the way Flower does
(comments are lost). Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
LOCAL_ADDRESSES = (":local:", ":local-in-memory:")  # Flower's local-runtime magic values


def default_num_supernodes(pyproject: Path = PYPROJECT) -> int:
    """Return ``num_clients`` from ``[tool.flwr.app.config]`` of ``pyproject``, or 10."""
    try:
        value = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]["num_clients"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return 10
    return value if isinstance(value, int) and value > 0 else 10


def flwr_home(explicit: str | None = None) -> Path:
    """Return the Flower directory as ``flwr`` resolves it: ``explicit``, ``$FLWR_HOME`` or ``~/.flwr``."""
    return Path(explicit or os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return nested tables as dotted keys (``options.num-supernodes``), as Flower writes them."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def ensure_connection(config_path: Path, name: str, num_supernodes: int) -> tuple[bool, dict[str, Any]]:
    """Create or update connection ``name`` in ``config_path``.

    Parameters
    ----------
    config_path : Path
        The Flower configuration file; if missing, it starts from Flower's default.
    name : str
        Connection name, as in ``flwr run . <name>``.
    num_supernodes : int
        Number of simulated SuperNodes (``options.num-supernodes``).

    Returns
    -------
    tuple[bool, dict]
        Whether the file was written (``False``: it already held this connection), and
        the connection as the file now holds it.

    Raises
    ------
    SystemExit
        With a message naming the file, if it cannot be read, parsed or written, or if
        ``superlink``, ``superlink.<name>`` or its ``options`` is not a table.
    """
    from flwr.cli.constant import (
        DEFAULT_FLOWER_CONFIG_TOML,  # what flwr writes on a fresh HOME
    )

    try:
        text = config_path.read_text() if config_path.exists() else DEFAULT_FLOWER_CONFIG_TOML
        doc: dict[str, Any] = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise SystemExit(f"error: cannot read the Flower configuration file {config_path}: {err}") from err
    links = doc.setdefault("superlink", {})
    conn = links.get(name, {}) if isinstance(links, dict) else None
    if not isinstance(conn, dict) or not isinstance(conn.get("options", {}), dict):
        raise SystemExit(f"error: {config_path}: 'superlink', 'superlink.{name}' or its 'options' "
                         "is not a table; fix the file by hand")
    address = conn.get("address") if conn.get("address") in LOCAL_ADDRESSES else ":local:"
    wanted = {"address": address, **conn}
    wanted.update(address=address, options={**conn.get("options", {}), "num-supernodes": num_supernodes})
    if conn == wanted:
        return False, conn
    links[name] = wanted
    section = f'\n[superlink.{name}]\naddress = "{address}"\noptions.num-supernodes = {num_supernodes}\n'
    new_text = text.rstrip("\n") + "\n" + section if not conn else None
    if new_text is None or tomllib.loads(new_text) != doc:  # an update, or appending would not parse as meant
        import tomli_w  # a dependency of flwr, which writes this file with it too

        for key, value in links.items():
            links[key] = _flatten(value) if isinstance(value, dict) else value
        new_text = re.sub(r'^"([\w-]+(?:\.[\w-]+)+)" =', r"\1 =", tomli_w.dumps(doc), flags=re.M)
    try:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        target = config_path.resolve()  # a symlinked file stays a symlink
        target.with_name(target.name + ".tmp").write_text(new_text)
        target.with_name(target.name + ".tmp").replace(target)
    except OSError as err:
        raise SystemExit(f"error: cannot write the Flower configuration file {config_path}: {err}") from err
    return True, wanted


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, update the Flower configuration file, say what was done."""
    parser = argparse.ArgumentParser(prog="python -m simulation.flwr_setup", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="local-simulation", help="connection name (default: %(default)s)")
    parser.add_argument("--num-supernodes", type=int, default=default_num_supernodes(),
                        help="simulated SuperNodes; must equal the run's num_clients (default: %(default)s)")
    parser.add_argument("--flwr-home", help="Flower directory (default: $FLWR_HOME, else ~/.flwr)")
    args = parser.parse_args(argv)
    if args.num_supernodes < 1:
        parser.error("--num-supernodes must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        parser.error("--name may only contain letters, digits, '-' and '_'")
    path = flwr_home(args.flwr_home) / "config.toml"
    changed, conn = ensure_connection(path, args.name, args.num_supernodes)
    print(f"{'Wrote' if changed else 'Already up to date:'} [superlink.{args.name}] in {path}\n"
          f'  address = "{conn["address"]}"  options.num-supernodes = {args.num_supernodes}')
    env = "" if path.parent.resolve() == flwr_home().resolve() else f"FLWR_HOME={path.parent} "
    print(f"Run the App with:  {env}flwr run . {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
