"""The Anther ClientApp (Flower component ``client.app:app``): a light front.

Importing this module costs Flower only (no torch, transformers, data or plotting), so a
node running Flower's own isolation (a ``flwr-clientapp`` process per message) starts it in
about a second. Each message is answered by :mod:`client.handlers`, imported on the first
message: once per simulation worker, and once per node under ``anther-deploy supernode``,
whose SuperNode runs this ClientApp warm (:mod:`simulation.deploy.warm_runtime`).

query  "hello": this node's identity (partition id), for seeded sampling.
query  "init":  the initial trainable state (deterministic from the seed).
train:          the method's update kind serves it (see :mod:`client.handlers`); a failure
                becomes a Flower error reply naming the client and the reason.

:func:`with_anther_queries` completes a user's ClientApp that only trains (the README's
custom-client example) with Anther's query handler.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from strategies.transport_packing import packing_mod


def answer(op: str, msg: Message, context: Context, run_config: dict[str, Any] | None) -> Message:
    """Answer ``msg`` in this process (``op``: "query" or "train")."""
    from client.handlers import guarded, handle_query, handle_train

    return guarded(handle_query if op == "query" else handle_train, msg, run_config, context)


def build_client_app(run_config: dict[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run_config is ``run_config`` merged over Flower's; requests that
    arrive packed (deployment, :mod:`strategies.transport_packing`) are unpacked for the
    handlers and answered packed."""
    app = ClientApp(mods=[packing_mod])

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return answer("query", msg, context, run_config)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return answer("train", msg, context, run_config)

    return app


class _WithQueries(ClientApp):
    """A user's ClientApp that registers no query handler, answering Anther's queries
    (identity, initial state) with Anther's handler; every other message goes to it."""

    def __init__(self, inner: ClientApp, queries: ClientApp) -> None:
        super().__init__()
        self._inner, self._queries = inner, queries

    def __call__(self, message: Message, context: Context) -> Message:
        category = message.metadata.message_type.split(".", 1)[0]
        return (self._queries if category == "query" else self._inner)(message=message, context=context)


def with_anther_queries(user_app: ClientApp, run_config: dict[str, Any] | None = None) -> ClientApp:
    """``user_app`` as it is when it handles queries itself, else completed with Anther's
    query handler (the server asks every node for its identity and one for the initial
    state before round 1)."""
    registered = getattr(user_app, "_registered_funcs", None)  # Flower 1.42: "<category>.<action>" -> handler
    if not isinstance(user_app, ClientApp) or registered is None or any(k.startswith("query.") for k in registered):
        return user_app
    if getattr(user_app, "_call", None) is not None:  # a legacy client_fn app answers queries through its client
        return user_app
    return _WithQueries(user_app, build_client_app(run_config))


app = build_client_app()

__all__ = ["app", "answer", "build_client_app", "with_anther_queries"]
