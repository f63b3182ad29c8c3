"""One function per ``anther-deploy`` command. Each checks what it relies on first (files,
certificates, keys, the SuperLink answering with a certificate the CA signed), says what
it started, where its log is and how to stop it, and raises :class:`ConfigError` (exit 2)
naming the file, key or address at fault.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Callable

from client.budget import DEVICE_KEY, GFLOPS_KEY, MEMORY_KEY
from simulation.deploy import certs, memcap, procs
from simulation.deploy.layout import CONNECTION, DEFAULT_PORT, Layout
from simulation.deploy.supernode_main import DEFAULT_POLL_S, POLL_ENV, WAKE_ENV
from strategies.runconfig import ConfigError

STARTUP_S = 60.0
ACCEPTED = "SuperNode ID:"  # flower-supernode's log once the SuperLink took it (a refused node exits)
READY = "warm ClientApp runtime polling"  # the warm runtime's log once it imported the client stack
Say = Callable[[str], None]


def init(lay: Layout, nodes: int, hosts: list[str], port: int, days: int, force: bool, say: Say = print) -> None:
    if nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {nodes}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    if days < 1:
        raise ConfigError(f"--days must be >= 1, got {days}")
    if lay.meta.exists() and not force:
        raise ConfigError(f"{lay.root} already holds a deployment (deploy.json); pass --force to replace its "
                          "certificates and keys (registered nodes then need their new keys)")
    certs.create_tls(lay, hosts, days)
    for i in range(nodes):
        certs.create_node_key(lay.node_key(i), lay.node_pub(i))
    lay.write_meta({"nodes": nodes, "port": port, "hosts": certs.cert_hosts(hosts), "days": days})
    say(f"created in {lay.root}:")
    say(f"  {lay.ca_cert}  (the CA: copy to every SuperNode and CLI machine)")
    say(f"  {lay.link_cert} + superlink.key  (valid for {', '.join(certs.cert_hosts(hosts))}; {days} days)")
    say(f"  {lay.root / 'nodes'}/node-0..{nodes - 1}/auth_key(.pub)  (copy node-<i>/ to SuperNode i)")
    say(f"next: anther-deploy superlink {lay.root}")


def _tls_probe(host: str, port: int, ca: Path, timeout: float = 5.0) -> None:
    """Connect to ``host:port`` and verify its certificate against ``ca``, or raise ConfigError."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise ConfigError(f"no SuperLink answers at {host}:{port} ({err.strerror or err}); start it with "
                          "`anther-deploy superlink DIR` on its machine, or check the address and firewall") from None
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with ctx.wrap_socket(sock, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as err:
        raise ConfigError(f"the SuperLink at {host}:{port} presented a certificate that {ca} does not accept "
                          f"({err.verify_message}); use the ca.crt from the same `anther-deploy init`, "
                          "and a --host the certificate names") from None
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(f"TLS handshake with {host}:{port} failed ({err}); is it an Anther SuperLink with TLS?") from None
    finally:
        sock.close()


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--superlink must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def write_connection(lay: Layout, address: str) -> Path:
    """``$FLWR_HOME/config.toml`` of the ``flwr`` CLI: one TLS connection to the SuperLink
    (Flower wants ``root-certificates`` as an absolute path)."""
    home = lay.home("cli")
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "{address}"\nroot-certificates = "{lay.ca_cert}"\n')
    return path


def flwr(lay: Layout, args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(procs.BIN / "flwr"), *args], env=procs.home_env(lay, "cli"), cwd=lay.root,
                          capture_output=True, text=True, timeout=timeout)


def register(lay: Layout, nodes: list[int], say: Say = print) -> None:
    """``flwr supernode register`` each node's public key with the running SuperLink."""
    for i in nodes:
        got = flwr(lay, ["supernode", "register", str(lay.node_pub(i)), CONNECTION, "--name", f"node-{i}"])
        out = (got.stdout + got.stderr).strip()
        if got.returncode != 0:
            raise ConfigError(f"registering {lay.node_pub(i)} failed (exit {got.returncode}): {out[-600:]}")
        say(f"  registered node-{i} ({lay.node_pub(i)})")


def superlink(lay: Layout, host: str, port: int | None, say: Say = print, extra_env: dict | None = None) -> str:
    """Start the SuperLink (TLS, node authentication) detached; register every node key.
    Returns the address the CLI uses."""
    meta = lay.read_meta()
    certs.check_superlink_tls(lay)
    port = port or meta.get("port", DEFAULT_PORT)
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "127.0.0.1", "localhost") else host
    if procs.recorded(lay, "superlink") is not None:
        raise ConfigError(f"a SuperLink started from {lay.root} is still running; `anther-deploy stop {lay.root}` first")
    if procs.listening(local, port):
        raise ConfigError(f"port {port} on {local} is already in use; pass --port or stop what listens there")
    cmd = [str(procs.BIN / "flower-superlink"), "--ssl-ca-certfile", str(lay.ca_cert),
           "--ssl-certfile", str(lay.link_cert), "--ssl-keyfile", str(lay.link_key),
           "--enable-supernode-auth", "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    ps = procs.start(lay, "superlink", cmd, procs.home_env(lay, "superlink", **(extra_env or {})))
    if not procs.wait_for(lambda: procs.listening(local, port), STARTUP_S, alive=ps):
        procs.stop(lay, ["superlink"])
        raise RuntimeError(f"the SuperLink did not start listening on {local}:{port}:\n{procs.tail(lay.log('superlink'))}")
    address = f"{local}:{port}"
    write_connection(lay, address)
    meta["address"] = address
    lay.write_meta(meta)
    say(f"SuperLink (TLS, node authentication) on {host}:{port}, pid {ps.pid}; log: {lay.log('superlink')}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"  note: Flower 1.42 serves its Control and ServerAppIo APIs on this same port without "
            f"authentication: let only the SuperNodes and your own machine reach port {port} (see the README's Deploy)")
    register(lay, list(range(meta["nodes"])), say)
    say(f"stop with: anther-deploy stop {lay.root}")
    return address


def node_config(node: int, nodes: int, data: str | None, memory_mb: float | None = None,
                device: tuple[str, float] | None = None) -> str:
    """Flower ``--node-config``: this device's own file, or (no file) partition ``node`` of
    the run's dataset, as in the simulator; its memory budget and device profile."""
    config = f'data-path="{Path(data).expanduser().resolve()}"' if data else f"partition-id={node} num-partitions={nodes}"
    if memory_mb:
        config += f" {MEMORY_KEY}={float(memory_mb)}"
    if device is not None:
        config += f' {DEVICE_KEY}="{device[0]}" {GFLOPS_KEY}={float(device[1])}'
    return config


def supernode(lay: Layout, node: int, address: str, data: str | None, port: int | None,
              say: Say = print, extra_env: dict | None = None, key: Path | None = None, who: str | None = None,
              warm: bool = True, poll_s: float = DEFAULT_POLL_S, memory_mb: float | None = None,
              device: tuple[str, float] | None = None) -> None:
    """Start SuperNode ``node`` detached, after checking its key, the CA and the SuperLink, and
    wait until the SuperLink accepted it (it logs its node id) or refused it (HTTP 412: it exits).
    ``warm``: its ClientApp tasks run in one long-lived process beside it
    (:mod:`simulation.deploy.warm_runtime`), else in a ``flwr-clientapp`` process per
    message, as Flower does. ``memory_mb`` holds the process(es) running the ClientApp.
    ``device``: (profile name, fp32 GFLOP/s), told to the server in the node's "hello"
    reply (``method.rank_assignment=by_device``)."""
    meta = lay.read_meta()
    if not 0 <= node < meta["nodes"]:
        raise ConfigError(f"--node must be in 0..{meta['nodes'] - 1} ({lay.meta} has {meta['nodes']} nodes), got {node}")
    key = key or lay.node_key(node)
    certs.check_ca(lay.ca_cert)
    certs.check_node_key(key)
    host, link_port = _split_address(address)
    _tls_probe(host, link_port, lay.ca_cert)
    if data and not Path(data).expanduser().exists():
        say(f"warning: node {node}'s data file {data} does not exist: its rounds will fail (reported to the server)")
    who = who or f"supernode-{node}"
    if procs.recorded(lay, who) is not None:
        raise ConfigError(f"{who} started from {lay.root} is still running; `anther-deploy stop {lay.root}` first")
    port = port or procs.free_port()
    if memory_mb is not None and memory_mb <= 0:
        raise ConfigError(f"--memory-mb must be > 0, got {memory_mb}")
    config = node_config(node, meta["nodes"], data, memory_mb, device)
    cmd = [sys.executable, "-m", "simulation.deploy.supernode_main", "--superlink", address, "--root-certificates", str(lay.ca_cert),
           "--auth-supernode-private-key", str(key), "--host", "127.0.0.1", "--port", str(port),
           "--node-config", config]
    runtime_env = {POLL_ENV: str(poll_s)}
    if warm:
        cmd += ["--isolation", "process"]
        runtime_env[WAKE_ENV] = str(wake_port := procs.free_port(kind=socket.SOCK_DGRAM))
    env = procs.python_env(lay, who, **{**runtime_env, **(extra_env or {})})
    ps = procs.start(lay, who, cmd, env)

    def log_says(text: str) -> bool:
        return text in procs.tail(lay.log(who), 80)

    if memory_mb and not warm:
        say(f"  SuperNode and its ClientApps {memcap.cap(ps.pid, memory_mb, group(lay, who))}")
    procs.wait_for(lambda: log_says(ACCEPTED), STARTUP_S, alive=ps)
    if not log_says(ACCEPTED):
        procs.stop(lay, [who])
        raise ConfigError(f"the SuperLink at {address} refused node {node} (key {key}): is its public key "
                          f"registered? (`anther-deploy superlink` registers {lay.root}/nodes/*)\n"
                          f"{procs.tail(lay.log(who), 8)}")
    if warm:
        start_clientapp(lay, who, port, wake_port, ps.pid, memory_mb, extra_env, say)
    say(f"SuperNode {node} -> {address} (Runtime API on 127.0.0.1:{port}), pid {ps.pid}; log: {lay.log(who)}"
        + (f"; its ClientApp runs warm, log: {lay.log('clientapp-' + who)}" if warm else ""))


def start_clientapp(lay: Layout, who: str, port: int, wake_port: int, supernode_pid: int, memory_mb: float | None,
                    extra_env: dict | None, say: Say) -> None:
    """Start the node's warm ClientApp runtime (:mod:`simulation.deploy.warm_runtime`), held to
    ``memory_mb``, and wait until it polls the SuperNode."""
    name = f"clientapp-{who}"
    ps = procs.start(lay, name, [sys.executable, "-m", "simulation.deploy.warm_runtime", "--runtime-api",
                                 f"127.0.0.1:{port}", "--wake-port", str(wake_port), "--parent-pid", str(supernode_pid)],
                     procs.python_env(lay, name, **(extra_env or {})))
    if memory_mb:
        say(f"  its ClientApp {memcap.cap(ps.pid, memory_mb, group(lay, name))}")
    if not procs.wait_for(lambda: READY in procs.tail(lay.log(name), 20), STARTUP_S, alive=ps):
        procs.stop(lay, [name, who])
        raise RuntimeError(f"the node's ClientApp runtime did not start:\n{procs.tail(lay.log(name))}")


def group(lay: Layout, who: str) -> str:
    """The cgroup holding ``who``'s memory budget (unique per deployment directory)."""
    return f"anther-{hashlib.sha1(str(lay.root).encode()).hexdigest()[:8]}-{who}"


def _run_overrides(lay: Layout, overrides: list[str], run_dir: Path) -> dict:
    """The run_config keys this run changes from the App's defaults (``flwr run`` rejects
    keys the App does not declare; the same overrides as ``anther-sim`` are checked here)."""
    from simulation.appconfig import composed
    from simulation.config import build_sim_config

    nodes = lay.read_meta()["nodes"]
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    cfg, _ = composed(overrides)
    sim = build_sim_config(cfg, run_dir, deployed=True)
    flat = sim.run_config()
    if "num_clients" not in given:
        flat["num_clients"] = nodes
    if "clients_per_round" not in given:
        flat["clients_per_round"] = min(flat["clients_per_round"], flat["num_clients"])
    flat["pool"] = 0  # one SuperNode per client
    declared = tomllib.loads((procs.REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    unknown = sorted(set(flat) - set(declared))
    if unknown:
        raise ConfigError(f"the App does not declare run-config key(s) {unknown}: run `python -m simulation.appconfig`")
    return {k: v for k, v in flat.items() if declared[k] != v}


def run(lay: Layout, overrides: list[str], name: str | None, address: str | None, stream: bool = True,
        say: Say = print, timeout: float | None = None) -> Path:
    """Submit the App with ``overrides`` to the SuperLink; with ``stream``, follow its log
    until the run ends. Returns the run directory (on the SuperLink's machine)."""
    from simulation.appconfig import toml_value

    meta = lay.read_meta()
    address = address or meta.get("address")
    if not address:
        raise ConfigError(f"no SuperLink address for {lay.root}: start one with `anther-deploy superlink {lay.root}` "
                          "or pass --superlink HOST:PORT")
    certs.check_ca(lay.ca_cert)
    host, port = _split_address(address)
    _tls_probe(host, port, lay.ca_cert)
    name = name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = lay.run_dir(name)
    changed = _run_overrides(lay, overrides, run_dir)
    write_connection(lay, address)
    procs.copy_app(lay.app)
    run_config = " ".join(f"{k}={toml_value(v)}" for k, v in changed.items())
    say(f"submitting the App to {address}: {run_config}")
    args = ["run", str(lay.app), CONNECTION, "--run-config", run_config, *(["--stream"] if stream else [])]
    log = lay.log(f"run-{name}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen([str(procs.BIN / "flwr"), *args], env=procs.home_env(lay, "cli"), cwd=lay.root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                say(line.rstrip("\n"))
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    if proc.returncode != 0 or "Successfully started run" not in text:
        raise RuntimeError(f"flwr run failed (exit {proc.returncode}); log: {log}\n{procs.tail(log, 20)}")
    run_id = re.search(r"Successfully started run (\d+)", text).group(1)
    say(f"run {run_id}: run directory {run_dir} (on the SuperLink's machine); "
        f"its log: FLWR_HOME={lay.home('cli')} flwr log {run_id} {CONNECTION} --show")
    summary = run_dir / "summary.json"
    if stream and summary.exists():
        s = json.loads(summary.read_text())
        say(f"done: {s.get('rounds')} rounds, final accuracy {s.get('final_eval_accuracy')}, "
            f"up {s.get('total_bytes_up')} B, down {s.get('total_bytes_down')} B")
    return run_dir


def stop(lay: Layout, say: Say = print) -> list[str]:
    stopped = procs.stop(lay)
    for who in stopped:
        peak = memcap.peak_mb(group(lay, who))
        if peak is not None:
            say(f"  {who}: peak memory {peak:.0f} MiB under its budget's cgroup")
        memcap.release(group(lay, who))
    say(f"stopped: {', '.join(stopped)}" if stopped else f"nothing started from {lay.root} is running")
    return stopped
