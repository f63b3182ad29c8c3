"""Flower strategies as registered, against hand-computed numbers."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import wire
from strategies.config import (
    FedAdagradConfig, FedAvgConfig, FedAvgMConfig, FedOptConfig, FedProxConfig, FwdLLMConfig, SeedConfig, StrategyConfig,
)
from strategies.registry import STRATEGIES, build_strategy
from strategies.runconfig import ConfigError
from strategies.state import get_strategy_state, set_strategy_state


class FakeGrid:
    def __init__(self, ids):
        self.ids = ids

    def get_node_ids(self):
        return list(self.ids)


def reply(values: dict, n: int, node: int) -> Message:
    out = Message(RecordDict({"x": ConfigRecord({"a": 1})}), dst_node_id=node, message_type="train")
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in values.items()}),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: 1.0}),
        }
    )
    return Message(content, reply_to=out)


def run_round(strategy, global_state, replies, rnd=1):
    record = ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in global_state.items()})
    msgs = list(strategy.configure_train(rnd, record, ConfigRecord(), FakeGrid([1, 2])))
    arrays, _ = strategy.aggregate_train(rnd, replies)
    return msgs, {k: a.numpy() for k, a in arrays.items()}


def test_fedavg_weights_by_examples():
    s = build_strategy(FedAvgConfig())
    _, out = run_round(s, {"w": [0.0, 0.0]}, [reply({"w": [1.0, 2.0]}, 10, 1), reply({"w": [4.0, 8.0]}, 30, 2)])
    # (10*[1,2] + 30*[4,8]) / 40 = [3.25, 6.5]
    np.testing.assert_allclose(out["w"], [3.25, 6.5], rtol=1e-6)


def test_fedprox_sends_mu_and_averages():
    s = build_strategy(FedProxConfig(proximal_mu=0.3))
    msgs, out = run_round(s, {"w": [0.0]}, [reply({"w": [1.0]}, 1, 1), reply({"w": [3.0]}, 3, 2)])
    assert msgs[0].content[wire.CONFIG][wire.PROXIMAL_MU] == pytest.approx(0.3)
    assert len(msgs) == 2  # takes every node the sampled grid shows
    np.testing.assert_allclose(out["w"], [2.5])


def test_fedadam_first_step_by_hand():
    cfg = FedOptConfig(name="fedadam", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    s = build_strategy(cfg)
    _, out = run_round(s, {"w": [1.0]}, [reply({"w": [2.0]}, 1, 1), reply({"w": [2.0]}, 1, 2)])
    delta = 1.0
    m = 0.1 * delta
    v = 0.01 * delta**2
    # Flower's FedAdam bias-corrects the step with exponent (round + 1) = 2
    eta_norm = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    expected = 1.0 + eta_norm * m / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(out["w"], [expected], rtol=1e-5)


def test_fedavgm_momentum_by_hand():
    s = build_strategy(FedAvgMConfig(server_lr=1.0, server_momentum=0.5))
    _, out1 = run_round(s, {"w": [0.0]}, [reply({"w": [1.0]}, 1, 1)], rnd=1)
    # pseudo-gradient g1 = 0 - 1 = -1 ; v1 = g1 ; w1 = 0 - (-1) = 1
    np.testing.assert_allclose(out1["w"], [1.0])
    _, out2 = run_round(s, {"w": [1.0]}, [reply({"w": [2.0]}, 1, 1)], rnd=2)
    # g2 = 1 - 2 = -1 ; v2 = 0.5 * -1 + -1 = -1.5 ; w2 = 1 + 1.5 = 2.5
    np.testing.assert_allclose(out2["w"], [2.5])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_strategy_state_roundtrip_gives_identical_next_round(name):
    a = build_strategy(STRATEGIES[name].config(name=name))
    run_round(a, {"w": [0.0, 1.0]}, [reply({"w": [1.0, 2.0]}, 2, 1)])
    state = get_strategy_state(a)
    assert state, "stateful strategy exported nothing"
    b = build_strategy(STRATEGIES[name].config(name=name))
    set_strategy_state(b, state)
    g = {"w": [0.5, 1.5]}
    r = [reply({"w": [1.5, 0.0]}, 3, 1)]
    _, out_a = run_round(a, g, r, rnd=2)
    _, out_b = run_round(b, g, [reply({"w": [1.5, 0.0]}, 3, 1)], rnd=2)
    np.testing.assert_array_equal(out_a["w"], out_b["w"])


def test_unknown_strategy_lists_choices():
    with pytest.raises(ConfigError, match="fedavg"):
        build_strategy(StrategyConfig(name="nope"))


def test_user_strategy_by_target():
    s = build_strategy(StrategyConfig(target="flwr.serverapp.strategy.FedMedian"))
    assert type(s).__name__ == "FedMedian"
    with pytest.raises(ConfigError, match="not a subclass"):
        build_strategy(StrategyConfig(target="collections.OrderedDict"))
    with pytest.raises(ConfigError, match="cannot import"):
        build_strategy(StrategyConfig(target="no_such_pkg.Strategy"))


def test_registry_is_complete():
    assert {"fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm"} <= set(STRATEGIES)
    assert set(STRATEGIES.names()) == set(STRATEGIES) and all(n in STRATEGIES for n in STRATEGIES.names())
    configs = {n: STRATEGIES[n].config for n in STRATEGIES}
    assert configs["fedavg"] is FedAvgConfig and configs["fedprox"] is FedProxConfig
    assert configs["fedadam"] is configs["fedyogi"] is FedOptConfig and configs["fedadagrad"] is FedAdagradConfig
    assert configs["fedavgm"] is FedAvgMConfig and configs["fedkseed"] is configs["fedkseed_pro"] is SeedConfig
    assert configs["fwdllm"] is FwdLLMConfig
    assert all(issubclass(c, StrategyConfig) and c(name=n).name == n for n, c in configs.items())
