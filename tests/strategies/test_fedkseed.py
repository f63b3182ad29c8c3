"""FedKSeed / FedKSeed-Pro on the server: aggregation, history catch-up, bad replies."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from kernels import accumulate_
from strategies import seeds as sd
from strategies import wire
from strategies.config import SeedConfig
from strategies.kinds.base import wire_record
from strategies.registry import build_strategy
from strategies.runconfig import ConfigError
from strategies.state import get_strategy_state, set_strategy_state

K = 64


class Grid:
    def __init__(self, nodes):
        self.nodes = nodes
        self.identity_of = {n: n for n in nodes}

    def get_node_ids(self):
        return list(self.nodes)


def state0(seed=0, rows=30):
    rng = np.random.default_rng(seed)
    return {"b": rng.normal(size=(7,)).astype(np.float32), "a": rng.normal(size=(rows, 50)).astype(np.float32)}


def record(state):
    return ArrayRecord({k: Array(v) for k, v in state.items()})


def reply(to: Message, scalar, n=10, rnd=1, ask=0, base=None, bits=32, kind=None, extra=None, frame=None) -> Message:
    """A client's reply frame: ``scalar`` belongs to the first assigned seeds of ``to``."""
    f = sd.ReplyFrame(rnd, rnd - 1 if base is None else base, ask, n, 1.0, np.asarray(scalar, np.float64), bits)
    content = RecordDict({sd.FRAME: ConfigRecord({"f": f.to_bytes(np.random.default_rng(0)) if frame is None else frame})})
    if kind is not None:  # a reply of another kind: no frame
        content = RecordDict({wire.WIRE: wire_record(kind, "fp32")})
    for k, v in (extra or {}).items():
        content[k] = v
    msg = Message(content, reply_to=to)
    msg.metadata.__dict__["_src_node_id"] = to.metadata.dst_node_id
    return msg


def assigned(s, msg, ask=0):
    return s.assigned[msg.metadata.dst_node_id][ask]


def strategy(name="fedkseed", **kw):
    cfg = SeedConfig(name=name, num_seeds=K, lr=0.1, kernel_backend="torch", **kw)
    return build_strategy(cfg, seed=3, rounds=10, local_steps=4)


def test_aggregation_is_weighted_average_of_local_deltas():
    s = strategy()
    g0 = state0()
    msgs = s.configure_train(1, record(g0), ConfigRecord(), Grid([11, 12]))
    assert all(m.content[wire.CONFIG][sd.LR] == pytest.approx(0.1) for m in msgs)
    s.assigned[11][0][:3] = [1, 5, 1]  # a repeated seed and one both clients share
    s.assigned[12][0][:2] = [5, 9]
    r1 = reply(msgs[0], [0.5, -2.0, 0.25], n=10)
    r2 = reply(msgs[1], [1.0, 3.0], n=30)
    for r in (r1, r2):
        assert s.check_reply(1, r)[1] is None
    arrays, metrics = s.aggregate_train(1, [r1, r2])
    out = {k: a.numpy() for k, a in arrays.items()}
    pool = sd.seed_pool(3, K)

    def local(idx, sc):  # a client's local model after its steps: w - lr * sum_j s_j z_j
        t = {k: torch.from_numpy(v.copy()) for k, v in g0.items()}
        accumulate_(sd.ordered(t), [int(pool[i]) for i in idx], [-0.1 * float(x) for x in sc], backend="torch")
        return {k: v.numpy() for k, v in t.items()}

    w1, w2 = local([1, 5, 1], [0.5, -2.0, 0.25]), local([5, 9], [1.0, 3.0])
    for k in g0:
        np.testing.assert_allclose(out[k], 0.25 * w1[k] + 0.75 * w2[k], rtol=1e-5, atol=1e-6)
    assert metrics["unique-seeds"] == 3 and metrics["pairs"] == 5


def _run_rounds(s, rounds, nodes=(1, 2, 3), start=None, rng=None):
    rng = rng or np.random.default_rng(0)
    cur = start or state0()
    for rnd in range(1, rounds + 1):
        msgs = s.configure_train(rnd, record(cur), ConfigRecord(), Grid(list(nodes)))
        reps = []
        for m in msgs:
            r = reply(m, rng.normal(size=int(rng.integers(1, 5))), n=int(rng.integers(1, 50)), rnd=rnd)
            assert s.check_reply(rnd, r)[1] is None
            reps.append(r)
        arrays, _ = s.aggregate_train(rnd, reps)
        cur = {k: a.numpy() for k, a in arrays.items()}
    return cur


def test_catch_up_from_history_equals_server_state():
    s = strategy()
    g0 = state0()
    final = _run_rounds(s, 6, start=g0)
    msg = s.build_message(1, 7)  # node 1 synced at round 5 -> history of round 6 only
    assert msg.content[wire.CONFIG][sd.SYNC_FROM] == 5 and sd.HISTORY in msg.content.config_records
    s.synced[1] = 0  # a client that has not been seen since the start
    msg = s.build_message(1, 7)
    entries = sd.History.from_record(msg.content[sd.HISTORY], K)
    assert [e.round for e in entries] == [1, 2, 3, 4, 5, 6]
    client = {k: torch.from_numpy(v.copy()) for k, v in g0.items()}
    for e in entries:
        e.apply_(sd.ordered(client), 3, K, SeedConfig().dist, "torch")
    for k in final:
        assert np.array_equal(client[k].numpy(), final[k]), k  # bitwise: same ops, same order


def test_full_state_when_history_is_bigger():
    s = strategy()
    _run_rounds(s, 12, start=state0(rows=1))
    s.synced[7] = 0
    msg = s.build_message(7, 13)
    assert msg.content[wire.CONFIG][sd.SYNC_FROM] == -1
    assert wire.ARRAYS in msg.content.array_records
    assert sum(e.nbytes for e in s.history.entries) <= s.state_bytes()


def test_state_round_trips_and_resyncs():
    s = strategy("fedkseed_pro")
    _run_rounds(s, 3)
    saved = get_strategy_state(s)
    t = strategy("fedkseed_pro")
    set_strategy_state(t, saved)
    assert [e.round for e in t.history.entries] == [e.round for e in s.history.entries]
    np.testing.assert_array_equal(t.probabilities(), s.probabilities())
    assert t.synced == {}


def test_pro_probabilities_follow_importance():
    s = strategy("fedkseed_pro")
    np.testing.assert_allclose(s.probabilities(), 1.0 / K, rtol=1e-6)
    msgs = s.configure_train(1, record(state0()), ConfigRecord(), Grid([1]))
    sent = sd.unpack(msgs[0].content[sd.ASSIGNED], "index", sd.index_dtype(K))
    np.testing.assert_array_equal(sent, assigned(s, msgs[0]))  # Pro sends its draws, not K probabilities
    assert len(sent) == 4 and sd.DRAW in msgs[0].content[wire.CONFIG]
    s.assigned[1][0][:2] = [2, 3]
    r = reply(msgs[0], [10.0, 0.1])
    s.aggregate_train(1, [r])
    p = s.probabilities()
    assert p[2] > p[0] > 0 and p[2] > p[3] and p.sum() == pytest.approx(1.0, abs=1e-5)
    # the next round draws by these probabilities: seed 2 comes up far more often than chance
    msgs = s.configure_train(2, record(state0()), ConfigRecord(), Grid(list(range(200))))
    draws = np.concatenate([assigned(s, m) for m in msgs])
    assert np.mean(draws == 2) > 2.0 / K


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(scalar=[np.nan]), "non-finite"),
        (dict(scalar=np.zeros(5)), "pairs; expected 1 to 4"),
        (dict(scalar=[]), "pairs; expected 1 to 4"),
        (dict(rnd=0), "stale reply"),
        (dict(ask=1), "stale reply"),
        (dict(base=-3), "stale reply"),
        (dict(kind=wire.KIND_DELTA), "update kind"),
        (dict(frame=b"\x01\x20short"), "malformed frame"),
        (dict(frame=b"\x01\x07" + bytes(26)), "malformed frame"),  # 7-bit scalars
        (dict(n=0), "num-examples"),
        (dict(extra={wire.ARRAYS: ArrayRecord({"a": Array(np.zeros(3, np.float32))})}), "must not carry tensors"),
    ],
)
def test_bad_replies_are_rejected_with_a_reason(change, reason):
    s = strategy()
    (msg,) = s.configure_train(1, record(state0()), ConfigRecord(), Grid([4]))
    args = dict(scalar=[0.5], n=10, rnd=1)
    args.update(change)
    r = reply(msg, **args)
    parsed, why = s.check_reply(1, r)
    assert parsed is None and reason in why
    assert 4 not in s.synced  # the client gets the full state next time


def test_a_reply_to_no_request_is_rejected():
    s = strategy()
    (msg,) = s.configure_train(1, record(state0()), ConfigRecord(), Grid([4]))
    s.assigned.clear()  # e.g. a node that was not sampled this round
    parsed, why = s.check_reply(1, reply(msg, [0.5]))
    assert parsed is None and "no request 0 was sent" in why


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2])
def test_quantized_scalars_are_unbiased(bits):
    rng = np.random.default_rng(bits)
    s = rng.normal(size=64) * 3
    q = (1 << (bits - 1)) - 1
    runs = [sd.ReplyFrame.from_bytes(sd.ReplyFrame(1, 0, 0, 5, 0.0, s, bits).to_bytes(rng)).scalar for _ in range(4000)]
    step = np.abs(s).max() / q if bits < 32 else 1e-6
    assert np.abs(runs[0] - s).max() <= step * 1.0001  # each scalar rounds to a neighbouring code
    np.testing.assert_allclose(np.mean(runs, axis=0), s, atol=max(4 * step / np.sqrt(4000), 1e-6))
    payload = len(sd.ReplyFrame(1, 0, 0, 5, 0.0, s, bits).to_bytes(rng)) - 28
    assert payload == len(s) * bits // 8


def test_draws_are_a_permutation_and_reproducible():
    a = sd.draw_indices(sd.draw_seed(1, 2, 3), 300, K)
    np.testing.assert_array_equal(a, sd.draw_indices(sd.draw_seed(1, 2, 3), 300, K))
    assert sorted(a[:K].tolist()) == list(range(K))  # no repeat before the pool is used up
    assert not np.array_equal(a[:K], a[K : 2 * K])  # the next pass is another permutation
    assert sd.draw_seed(1, 2, 3) != sd.draw_seed(1, 2, 4) != sd.draw_seed(1, 3, 3)


@pytest.mark.parametrize(
    "kw, key",
    [(dict(num_seeds=0), "num_seeds"), (dict(dist="uniform"), "dist"), (dict(kernel_backend="cuda"), "kernel_backend")],
)
def test_config_errors(kw, key):
    with pytest.raises(ConfigError, match=key):
        SeedConfig(name="fedkseed", **kw)


def test_server_and_client_agree_after_1000_rounds():
    """Server (numba when available) and a client replaying with the torch reference."""
    rng = np.random.default_rng(1)
    server = {"w": torch.from_numpy(rng.normal(size=4097).astype(np.float32))}
    client = {"w": server["w"].clone()}
    pool = sd.seed_pool(9, K)
    for rnd in range(1000):
        idx = rng.choice(K, 8, replace=False)
        coeff = (rng.normal(size=8) * 1e-3).astype(np.float32)
        u = sd.RoundUpdate(rnd + 1, 0, idx, coeff)
        u.apply_(sd.ordered(server), 9, K, "gaussian", "auto")
        u.apply_(sd.ordered(client), 9, K, "gaussian", "torch")
    rel = (server["w"] - client["w"]).norm() / server["w"].norm()
    assert float(rel) <= 1e-5
    assert pool.dtype == np.int64 and len(set(pool.tolist())) == K
