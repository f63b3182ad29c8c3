"""Client-level DP (strategies/dp.py): clipping and noise against hand-computed values,
the accountant against dp-accounting's own computation, the noise search, and the
checkpointed state."""

import dp_accounting
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import wire
from strategies.config import FedAvgConfig
from strategies.dp import DPConfig, epsilon, noise_for, wrap
from strategies.registry import build_strategy
from strategies.state import get_strategy_state, set_strategy_state

GLOBAL = {"w": np.zeros(2, dtype=np.float32)}


class Grid:
    def __init__(self, n=3):
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


def reply(w, n=10) -> Message:
    out = Message(RecordDict({"x": ConfigRecord({"a": 1})}), dst_node_id=1, message_type="train")
    return Message(RecordDict({wire.ARRAYS: ArrayRecord({"w": Array(np.asarray(w, dtype=np.float32))}),
                               wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n})}), reply_to=out)


def run(cfg, points, per_round=4, rnd=1, seed=0):
    s = wrap(build_strategy(FedAvgConfig()), cfg, num_clients=100, clients_per_round=per_round, seed=seed, rounds=10)
    list(s.configure_train(rnd, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), Grid(per_round)))
    arrays, metrics = s.aggregate_train(rnd, [reply(p, n) for p, n in zip(points, [1, 50, 100, 7])])
    return arrays["w"].numpy(), metrics, s


def test_updates_are_clipped_and_averaged_uniformly_over_the_round_size():
    # clip 1: (3, 4) -> (0.6, 0.8); (0, 0.5) stays; sum / 4 (clients_per_round), examples ignored
    got, metrics, _ = run(DPConfig(name="server", clip=1.0, noise_multiplier=0.0), [[3.0, 4.0], [0.0, 0.5]])
    np.testing.assert_allclose(got, [0.6 / 4, 1.3 / 4], rtol=1e-6)
    assert metrics["epsilon"] == float("inf")  # no noise: no guarantee


def test_noise_has_the_configured_scale_and_is_reproducible(monkeypatch):
    cfg = DPConfig(name="server", clip=2.0, noise_multiplier=0.5)
    zero = [[0.0, 0.0]] * 4
    monkeypatch.setitem(GLOBAL, "w", np.zeros(4000, dtype=np.float32))
    draws = run(cfg, [np.zeros(4000)] * 4)[0]
    assert np.std(draws) == pytest.approx(0.5 * 2.0 / 4, rel=0.05)  # sigma * clip / clients_per_round
    monkeypatch.setitem(GLOBAL, "w", np.zeros(2, dtype=np.float32))
    np.testing.assert_array_equal(run(cfg, zero, rnd=3)[0], run(cfg, zero, rnd=3)[0])
    assert not np.array_equal(run(cfg, zero, rnd=3)[0], run(cfg, zero, rnd=3, seed=1)[0])


def test_secret_noise_differs_between_runs_and_survives_the_checkpoint():
    cfg = DPConfig(name="server", noise_multiplier=1.0, secret_noise=True)
    a, _, sa = run(cfg, [[0.0, 0.0]])
    b, _, _ = run(cfg, [[0.0, 0.0]])
    assert not np.array_equal(a, b)
    s2 = wrap(build_strategy(FedAvgConfig()), cfg, 100, 4, 0, 10)
    set_strategy_state(s2, get_strategy_state(sa))
    assert s2.key == sa.key and s2.samples == sa.samples == [4]


def _library_epsilon(sigma, rounds, n, k, delta):
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(n, k, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(event, rounds)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("sigma, rounds", [(0.8, 30), (2.0, 5), (5.0, 100)])
def test_epsilon_equals_the_librarys_own_computation(sigma, rounds):
    assert epsilon(sigma, [10] * rounds, 100, 1e-5) == pytest.approx(_library_epsilon(sigma, rounds, 100, 10, 1e-5),
                                                                     rel=1e-9)


def test_epsilon_grows_per_round_in_the_metrics():
    cfg = DPConfig(name="server", noise_multiplier=1.0)
    s = wrap(build_strategy(FedAvgConfig()), cfg, 100, 4, 0, 10)
    eps = []
    for rnd in (1, 2, 3):
        list(s.configure_train(rnd, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), Grid(4)))
        eps.append(s.aggregate_train(rnd, [reply([0.1, 0.1])])[1]["epsilon"])
    assert eps[0] < eps[1] < eps[2]
    assert eps[2] == pytest.approx(_library_epsilon(1.0, 3, 100, 4, 1e-5), rel=1e-9)


def test_the_noise_search_meets_the_target_tightly():
    sigma = noise_for(8.0, 30, 10, 100, 1e-5)
    assert epsilon(sigma, [10] * 30, 100, 1e-5) <= 8.0 < epsilon(sigma * 0.99, [10] * 30, 100, 1e-5)


def test_client_mode_rejects_unclipped_updates():
    _, _, s = run(DPConfig(name="client", clip=1.0), [[0.1, 0.1]])
    assert s.check_clipped(1.04) is None and "dp=client needs clipped updates" in s.check_clipped(1.2)
    _, _, s = run(DPConfig(name="server", clip=1.0), [[0.1, 0.1]])
    assert s.check_clipped(100.0) is None


def test_seed_updates_are_clipped_per_client_and_noised_over_the_whole_pool():
    from strategies.seeds import SeedReply
    from strategies.seeds.private import SeedPrivacy

    replies = [SeedReply(np.array([0, 0, 2]), np.array([3.0, 0.0, 4.0]), 10, {}),  # a = (3, 0, 4): norm 5
               SeedReply(np.array([1]), np.array([0.5]), 99, {})]
    quiet = SeedPrivacy(DPConfig(name="server", clip=1.0), 0.0, 100, 4, key=0)
    index, coeff = quiet.coefficients(replies, -2.0, pool_size=4, rnd=1)
    np.testing.assert_array_equal(index, [0, 1, 2, 3])
    np.testing.assert_allclose(coeff, -2.0 * np.array([0.6, 0.5, 0.8, 0.0]) / 4, rtol=1e-6)  # uniform, / clients_per_round
    noisy = SeedPrivacy(DPConfig(name="server", clip=1.0), 2.0, 100, 4, key=0)
    _, c = noisy.coefficients([], 1.0, pool_size=20000, rnd=1)
    assert np.std(c) == pytest.approx(2.0 * 1.0 / 4, rel=0.05)
    assert noisy.account(4)["epsilon"] == pytest.approx(epsilon(2.0, [4], 100, 1e-5))
    again = SeedPrivacy(DPConfig(name="server"), 2.0, 100, 4, key=0)
    again.load_state_dict(noisy.state_dict())
    assert again.samples == [4]


def test_noise_to_signal_is_the_noise_norm_in_clip_units():
    from strategies.dp import noise_to_signal

    assert noise_to_signal(1.0, 10_000, 10) == pytest.approx(10.0)
    assert noise_to_signal(0.95, 75_268, 10) == pytest.approx(26.06, abs=0.01)  # AG News LoRA, epsilon 8
