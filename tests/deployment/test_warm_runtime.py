"""The warm ClientApp runtime answers only runs of this installation's App
(simulation/deploy/warm_runtime.py); end to end it runs in tests/deployment/test_deploy_tls.py."""

from __future__ import annotations

import io
import zipfile

from simulation.deploy.warm_runtime import REPO, fab_runs_here


def _fab(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_fab_of_this_installation_runs_here():
    files = {n: (REPO / n).read_bytes() for n in ("client/app.py", "client/handlers.py", "server/app.py")}
    assert fab_runs_here(_fab({**files, "pyproject.toml": b"[project]\nname='changed'\n"})) == (True, "")


def test_a_fab_with_changed_or_foreign_code_does_not():
    changed = (REPO / "client/app.py").read_bytes() + b"\n# edited\n"
    ok, why = fab_runs_here(_fab({"client/app.py": changed}))
    assert not ok and "client/app.py differs" in why
    ok, why = fab_runs_here(_fab({"mine/app.py": b"app = None\n"}))
    assert not ok and "mine/app.py is not part of this installation" in why


def test_a_runtime_that_dies_is_started_again_while_the_supernode_lives(monkeypatch, caplog):
    import os

    from simulation.deploy import warm_runtime as wr

    codes = [-9, 0]
    calls = []
    monkeypatch.setattr(wr.subprocess, "call", lambda cmd: calls.append(cmd) or codes.pop(0))
    monkeypatch.setattr(wr.time, "sleep", lambda s: None)
    assert wr.supervise(["--runtime-api", "127.0.0.1:1"], os.getpid()) == 0
    assert len(calls) == 2 and all(c[-1] == "--once" for c in calls)
    assert "SIGKILL: out of memory?" in caplog.text


def test_no_restart_once_the_supernode_is_gone_or_after_too_many_deaths(monkeypatch):
    from simulation.deploy import warm_runtime as wr

    calls = []
    monkeypatch.setattr(wr.subprocess, "call", lambda cmd: calls.append(cmd) or 1)
    monkeypatch.setattr(wr.time, "sleep", lambda s: None)
    monkeypatch.setattr(wr, "_alive", lambda pid: False)
    assert wr.supervise([], 12345) == 0 and len(calls) == 1
    monkeypatch.setattr(wr, "_alive", lambda pid: True)
    assert wr.supervise([], 12345) == 1 and len(calls) == 1 + wr.RESTARTS + 1


def test_the_supernodes_datagram_wakes_an_idle_runtime_at_once():
    import socket
    import time

    from simulation.deploy import procs
    from simulation.deploy.supernode_main import PollWaits, _noting_messages
    from simulation.deploy.warm_runtime import WarmRuntime

    port = procs.free_port(kind=socket.SOCK_DGRAM)
    rt = WarmRuntime("127.0.0.1:1", poll_s=5.0, wake_port=port)
    pull = _noting_messages(lambda: 7, PollWaits(0.25), port)  # Flower's pull that stored a message of run 7
    for _ in range(3):
        assert pull() == 7
    t0 = time.monotonic()
    rt._idle()  # three datagrams waiting: returns at once and drains them all
    assert time.monotonic() - t0 < 1.0
    rt.poll_s = 0.2
    t0 = time.monotonic()
    rt._idle()  # nothing new: waits its poll
    assert time.monotonic() - t0 >= 0.15
