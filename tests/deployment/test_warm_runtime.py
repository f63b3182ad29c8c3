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
