"""Helpers for end-to-end simulation tests."""

from collections.abc import Callable

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.handlers import client_config, handle_query, handle_train


def tampering_client_app(tamper: Callable[[int, Message], Message]) -> ClientApp:
    """A ClientApp that trains honestly, then hands ``(partition id, reply)`` to ``tamper``."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, client_config(context), context)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return tamper(pid, handle_train(msg, client_config(context), context))

    return app


@pytest.fixture
def tampering_app() -> Callable[[Callable[[int, Message], Message]], ClientApp]:
    return tampering_client_app
