"""Robust wrappers (strategies/robust.py) over registered delta strategies, against
hand-computed results on small vectors."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import wire
from strategies.config import FedAvgConfig, FedOptConfig
from strategies.registry import build_strategy
from strategies.robust import (
    BulyanConfig, ClipConfig, KrumConfig, MedianConfig, MultiKrumConfig, TrimmedMeanConfig, wrap,
)
from strategies.state import get_strategy_state, set_strategy_state

GLOBAL = {"w": np.zeros(2, dtype=np.float32)}


class Grid:
    def get_node_ids(self):
        return [1]


def reply(w, n=10) -> Message:
    out = Message(RecordDict({"x": ConfigRecord({"a": 1})}), dst_node_id=1, message_type="train")
    content = RecordDict({wire.ARRAYS: ArrayRecord({"w": Array(np.asarray(w, dtype=np.float32))}),
                          wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: 1.0})})
    return Message(content, reply_to=out)


def aggregate(cfg, points, examples=None, inner=FedAvgConfig()):
    strategy = wrap(build_strategy(inner), cfg)
    list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), Grid()))
    arrays, _ = strategy.aggregate_train(1, [reply(p, n) for p, n in zip(points, examples or [10] * len(points))])
    return arrays["w"].numpy()


# four honest points near (1, 1) and one attacker far away
POINTS = [[1.0, 1.0], [1.2, 0.8], [0.8, 1.2], [1.1, 1.1], [100.0, -100.0]]


def test_median_is_coordinatewise():
    np.testing.assert_allclose(aggregate(MedianConfig(), POINTS), [1.1, 1.0], rtol=1e-6)


def test_trimmed_mean_cuts_each_end():
    # beta=0.2 of 5 cuts one value at each end: x [0.8, 1.0, 1.1, 1.2, 100] -> mean(1.0, 1.1, 1.2);
    # y [-100, 0.8, 1.0, 1.1, 1.2] -> mean(0.8, 1.0, 1.1)
    np.testing.assert_allclose(aggregate(TrimmedMeanConfig(beta=0.2), POINTS), [1.1, 2.9 / 3], rtol=1e-6)


def _krum_scores(points, f):
    p = np.asarray(points, dtype=np.float64)
    d = ((p[:, None] - p[None]) ** 2).sum(-1)
    k = len(p) - f - 2
    return [np.sort(row)[1:k + 1].sum() for row in d]


def test_krum_picks_the_point_closest_to_its_neighbours():
    best = int(np.argmin(_krum_scores(POINTS, 1)))
    np.testing.assert_allclose(aggregate(KrumConfig(num_malicious=1), POINTS), POINTS[best], rtol=1e-6)
    assert best != 4


def test_multikrum_averages_the_best_scored_by_examples():
    order = np.argsort(_krum_scores(POINTS, 1))[:3]
    ex = [10, 20, 30, 40, 50]
    want = sum(np.asarray(POINTS[i]) * ex[i] for i in order) / sum(ex[i] for i in order)
    got = aggregate(MultiKrumConfig(num_malicious=1, num_selected=3), POINTS, ex)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert 4 not in order


def test_bulyan_on_seven_points_with_one_attacker():
    points = [*POINTS[:4], [0.9, 0.9], [1.05, 0.95], [-50.0, 80.0]]
    got = aggregate(BulyanConfig(num_malicious=1), points)
    honest = np.asarray(points[:6])
    assert np.all(got >= honest.min(0)) and np.all(got <= honest.max(0))  # inside the honest points' box


def test_clip_scales_each_update_to_the_bound_then_the_inner_strategy_averages():
    # norms: 5 and 1; bound 2: (3, 4) -> (1.2, 1.6); (1, 0) stays
    got = aggregate(ClipConfig(max_norm=2.0), [[3.0, 4.0], [1.0, 0.0]])
    np.testing.assert_allclose(got, [(1.2 + 1.0) / 2, 1.6 / 2], rtol=1e-6)
    # bound 0: the round's median norm (3 here): (3, 4) -> (1.8, 2.4); (0, 3) and (1, 0) stay
    got = aggregate(ClipConfig(), [[3.0, 4.0], [0.0, 3.0], [1.0, 0.0]])
    np.testing.assert_allclose(got, [(1.8 + 0 + 1) / 3, (2.4 + 3 + 0) / 3], rtol=1e-6)


def test_too_few_replies_fall_back_to_the_median(caplog):
    got = aggregate(BulyanConfig(num_malicious=1), POINTS[:3])
    np.testing.assert_allclose(got, [1.0, 1.0], rtol=1e-6)
    assert "fewer than robust=bulyan needs" in caplog.text


def test_the_wrapped_strategy_keeps_its_optimizer_and_checkpointed_state():
    """FedAdam behind the median: its moments move, and checkpoint/restore round-trips
    through the wrapper."""
    a = wrap(build_strategy(FedOptConfig(name="fedadam")), MedianConfig())
    list(a.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(), Grid()))
    out, _ = a.aggregate_train(1, [reply(p) for p in POINTS])
    state = get_strategy_state(a)
    assert any(k.startswith("m_t/") for k in state)
    b = wrap(build_strategy(FedOptConfig(name="fedadam")), MedianConfig())
    set_strategy_state(b, state)
    assert all(np.array_equal(state[k], v) for k, v in get_strategy_state(b).items())
    from strategies.registry import update_kind

    assert update_kind(a) == "delta" and a.eta == b.eta  # the inner strategy's attributes pass through


def test_robust_none_is_the_strategy_itself():
    from strategies.robust import RobustConfig

    s = build_strategy(FedAvgConfig())
    assert wrap(s, RobustConfig()) is s


@pytest.mark.parametrize("cfg, match", [
    (lambda: TrimmedMeanConfig(beta=0.5), "robust.beta"),
    (lambda: KrumConfig(num_malicious=-1), "robust.num_malicious"),
    (lambda: ClipConfig(max_norm=-1.0), "robust.max_norm"),
])
def test_bad_settings_are_config_errors(cfg, match):
    from strategies.runconfig import ConfigError

    with pytest.raises(ConfigError, match=match):
        cfg()


# -- seed updates: the scalars behind clip and median --------------------------------------------
def _seed_reply(index, scalar, weight):
    from strategies.seeds import SeedReply

    return SeedReply(np.asarray(index, dtype=np.int64), np.asarray(scalar, dtype=np.float64), weight, {})


def test_seed_clip_bounds_each_clients_scalars():
    from strategies.seeds import robust_coefficients

    replies = [_seed_reply([0, 1], [3.0, 4.0], 1), _seed_reply([2], [0.5], 1)]  # norms 5 and 0.5
    index, coeff = robust_coefficients(replies, -1.0, "clip", max_norm=1.0)
    np.testing.assert_array_equal(index, [0, 1, 2])
    np.testing.assert_allclose(coeff, [-0.6 / 2, -0.8 / 2, -0.5 / 2], rtol=1e-6)  # (3,4) -> (0.6,0.8); mean over 2


def test_seed_median_replaces_each_seeds_mean_over_its_reporters():
    from strategies.seeds import robust_coefficients, weighted_coefficients

    replies = [_seed_reply([0, 1], [1.0, 2.0], 10), _seed_reply([0], [1.2], 10), _seed_reply([0, 0], [500.0, 500.0], 20)]
    index, coeff = robust_coefficients(replies, 1.0, "median")
    np.testing.assert_array_equal(index, [0, 1])
    # seed 0: reported by all (W_k / W = 1), median(1.0, 1.2, 1000) = 1.2; seed 1: one reporter, 10/40 x 2.0
    np.testing.assert_allclose(coeff, [1.2, 0.5], rtol=1e-6)
    plain = weighted_coefficients(replies, 1.0)[1]
    assert plain[0] > 400 and plain[1] == pytest.approx(0.5)  # FedAvg takes the attacker's 1000 at half weight


def test_a_seed_strategy_takes_clip_and_median_itself():
    from strategies.config import SeedConfig
    from strategies.robust import RobustConfig

    s = build_strategy(SeedConfig(name="fedkseed", num_seeds=16))
    assert wrap(s, ClipConfig(max_norm=2.0)) is s and s.robust == ("clip", 2.0)
    assert wrap(s, MedianConfig()) is s and s.robust == ("median", 0.0)
    assert wrap(build_strategy(SeedConfig(name="fedkseed")), RobustConfig()).robust == ("none", 0.0)
