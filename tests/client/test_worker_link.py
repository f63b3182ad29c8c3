"""The ClientApp front and a deployed node's warm worker (client/app.py, client/worker_link.py)."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client import app as front
from client.worker_link import WORKER_KEY, WorkerGone, call, key_file, serve


def _msg() -> Message:
    content = RecordDict({"a": ArrayRecord([np.arange(4, dtype=np.float32)]), "c": ConfigRecord({"x": 3})})
    return Message(content, dst_node_id=5, message_type="train")


def _context(sock: str = "") -> Context:
    return Context(run_id=1, node_id=5, node_config={WORKER_KEY: sock} if sock else {},
                   state=RecordDict({"s": ConfigRecord({"n": 1})}), run_config={"rounds": 2})


def _worker(sock, handle, ready: threading.Event | None = None) -> threading.Thread:
    t = threading.Thread(target=serve, args=(sock, handle), kwargs={"once": True}, daemon=True)
    t.start()
    for _ in range(200):
        if key_file(sock).exists() and sock.exists():
            break
        threading.Event().wait(0.01)
    return t


def test_a_call_returns_the_workers_reply_and_its_context_state(tmp_path):
    sock = tmp_path / "w.sock"
    seen = {}

    def handle(op, msg, context, override):
        seen.update(op=op, x=msg.content["c"]["x"], a=msg.content["a"].to_numpy_ndarrays()[0].tolist(),
                    node_config=dict(context.node_config), override=override)
        context.state["s"]["n"] = 2
        return Message(RecordDict({"r": ConfigRecord({"y": 7})}), reply_to=msg)

    t = _worker(sock, handle)
    msg, ctx = _msg(), _context(str(sock))
    reply = call(str(sock), "train", msg, ctx, {"lr": 0.1})
    t.join(5)
    assert seen == {"op": "train", "x": 3, "a": [0.0, 1.0, 2.0, 3.0], "node_config": {WORKER_KEY: str(sock)},
                    "override": {"lr": 0.1}}
    assert reply.content["r"]["y"] == 7
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert ctx.state["s"]["n"] == 2  # the worker's change to the state comes back
    assert oct(key_file(sock).stat().st_mode & 0o777) == "0o600"


def test_no_worker_means_the_front_answers_itself(tmp_path, monkeypatch):
    answered = []
    monkeypatch.setattr(front, "answer", lambda op, msg, ctx, rc: answered.append(op) or msg)
    msg = _msg()
    assert front._dispatch("query", msg, _context(str(tmp_path / "absent.sock")), None) is msg
    assert answered == ["query"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker "dies"
def test_a_worker_dying_during_the_call_is_an_error_reply(tmp_path):
    sock = tmp_path / "w.sock"

    def handle(op, msg, context, override):
        raise MemoryError("killed")

    t = _worker(sock, handle)
    with pytest.raises(WorkerGone, match="stopped during the call"):
        call(str(sock), "train", _msg(), _context(str(sock)), None)
    t.join(5)

    t = _worker(sock, handle)
    reply = front._dispatch("train", _msg(), _context(str(sock)), None)
    t.join(5)
    assert reply.has_error() and "stopped during the call" in reply.error.reason


def test_a_caller_without_the_key_is_refused(tmp_path):
    sock = tmp_path / "w.sock"
    calls = []
    t = _worker(sock, lambda *a: calls.append(a))
    key_file(sock).write_bytes(b"wrong key")
    assert call(str(sock), "train", _msg(), _context(str(sock)), None) is None  # then answered in-process
    assert calls == []
    t.join(0.1)


def test_the_front_imports_flower_only():
    code = ("import sys, client.app; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'peft', 'datasets', 'pandas', 'matplotlib', 'ray', 'simulation', 'server'}); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
