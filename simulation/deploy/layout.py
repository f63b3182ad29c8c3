"""What lives where in a deployment directory (``anther-deploy init DIR``).

    DIR/deploy.json             nodes, SuperLink port and the host names its certificate covers
    DIR/tls/ca.crt, ca.key      the federation's certificate authority (key: owner-only)
    DIR/tls/superlink.crt, .key the SuperLink's TLS certificate (SANs: the hosts) and key
    DIR/nodes/node-<i>/auth_key(.pub)   SuperNode i's authentication key pair (OpenSSH EC)
    DIR/flwr-home/<who>/        FLWR_HOME of each process (Flower's config.toml, FABs, caches)
    DIR/logs/<who>.log          every process's output
    DIR/pids/<who>.json         pid and start time of each process started here (for ``stop``)
    DIR/app/                    the App copy ``flwr run`` packages (rewritten per run)
    DIR/runs/<name>/            run directories (written by the ServerApp on the SuperLink's machine)

Only the SuperLink's machine needs ``tls/`` with keys; a SuperNode needs ``tls/ca.crt``
and its own ``nodes/node-<i>/auth_key``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from strategies.runconfig import ConfigError

DEFAULT_PORT = 9093
CONNECTION = "anther"  # the SuperLink connection's name in $FLWR_HOME/config.toml


@dataclasses.dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def meta(self) -> Path:
        return self.root / "deploy.json"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.tls / "ca.key"

    @property
    def link_cert(self) -> Path:
        return self.tls / "superlink.crt"

    @property
    def link_key(self) -> Path:
        return self.tls / "superlink.key"

    def node_dir(self, node: int) -> Path:
        return self.root / "nodes" / f"node-{node}"

    def node_key(self, node: int) -> Path:
        return self.node_dir(node) / "auth_key"

    def node_pub(self, node: int) -> Path:
        return self.node_dir(node) / "auth_key.pub"

    def home(self, who: str) -> Path:
        return self.root / "flwr-home" / who

    def log(self, who: str) -> Path:
        return self.root / "logs" / f"{who}.log"

    def pid(self, who: str) -> Path:
        return self.root / "pids" / f"{who}.json"

    @property
    def app(self) -> Path:
        return self.root / "app"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def read_meta(self) -> dict:
        if not self.meta.exists():
            raise ConfigError(f"{self.root} is not a deployment directory (no deploy.json): run `anther-deploy init {self.root}` first")
        return json.loads(self.meta.read_text())

    def write_meta(self, meta: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta.write_text(json.dumps(meta, indent=2) + "\n")


def layout(root: str | Path) -> Layout:
    return Layout(Path(root).expanduser().resolve())


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only (created 0600; never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
