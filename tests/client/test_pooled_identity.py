"""A pooled simulation's SuperNode runs whichever client a message names (client/handlers.py):
the identity comes from the message, each client's state stays its own, and a deployed
device (its own data-path) is always itself."""

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.handlers import _identity, _partition_key, client_state
from strategies import wire

TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def msg(ident=None):
    config = {"x": 1} if ident is None else {"x": 1, wire.CLIENT_ID: ident}
    return Message(RecordDict({wire.CONFIG: ConfigRecord(config)}), dst_node_id=5, message_type="train")


def node(**node_config):
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def test_identity_and_partition_come_from_the_message_on_a_pool_node():
    ctx = node(**{wire.PARTITION_ID: 3})
    assert _identity(ctx, msg(41_234)) == 41_234 and _partition_key(ctx, msg(41_234)) == ((wire.PARTITION_ID, 41_234),)
    assert _identity(ctx, msg()) == 3 and _partition_key(ctx, msg()) == ((wire.PARTITION_ID, 3),)


def test_a_device_with_its_own_data_ignores_an_identity_in_a_message():
    ctx = node(**{"data-path": "/data/mine.csv"})
    assert _identity(ctx, msg(7)) == 5 and _partition_key(ctx, msg(7)) == (("data-path", "/data/mine.csv"),)


def test_each_client_sees_only_its_own_state_on_a_shared_node():
    ctx = node(**{wire.PARTITION_ID: 0})
    with client_state(ctx, msg(1)) as state:
        state["residual"] = ConfigRecord({"v": 1})
    with client_state(ctx, msg(2)) as state:
        assert "residual" not in state
        state["residual"] = ConfigRecord({"v": 2})
    with client_state(ctx, msg(1)) as state:
        assert state["residual"]["v"] == 1
        del state["residual"]
    assert set(ctx.state) == {"2/residual"}
    try:  # a call that fails leaves the node's state as it was
        with client_state(ctx, msg(2)) as state:
            state["residual"] = ConfigRecord({"v": 99})
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert ctx.state["2/residual"]["v"] == 2
    with client_state(ctx, msg()) as state:  # not pooled: the node's own state
        assert state is ctx.state
