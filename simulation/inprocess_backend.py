"""A Simulation Engine backend that runs the ClientApp in this process (no Ray).

Flower's Simulation Engine moves every message through its real path whatever the
backend: the ServerApp's grid stores it in the in-memory LinkState, the engine's
extractor thread hands it to a worker thread with the node's ``Context``, the backend
runs the ClientApp, and the reply goes back into the LinkState for the grid to pull.
A backend only decides where the ClientApp runs. Flower's ``RayBackend`` runs it in
Ray actors, which costs a Ray start and, in every actor, the import of torch,
transformers and Flower and a backbone load: about 30 s on a 2-core machine before the
first client answers, many times the training of a small run. :class:`InProcessBackend`
runs it in the engine's worker thread of the driver process, one call at a time.

What a separate process gave the clients, it keeps:

- *their own backbone*: calls run inside :func:`client.runtime.runtime_host`, so the
  clients' cached runtime is not the one the server's central evaluation loads the
  global state into (``setup`` builds it as the engine starts, as Ray's warm-up hook
  does in each worker);
- *values, not shared objects*: the message and the node's ``Context`` go in as copies
  and the reply comes out as one, as Ray's serialization does, so a ClientApp that
  mutates what it got or keeps what it sent cannot reach the server's objects (or the
  other nodes' messages, which may share one ``RecordDict``), and a call that raises
  leaves the node's ``Context`` as it was;
- *the caller's random state*: torch's global generator is restored after each call;
- *a per-call peak RSS*: one call at a time, so the high-water mark the ClientApp resets
  and reads (:mod:`client.memory`) is its call's. It is the driver process's peak, so it
  includes what the server holds (its model and state), which a Ray worker's does not.

Flower 1.42 has no way to name a backend (``start_vce`` builds ``RayBackend``
regardless of ``backend_name``); :func:`use_inprocess_backend` selects this one for the
duration of one ``run_simulation`` call.
"""

from __future__ import annotations

import copy
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

from client.runtime import clear_cache, runtime_host

log = logging.getLogger("anther.sim")
CLIENT_HOST = "inprocess-clients"  # the runtime cache of the clients run by this backend
RAY_BACKEND_MODULE = "flwr.server.superlink.fleet.vce.backend.raybackend"


class InProcessBackend(Backend):
    """Runs the ClientApp in the Simulation Engine's worker thread, one call at a time.

    Parameters
    ----------
    backend_config : BackendConfig
        The engine's backend config; Ray's keys (``init_args``, ``client_resources``,
        ``actor``) do not apply here and are ignored.
    setup : callable, optional
        Run once in the clients' host when the engine starts (e.g. build the runtime),
        like a Ray worker's set-up hook; a failure is logged and left to the first call.
    """

    def __init__(self, backend_config: BackendConfig, setup: Callable[[], None] | None = None) -> None:
        super().__init__(backend_config)
        self.setup = setup
        self.app_fn: Callable[[], ClientApp] | None = None
        self._busy = threading.Lock()
        self.calls = 0

    @property
    def num_workers(self) -> int:
        # One: the clients share one cached runtime (as in one worker process) and the
        # per-call peak RSS is the process's; two calls at once would corrupt both.
        return 1

    def is_worker_idle(self) -> bool:
        return not self._busy.locked()

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.app_fn = app_fn
        t0 = time.perf_counter()
        if self.setup is not None:
            try:
                with runtime_host(CLIENT_HOST), torch.random.fork_rng(devices=[]):
                    self.setup()
            except Exception as err:  # noqa: BLE001 - the first call builds it and reports what is wrong
                log.debug("in-process clients' set-up failed: %s: %s", type(err).__name__, err)
        log.debug("in-process backend ready in %.1f s (1 worker thread)", time.perf_counter() - t0)

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """Run the ClientApp on copies of ``message`` and ``context``; return copies of
        the reply and the updated context. Errors are wrapped as Ray's actor wraps them."""
        if self.app_fn is None:
            raise ValueError("call build() before process_message()")
        message, context = copy.deepcopy(message), copy.deepcopy(context)
        with self._busy, runtime_host(CLIENT_HOST), torch.random.fork_rng(devices=[]):
            self.calls += 1
            try:
                app = self.app_fn()
                reply = app(message=message, context=context)
            except LoadClientAppError:
                raise
            except Exception as ex:
                raise ClientAppException(str(ex)) from ex
        return copy.deepcopy(reply), context

    def terminate(self) -> None:
        clear_cache(CLIENT_HOST)  # a fresh run gets fresh clients, as Ray's new workers are
        log.debug("in-process backend stopped after %d client calls", self.calls)


@contextmanager
def use_inprocess_backend(setup: Callable[[], None] | None = None) -> Iterator[list[InProcessBackend]]:
    """Within the block, Flower's Simulation Engine runs the ClientApp with
    :class:`InProcessBackend` instead of Ray; yields the list of the backends it built
    (empty afterwards means Flower no longer picks its backend this way).

    Flower 1.42's ``vce_api.start_vce`` ignores ``backend_name`` and builds its backend
    with ``from .backend.raybackend import RayBackend`` inside its ``backend_fn``, called
    as the engine starts. Nothing public reaches that choice, and rebuilding the engine
    around Flower's ``run_api`` would copy ~100 lines of its start-up (run and node
    registration, contexts, the ServerApp thread) that change between releases. So for
    the block only, that one import resolves to a stand-in module whose ``RayBackend``
    is this backend; everything else (LinkState, grid, ServerApp thread, contexts,
    error replies) is Flower's own. The real module is neither imported (no Ray import)
    nor modified, and ``sys.modules`` is restored afterwards.
    """
    built: list[InProcessBackend] = []

    def make(backend_config: BackendConfig) -> InProcessBackend:
        built.append(InProcessBackend(backend_config, setup=setup))
        return built[-1]

    stand_in = types.ModuleType(RAY_BACKEND_MODULE, "Anther: the in-process backend under Flower's backend name")
    stand_in.RayBackend = make  # type: ignore[attr-defined]
    saved = sys.modules.get(RAY_BACKEND_MODULE)
    sys.modules[RAY_BACKEND_MODULE] = stand_in
    try:
        yield built
    finally:
        if saved is None:
            sys.modules.pop(RAY_BACKEND_MODULE, None)
        else:
            sys.modules[RAY_BACKEND_MODULE] = saved
