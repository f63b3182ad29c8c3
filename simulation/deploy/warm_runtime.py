"""A SuperNode's warm ClientApp runtime: Flower's SuperExec and ``flwr-clientapp`` as one
long-lived process, ``python -m simulation.deploy.warm_runtime --runtime-api HOST:PORT``.

Flower 1.42's SuperNode (``--isolation subprocess``, its default) starts ``flower-superexec``,
which starts a new ``flwr-clientapp`` process for every message: it imports Flower, unpacks
the FAB, loads the ClientApp and, for Anther, imports torch and loads the backbone, the
tokenizer and the client's data again (seconds per message on a laptop, more on a Pi).
``anther-deploy supernode`` runs the SuperNode with ``--isolation process`` and this runtime
beside it (held to the device's memory budget, where one is given): it acquires
each ClientApp task from the SuperNode's Runtime API as Flower's SuperExec does, and runs it
as ``flwr-clientapp`` does (pull the message, the context, the run and the FAB; heartbeats
while it runs; push the reply, then the context and the final status), but in this process
with the ClientApp imported once, so what the handlers keep (backbone, data, per-client
state) stays loaded between messages. One task at a time: a node is one device. The
SuperNode signals each message it stores with a datagram (``--wake-port``), so a task is
taken at once and an idle node polls its Runtime API only once a second.

The node runs this installation's ClientApp, so it answers a run only when every Python file
of the run's FAB is byte-identical to this installation's (the App ``anther-deploy run``
submits from the same source). A FAB with other code gets an error reply naming the first
file that differs (a SuperNode started with ``--cold`` runs any FAB, as Flower does). A
ClientApp that raises becomes an error reply, as in Flower; the runtime keeps serving.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

log = logging.getLogger("anther.warm_runtime")
REPO = Path(__file__).resolve().parents[2]
RETRY_S = 1.0  # wait after a failed poll (the SuperNode not up yet, or restarting)
POLL_S, WAKE_POLL_S = 0.05, 1.0  # idle task polls without / with the SuperNode's wake signal


def fab_runs_here(fab_content: bytes, repo: Path = REPO) -> tuple[bool, str]:
    """Whether the FAB's Python files are exactly this installation's (and why not)."""
    with zipfile.ZipFile(io.BytesIO(fab_content)) as z:
        for name in z.namelist():
            if not name.endswith(".py"):
                continue
            local = repo / name
            if not local.is_file():
                return False, f"{name} is not part of this installation"
            if z.read(name) != local.read_bytes():
                return False, f"{name} differs from {local}"
    return True, ""


def _client(address: str, component: str, token: str | None = None):
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


class WarmRuntime:
    """Serve the SuperNode's ClientApp tasks at ``address`` (its Runtime API, loopback)."""

    def __init__(self, address: str, poll_s: float = 0.05, wake_port: int | None = None) -> None:
        self.address, self.poll_s = address, poll_s
        self.stop = threading.Event()
        self._wake = None
        if wake_port is not None:  # the SuperNode sends a datagram here when it stores a message
            self._wake = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._wake.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._wake.bind(("127.0.0.1", wake_port))

    def _idle(self) -> None:
        """Wait ``poll_s``, or until the SuperNode says a message came (then drain its datagrams)."""
        if self._wake is None:
            self._idle()
            return
        self._wake.settimeout(self.poll_s)
        try:
            self._wake.recv(16)
            self._wake.setblocking(False)
            while True:
                self._wake.recv(16)
        except (TimeoutError, BlockingIOError, OSError):
            pass
        self._verdicts: dict[str, tuple[bool, str]] = {}  # FAB hash -> (runs here, why not)

    def serve(self) -> None:
        import client.app  # noqa: F401 - the ClientApp and, through it, what the handlers need
        import client.handlers  # noqa: F401 - torch, transformers, PEFT: imported before the first message
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        log.info("warm ClientApp runtime polling %s", self.address)
        superexec = _client(self.address, "SuperExec")
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
        while not self.stop.is_set():
            try:
                res = superexec.AcquireTask(request)
            except Exception as err:  # noqa: BLE001 - the SuperNode is starting or gone: retry
                log.debug("AcquireTask failed (%s); retrying", err)
                self.stop.wait(RETRY_S)
                continue
            if res.HasField("task") and res.token:
                try:
                    self.run_task(res.token)
                except Exception:  # noqa: BLE001 - one task's failure must not end the node
                    log.exception("ClientApp task %s failed outside the ClientApp", res.task.task_id)
                continue
            self._idle()

    def _verdict(self, fab) -> tuple[bool, str]:
        if fab.hash_str not in self._verdicts:
            self._verdicts[fab.hash_str] = fab_runs_here(fab.content)
            if not self._verdicts[fab.hash_str][0]:
                log.warning("FAB %s is not this installation's App: %s", fab.hash_str[:12],
                            self._verdicts[fab.hash_str][1])
        return self._verdicts[fab.hash_str]

    def run_task(self, token: str) -> None:
        """Run one ClientApp task in this process, as ``flwr-clientapp --token`` would."""
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        from client.app import app

        rt = _client(self.address, "flwr-clientapp", token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(rt))
        heartbeat.start()
        context, status, details = None, SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, _run, fab = pull_task_input(rt)
            t0 = time.perf_counter()
            ours, why = self._verdict(fab)
            try:
                if not ours:
                    raise RuntimeError(f"node {context.node_id} runs Anther's installed ClientApp warm and this "
                                       f"run's App differs ({why}); start the SuperNode with --cold to run it")
                reply = app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            except Exception as ex:  # noqa: BLE001 - as flwr-clientapp: an error reply
                log.exception("ClientApp raised an exception")
                details = f"{type(ex)}:<'{ex}'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
            push_message(rt, reply, context)
            log.debug("task answered in %.3f s", time.perf_counter() - t0)
        finally:
            push_task_output(client=rt, context=context, sub_status=status, details=details)
            if heartbeat.is_running:
                heartbeat.stop()
            rt.close()


RESTARTS, RESTART_WINDOW_S = 5, 300.0  # give up after this many deaths within the window


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def supervise(argv: list[str], parent_pid: int | None) -> int:
    """Run the runtime in a child process (``--once``) and start a new one when it dies
    while the SuperNode lives (a ClientApp killed for memory must not take the node out
    for the rest of the run); give up after ``RESTARTS`` deaths in ``RESTART_WINDOW_S``."""
    deaths: list[float] = []
    while True:
        code = subprocess.call([sys.executable, "-m", "simulation.deploy.warm_runtime", *argv, "--once"])
        if code == 0 or not _alive(parent_pid):
            return 0
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
        why = f"killed by signal {-code}" + (" (SIGKILL: out of memory?)" if code == -9 else "") if code < 0 else f"exit {code}"
        if len(deaths) > RESTARTS:
            log.error("the ClientApp runtime died %d times in %.0f s (last: %s); not restarting it", len(deaths),
                      RESTART_WINDOW_S, why)
            return 1
        log.warning("the ClientApp runtime died (%s); starting a new one (its task in flight is lost)", why)
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m simulation.deploy.warm_runtime", description=__doc__.splitlines()[0])
    p.add_argument("--runtime-api", required=True, metavar="HOST:PORT", help="the SuperNode's Runtime API (loopback)")
    p.add_argument("--poll-s", type=float, default=None,
                   help="wait between task polls while idle (default 0.05; 1 with --wake-port)")
    p.add_argument("--wake-port", type=int, default=None,
                   help="UDP port on 127.0.0.1 where the SuperNode signals each message it stores "
                        "(ANTHER_WAKE_PORT of simulation.deploy.supernode_main): a task is taken at once")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) exits")
    p.add_argument("--once", action="store_true",
                   help="serve in this process, not restarted when it dies (default: a supervised child process)")
    args = p.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
    for name in ("anther", "client"):  # Anther's loggers; Flower's keep their own handler
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    if not args.once:
        return supervise([a for a in argv if a != "--once"], args.parent_pid)
    from flwr.supercore.app_utils import start_parent_process_monitor

    from server.object_pulls import shorten

    shorten("flwr.supernode.runtime.run_clientapp")  # its pulls of message objects from the SuperNode
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    try:
        poll_s = args.poll_s if args.poll_s is not None else (WAKE_POLL_S if args.wake_port else POLL_S)
        WarmRuntime(args.runtime_api, poll_s, args.wake_port).serve()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
