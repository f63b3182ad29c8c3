"""A warm client worker and the link to it (standard library and Flower's serde only).

Flower's SuperNode starts a fresh ``flwr-clientapp`` process for every message; the
ClientApp would import torch and transformers and load the backbone each time (5 s and
370 MB of imports alone here, before any work). On a deployed node, ``anther-deploy
supernode`` therefore also starts one long-lived worker (``python -m client.worker``) that
keeps the imports, the backbone and the data in memory, and names its socket in the
node config (``worker-socket``). The ClientApp front (:mod:`client.app`) then only
forwards: the message and the context go to the worker over a Unix socket (Flower's
protobuf serialization, an authentication key from a file next to the socket), the
reply and the updated ``context.state`` come back.

A worker that does not answer the connection is not needed: the front runs the handler
in its own process (logged). A worker that dies during a call (e.g. out of memory)
becomes an error reply for that message, counted as the client's failure by the server.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Callable

from flwr.app import Context, Message

log = logging.getLogger("anther.client")
WORKER_KEY = "worker-socket"  # node_config key: the worker's Unix socket path


def key_file(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.key")


def _pack(msg: Message, context: Context) -> tuple[bytes, bytes]:
    from flwr.common.serde import context_to_proto, message_to_proto

    return message_to_proto(msg).SerializeToString(), context_to_proto(context).SerializeToString()


def _unpack(msg_bytes: bytes, ctx_bytes: bytes) -> tuple[Message, Context]:
    from flwr.common.serde import context_from_proto, message_from_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    return message_from_proto(ProtoMessage.FromString(msg_bytes)), context_from_proto(ProtoContext.FromString(ctx_bytes))


class WorkerGone(RuntimeError):
    """The worker accepted the call and then vanished (crashed, killed, out of memory)."""


def call(socket_path: str, op: str, msg: Message, context: Context, override: dict[str, Any] | None) -> Message | None:
    """Have the worker at ``socket_path`` answer ``msg``; update ``context.state`` in place.
    None when no worker answers the connection (the caller runs the handler itself)."""
    try:
        conn = Client(socket_path, family="AF_UNIX", authkey=key_file(socket_path).read_bytes())
    except (OSError, EOFError, AuthenticationError) as err:
        log.warning("client worker at %s does not answer (%s); running this message in the ClientApp process",
                    socket_path, err)
        return None
    with conn:
        try:
            conn.send((op, *_pack(msg, context), override))
            reply_bytes, ctx_bytes = conn.recv()
        except (OSError, EOFError) as err:
            raise WorkerGone(f"the client worker at {socket_path} stopped during the call ({type(err).__name__}); "
                             "see its log (out of memory?)") from err
    reply, new_ctx = _unpack(reply_bytes, ctx_bytes)
    context.state = new_ctx.state
    return reply


Handler = Callable[[str, Message, Context, "dict[str, Any] | None"], Message]


def serve(socket_path: str | Path, handle: Handler, once: bool = False) -> None:
    """Answer calls on ``socket_path`` one at a time with ``handle(op, msg, context, override)``
    until killed. Writes the owner-only key file the callers read."""
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    key = secrets.token_bytes(32)
    kf = key_file(path)
    kf.unlink(missing_ok=True)
    fd = os.open(kf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    with Listener(str(path), family="AF_UNIX", authkey=key) as listener:
        os.chmod(path, 0o600)
        log.info("client worker ready on %s", path)
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError, AuthenticationError) as err:  # a caller without the key, or one that hung up
                log.warning("client worker: refused a connection (%s)", err)
                continue
            with conn:
                _answer(conn, handle)
            if once:
                return


def _answer(conn: Connection, handle: Handler) -> None:
    from flwr.common.serde import context_to_proto, message_to_proto

    try:
        op, msg_bytes, ctx_bytes, override = conn.recv()
    except (OSError, EOFError):
        return
    t0 = time.perf_counter()
    msg, context = _unpack(msg_bytes, ctx_bytes)
    reply = handle(op, msg, context, override)
    log.info("answered a %s message of run %d in %.2f s%s", op, context.run_id, time.perf_counter() - t0,
             " (error reply)" if reply.has_error() else "")
    try:
        conn.send((message_to_proto(reply).SerializeToString(), context_to_proto(context).SerializeToString()))
    except (OSError, EOFError) as err:
        log.warning("client worker: the caller left before the reply (%s)", err)
