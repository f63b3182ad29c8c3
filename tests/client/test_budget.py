"""A device's memory budget (node config ``memory-mb``): the pre-flight estimate refuses a
call the budget cannot hold before the model is loaded (client/budget.py)."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client import budget, estimate, handlers
from client.config import ClientConfig, DataConfig, ModelConfig
from strategies import wire

RUNTIME_MB = 400.0  # stands in for the measured baseline (a ~10 s subprocess)


@pytest.fixture(autouse=True)
def _runtime(monkeypatch):
    monkeypatch.setattr(estimate, "runtime_mb", lambda cfg: RUNTIME_MB)
    budget._estimate.cache_clear()
    yield
    budget._estimate.cache_clear()


def _cfg() -> ClientConfig:
    return ClientConfig(model=ModelConfig(name="tiny-bert", max_length=32), data=DataConfig(num_examples=40, test_size=8),
                        num_clients=2, batch_size=4, local_steps=1)


def _ctx(mb: float | None) -> Context:
    node = {wire.PARTITION_ID: 0, **({budget.MEMORY_KEY: mb} if mb else {})}
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


def _init() -> Message:
    return Message(RecordDict({wire.CONFIG: ConfigRecord({"op": "init"})}), dst_node_id=1, message_type="query")


def test_a_budget_below_the_estimate_is_refused_before_the_model_loads(monkeypatch):
    loaded = []
    monkeypatch.setattr(handlers, "get_runtime", lambda *a: loaded.append(a))
    with pytest.raises(budget.OverBudget, match=r"estimated peak \d+ MiB \+ 20% margin .* exceeds this device's memory budget of 300 MiB"):
        handlers.handle_query(_init(), _cfg(), _ctx(300))
    train = Message(RecordDict({wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1})}), dst_node_id=1, message_type="train")
    reply = handlers.guarded(handlers.handle_train, train, None, _ctx(300))
    assert reply.has_error() and "memory budget of 300 MiB" in reply.error.reason and "quant=nf4" in reply.error.reason
    assert loaded == []


def test_a_budget_that_holds_the_estimate_trains():
    est = budget.check(_cfg(), 4, 10_000)
    assert RUNTIME_MB < est.peak_mb < RUNTIME_MB + 200  # a tiny model adds little to the runtime
    state = handlers.handle_query(_init(), _cfg(), _ctx(est.peak_mb * (1 + budget.MARGIN) + 1)).content[wire.ARRAYS]
    assert len(state) > 0


def test_the_margin_refuses_a_budget_just_above_the_estimate():
    est = budget.check(_cfg(), 4, 10_000)
    with pytest.raises(budget.OverBudget):
        budget.check(_cfg(), 4, est.peak_mb * (1 + budget.MARGIN / 2))


def test_the_servers_assigned_batch_counts():
    small = budget.check(_cfg(), 4, 10_000, batch_size=1)
    large = budget.check(_cfg(), 4, 10_000, batch_size=64)
    assert large.step_mb > small.step_mb


def test_no_budget_no_estimate(monkeypatch):
    monkeypatch.setattr(budget, "check", lambda *a, **k: pytest.fail("estimated without a budget"))
    handlers._within_budget(_cfg(), _ctx(None))


def _resource_aware(batches: str, **extra) -> dict:
    return {"assign.name": "resource_aware", "assign.batch_size": batches, "deployed": True, **extra}


def test_a_deployed_node_takes_the_first_option_its_budget_holds():
    small = budget.check(_cfg(), 4, 10_000, batch_size=2, local_steps=1)
    large = budget.check(_cfg(), 4, 10_000, batch_size=512, local_steps=1)
    assert large.peak_mb > small.peak_mb * (1 + budget.MARGIN)  # a budget between them holds only batch 2
    mb = small.peak_mb * (1 + budget.MARGIN) + 1
    run = _resource_aware("[512, 2]")
    assert budget.node_option(_cfg(), 4, mb, run) == (1, 2)
    assert budget.node_option(_cfg(), 4, None, run) == (1, 512)  # no budget: the best option
    assert budget.node_option(_cfg(), 4, mb, {"assign.name": "fixed"}) is None
    with pytest.raises(budget.OverBudget, match=r"no option fits .* budget of 100 MiB.*1 steps x batch 512: \d+ MiB"):
        budget.node_option(_cfg(), 4, 100, run)
    ctx = Context(run_id=1, node_id=1, node_config={wire.PARTITION_ID: 0, budget.MEMORY_KEY: mb}, state=RecordDict(),
                  run_config=run)
    assert handlers._train_shape(_cfg(), ctx, {}) == (1, 2)  # (local steps, batch size)
    assert handlers._train_shape(_cfg(), ctx, {wire.ASSIGN_BATCH_SIZE: 1, wire.ASSIGN_LOCAL_STEPS: 3}) == (3, 1)
    simulated = Context(run_id=1, node_id=1, node_config=ctx.node_config, state=RecordDict(),
                        run_config={**run, "deployed": False})
    assert handlers._train_shape(_cfg(), simulated, {}) == (1, 4)  # the run's own (the server assigns in simulation)


def test_a_node_with_a_device_profile_names_it_in_its_hello_reply():
    hello = Message(RecordDict(), dst_node_id=1, message_type="query")
    node = {wire.PARTITION_ID: 3, budget.MEMORY_KEY: 3000.0, budget.DEVICE_KEY: "rpi5", budget.GFLOPS_KEY: 46.0}
    ctx = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    reply = handlers.handle_query(hello, _cfg(), ctx)
    assert dict(reply.content[wire.DEVICE]) == {wire.DEVICE_NAME: "rpi5", wire.DEVICE_GFLOPS: 46.0,
                                                wire.DEVICE_MEMORY_MB: 3000.0}
    assert wire.DEVICE not in handlers.handle_query(hello, _cfg(), _ctx(None)).content  # no profile, nothing said
