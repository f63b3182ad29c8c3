"""FwdLLM's server: hand-computed aggregation, variance control, combining requests."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from kernels import perturb_
from strategies import seeds as sd
from strategies import wire
from strategies.config import FwdLLMConfig
from strategies.fwdllm import CLIENT, FwdLLM, aligned, combine_asks, half_split_variance
from strategies.registry import build_strategy

DIST = FwdLLMConfig().dist  # the strategy's default perturbation distribution

K = 16
STATE = {"a": np.zeros(3, np.float32), "b": np.zeros((2, 2), np.float32)}


class FakeGrid:
    def __init__(self, ids):
        self.ids = ids

    def get_node_ids(self):
        return list(self.ids)


def make(rounds=2, **kw):
    cfg = FwdLLMConfig(lr=0.1, num_seeds=K, perturbations=2, lr_schedule="linear", **kw)
    return build_strategy(cfg, seed=7, rounds=rounds, local_steps=1)


def start(s, rnd=1, nodes=(1, 2), state=STATE):
    record = ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()})
    return list(s.configure_train(rnd, record, ConfigRecord(), FakeGrid(nodes)))


def reply(s, node, index, scalar, n, rnd=1, ask=0):
    """Node ``node``'s reply to request ``ask``, as if ``s`` had assigned it ``index``."""
    s.assigned.setdefault(node, {})[ask] = np.asarray(index, dtype=np.int64)
    req = Message(RecordDict({"x": ConfigRecord({"a": 1})}), dst_node_id=node, message_type="train")
    frame = sd.ReplyFrame(rnd, rnd - 1, ask, n, 1.0, np.asarray(scalar, np.float64), 32)
    msg = Message(RecordDict({sd.FRAME: sd.frame_record(frame, np.random.default_rng(0))}), reply_to=req)
    msg.metadata.__dict__["_src_node_id"] = node
    return msg


def z(seed, shapes=((3,), (2, 2))):
    """z(seed) over the state in sorted-name order, flattened."""
    bufs = [torch.zeros(s) for s in shapes]
    perturb_(bufs, int(seed), 1.0, DIST)
    return torch.cat([b.flatten() for b in bufs]).double().numpy()


def flat(arrays):
    return np.concatenate([arrays[k].numpy().ravel() for k in sorted(arrays.keys())])


def test_registered_and_fresh_pool_per_round():
    s = make(candidates=1)
    assert isinstance(s, FwdLLM)
    (msg,) = start(s, rnd=1, nodes=[1])
    cfg = msg.content[wire.CONFIG]
    assert cfg[sd.POOL_ROUND] == 1 and cfg[sd.ASK] == 0 and sd.DRAW in cfg
    assert sd.ASSIGNED not in msg.content.config_records  # uniform: the client regenerates the draws
    np.testing.assert_array_equal(s.assigned[1][0], sd.draw_indices(cfg[sd.DRAW], 2, K))
    assert s.pool_round(5) == 5


def test_aggregation_by_hand_and_linear_lr():
    s = make(candidates=10)
    start(s)
    r = [reply(s, 1, [0, 1], [0.5, -1.0], 10), reply(s, 2, [1, 3], [2.0, 0.25], 30)]
    arrays, metrics = s.aggregate_train(1, r)
    pool = sd.seed_pool(7, K, 1)
    lr = 0.1  # linear: 0.1 * (2 - 1 + 1) / 2
    g = 0.25 * (0.5 * z(pool[0]) - 1.0 * z(pool[1])) + 0.75 * (2.0 * z(pool[1]) + 0.25 * z(pool[3]))
    np.testing.assert_allclose(flat(arrays), -lr * g, rtol=1e-5, atol=1e-6)
    assert metrics["requests"] == 1 and metrics["lr"] == pytest.approx(0.1) and metrics["grad-variance"] > 0
    # round 2: the half learning rate, its own pool, and the previous update goes down
    assert s.round_lr(2) == pytest.approx(0.05)
    state2 = {k: arrays[k].numpy() for k in arrays.keys()}
    (msg,) = start(s, rnd=2, nodes=[1], state=state2)
    sent = sd.unpack(msg.content[sd.ASSIGNED], "index", sd.index_dtype(K))  # discriminative: explicit
    np.testing.assert_array_equal(sent, s.assigned[1][0])
    arrays2, metrics2 = s.aggregate_train(2, [reply(s, 1, [4], [1.0], 5, rnd=2)])
    expected = flat(arrays) - 0.05 * z(sd.seed_pool(7, K, 2)[4])
    np.testing.assert_allclose(flat(arrays2), expected, rtol=1e-5, atol=1e-6)
    assert 0 < metrics2["abs-cos"] <= 1


def test_no_previous_update_without_candidates():
    s = make(candidates=1)
    start(s)
    arrays, _ = s.aggregate_train(1, [reply(s, 1, [0], [1.0], 5)])
    (msg,) = start(s, rnd=2, nodes=[1], state={k: arrays[k].numpy() for k in arrays.keys()})
    assert sd.ASSIGNED not in msg.content.config_records


def test_round_update_combines_requests():
    s = make()
    client1 = [
        sd.SeedReply(np.array([0, 1]), np.array([1.0, 1.0]), 10, {CLIENT: 1, sd.ASK: 0}),
        sd.SeedReply(np.array([2, 3]), np.array([1.0, -1.0]), 10, {CLIENT: 1, sd.ASK: 1}),
    ]
    client2 = [sd.SeedReply(np.array([0]), np.array([4.0]), 10, {CLIENT: 2, sd.ASK: 0})]
    up = s.round_update(1, client1 + client2)
    got = dict(zip(up.index.tolist(), up.coeff.tolist()))
    # client 1: mean of its two requests (0.5 each); client 2: one request; equal weights
    want = {0: 0.5 * 0.5 + 0.5 * 4.0, 1: 0.25, 2: 0.25, 3: -0.25}
    assert got == pytest.approx({k: -0.1 * v for k, v in want.items()})
    assert up.pool_round == 1
    assert len(combine_asks(client1 + client2)) == 2


def test_half_split_variance_by_hand():
    pool = sd.seed_pool(7, K, 1)
    params = [torch.zeros(3), torch.zeros(2, 2)]
    # one client, n=2: d = 2 * scalar; halves are its two perturbations
    one = [sd.SeedReply(np.array([0, 5]), np.array([0.5, -0.25]), 1, {CLIENT: 1})]
    m1, m2 = 1.0 * z(pool[0]), -0.5 * z(pool[5])
    assert half_split_variance(one, params, pool, DIST) == pytest.approx(np.mean((m1 - m2) ** 2) / 2, rel=1e-5)
    # identical halves: no variance; a single perturbation per client: undefined
    same = [sd.SeedReply(np.array([3, 3]), np.array([1.0, 1.0]), 1, {CLIENT: 1})]
    assert half_split_variance(same, params, pool, DIST) == pytest.approx(0.0, abs=1e-12)
    single = [sd.SeedReply(np.array([3]), np.array([1.0]), 1, {CLIENT: c}) for c in (1, 2)]
    assert np.isnan(half_split_variance(single, params, pool, DIST))


def test_variance_falls_with_more_perturbations():
    pool = sd.seed_pool(7, 512, 1)
    params = [torch.zeros(50)]
    rng = np.random.default_rng(0)

    def var(n):
        idx = rng.choice(512, n, replace=False)
        g = np.ones(50) / np.sqrt(50)  # a fixed true gradient
        d = np.array([float(g @ z(pool[i], ((50,),))) for i in idx])
        r = [sd.SeedReply(idx, d / n, 1, {CLIENT: 1})]
        return half_split_variance(r, params, pool, DIST)

    assert var(200) < var(20) / 4


def test_variance_control_asks_again_until_max_asks():
    s = make(variance_threshold=0.0, max_asks=2)
    start(s)
    valid = [reply(s, 1, [0, 1], [0.5, -1.0], 10), reply(s, 2, [2, 3], [2.0, 0.25], 30)]
    for k in (1, 2):
        more = s.configure_followup(1, valid, FakeGrid([1, 2]))
        assert sorted(m.metadata.dst_node_id for m in more) == [1, 2]
        assert all(m.content[wire.CONFIG][sd.ASK] == k for m in more)
        assert all(m.content[wire.CONFIG][sd.POOL_ROUND] == 1 for m in more)
        valid += [reply(s, 1, [4 + k, 6], [0.1, 0.2], 10, ask=k), reply(s, 2, [8 + k, 12], [0.3, 0.4], 30, ask=k)]
    assert s.configure_followup(1, valid, FakeGrid([1, 2])) == []  # max_asks reached
    _, metrics = s.aggregate_train(1, valid)
    assert metrics["requests"] == 3


@pytest.mark.parametrize("kw", [dict(variance_threshold=1e9, max_asks=3), dict(variance_threshold=0.0, max_asks=0)])
def test_variance_control_stops_below_threshold_and_when_disabled(kw):
    s = make(**kw)
    start(s)
    valid = [reply(s, 1, [0, 1], [0.5, -1.0], 10), reply(s, 2, [2, 3], [2.0, 0.25], 30)]
    assert s.configure_followup(1, valid, FakeGrid([1, 2])) == []


def test_only_clients_that_answered_the_last_request_are_asked():
    s = make(variance_threshold=0.0, max_asks=2)
    start(s)
    valid = [reply(s, 1, [0, 1], [0.5, -1.0], 10), reply(s, 2, [2, 3], [2.0, 0.25], 30)]
    assert len(s.configure_followup(1, valid, FakeGrid([1, 2]))) == 2
    valid.append(reply(s, 2, [5, 6], [0.5, 0.5], 30, ask=1))  # node 1 did not answer request 1
    (msg,) = s.configure_followup(1, valid, FakeGrid([1, 2]))
    assert msg.metadata.dst_node_id == 2 and msg.content[wire.CONFIG][sd.ASK] == 2


def test_state_roundtrip_keeps_previous_update():
    a = make()
    start(a)
    a.aggregate_train(1, [reply(a, 1, [0, 1], [0.5, -1.0], 10)])
    b = make()
    b.load_state_dict(a.state_dict())
    assert b.prev is not None and b.prev.round == 1
    np.testing.assert_array_equal(b.prev.index, a.prev.index)
    np.testing.assert_array_equal(b.prev.coeff, a.prev.coeff)
    c = make()
    c.load_state_dict(make().state_dict())
    assert c.prev is None


def test_discriminative_sampling_keeps_the_best_aligned_candidates():
    pool = sd.seed_pool(7, K, 2)
    u = [torch.zeros(3), torch.zeros(2, 2)]
    perturb_(u, 1234, 1.0, DIST)
    uf = torch.cat([t.flatten() for t in u]).double().numpy()
    cands = np.arange(K)
    index, cos = aligned(cands, pool, u, 3, DIST, "torch")
    brute = [abs(z(pool[k]) @ uf) / (np.linalg.norm(z(pool[k])) * np.linalg.norm(uf)) for k in cands]
    np.testing.assert_array_equal(index, np.argsort(-np.asarray(brute), kind="stable")[:3])
    np.testing.assert_allclose(np.abs(cos), np.sort(brute)[::-1][:3], rtol=1e-5)
