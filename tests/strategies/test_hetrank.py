"""Heterogeneous LoRA ranks: each aggregation against hand-computed results on small
matrices, the per-client downlink and reply shapes, and the rank assignment."""

import types

import numpy as np
import pytest

from client.ranks import client_rank, truncated
from strategies.config import FlexLoRAConfig, HetLoRAConfig, HetRankConfig
from strategies.hetrank import FLoRA, FlexLoRA, HetLoRA, stack, svd_factors
from strategies.runconfig import ConfigError

A, B, HEAD = "m.q.lora_A.default.weight", "m.q.lora_B.default.weight", "classifier.weight"
DELTA = "m.q.base_delta"
RUN = {"method.name": "lora", "method.lora.r": 4, "method.lora.lora_alpha": 8, "method.lora.rank_choices": "[1, 2, 4]"}


def _strategy(cls, cfg, run_config=RUN):
    return cls(cfg, types.SimpleNamespace(run_config=tuple(run_config.items()), seed=0))


def _client(rank, seed):
    rng = np.random.default_rng(seed)
    return {A: rng.normal(size=(rank, 3)).astype(np.float32), B: rng.normal(size=(5, rank)).astype(np.float32),
            HEAD: rng.normal(size=(2, 5)).astype(np.float32)}


def test_hetlora_zero_pads_and_averages():
    s = _strategy(HetLoRA, HetLoRAConfig())
    c1, c2 = _client(1, 0), _client(2, 1)
    out = s.aggregate_states([c1, c2], [0.25, 0.75], {})
    a = np.zeros((4, 3)); a[:1] += 0.25 * c1[A]; a[:2] += 0.75 * c2[A]
    b = np.zeros((5, 4)); b[:, :1] += 0.25 * c1[B]; b[:, :2] += 0.75 * c2[B]
    np.testing.assert_allclose(out[A], a, rtol=1e-6)
    np.testing.assert_allclose(out[B], b, rtol=1e-6)
    np.testing.assert_allclose(out[HEAD], 0.25 * c1[HEAD] + 0.75 * c2[HEAD], rtol=1e-6)


def test_hetlora_norm_weighting_uses_the_products_norms():
    s = _strategy(HetLoRA, HetLoRAConfig(weighting="norm"))
    c1, c2 = _client(2, 0), _client(2, 1)
    n1, n2 = np.linalg.norm(c1[B] @ c1[A]), np.linalg.norm(c2[B] @ c2[A])
    out = s.aggregate_states([c1, c2], [0.5, 0.5], {})
    w1 = n1 / (n1 + n2)
    np.testing.assert_allclose(out[A][:2], w1 * c1[A] + (1 - w1) * c2[A], rtol=1e-5)
    np.testing.assert_allclose(out[HEAD], 0.5 * c1[HEAD] + 0.5 * c2[HEAD], rtol=1e-6)  # heads: by examples


def test_flora_stack_product_is_the_weighted_sum_of_products():
    clients = [_client(r, i) for i, r in enumerate((1, 2, 4))]
    weights, scale = [0.2, 0.3, 0.5], 2.0
    b_stack, a_stack = stack([(c[A], c[B]) for c in clients], weights, scale)
    assert b_stack.shape == (5, 7) and a_stack.shape == (7, 3)  # rank = 1 + 2 + 4
    expected = sum(w * scale * c[B] @ c[A] for c, w in zip(clients, weights))
    np.testing.assert_allclose(b_stack @ a_stack, expected, rtol=1e-5, atol=1e-6)


def test_flora_merges_into_the_dense_update_and_sends_fresh_adapters():
    s = _strategy(FLoRA, HetRankConfig())
    init = _client(4, 9)
    init[B] = np.zeros_like(init[B])
    glob = s.initial_global(init)
    assert glob[DELTA].shape == (5, 3) and not glob[DELTA].any()
    glob[DELTA] = np.ones((5, 3), np.float32)
    clients, weights = [_client(1, 0), _client(4, 1)], [0.4, 0.6]
    out = s.aggregate_states(clients, weights, glob)
    expected = 1.0 + sum(w * s.scale * c[B] @ c[A] for c, w in zip(clients, weights))
    np.testing.assert_allclose(out[DELTA], expected, rtol=1e-5)
    assert np.array_equal(out[A], init[A]) and not out[B].any()  # the initial adapters again
    s._ranks = {7: 2}
    down = s.client_state(out, 7)
    assert down[A].shape == (2, 3) and down[B].shape == (5, 2) and down[DELTA].shape == (5, 3)
    reply = types.SimpleNamespace(metadata=types.SimpleNamespace(src_node_id=7))
    assert s.reply_shapes({k: v.shape for k, v in out.items()}, reply) == {A: (2, 3), B: (5, 2), HEAD: (2, 5)}


def test_flexlora_truncation_at_full_rank_is_exact():
    rng = np.random.default_rng(0)
    delta = (rng.normal(size=(5, 2)) @ rng.normal(size=(2, 3))).astype(np.float32)  # rank 2
    for rank in (2, 3, 4):
        a, b = svd_factors(delta, rank, 2.0, np.full((4, 3), 7.0, np.float32))
        np.testing.assert_allclose(2.0 * b @ a, delta, rtol=1e-5, atol=1e-5)
        assert a.shape == (rank, 3) and b.shape == (5, rank)
        if rank > 2:  # a zero singular value: LoRA's initial A row, B = 0 (still learns)
            assert np.all(a[2:] == 7.0) and not b[:, 2:].any()
    a1, b1 = svd_factors(delta, 1, 2.0, np.zeros((4, 3), np.float32))
    u, sv, vt = np.linalg.svd(delta)
    np.testing.assert_allclose(2.0 * b1 @ a1, sv[0] * np.outer(u[:, 0], vt[0]), rtol=1e-4, atol=1e-5)


def test_flexlora_averages_full_size_products():
    s = _strategy(FlexLoRA, FlexLoRAConfig())
    glob = s.initial_global({**_client(4, 9), B: np.zeros((5, 4), np.float32)})
    clients, weights = [_client(2, 0), _client(4, 1)], [0.5, 0.5]
    out = s.aggregate_states(clients, weights, glob)
    expected = sum(w * s.scale * c[B] @ c[A] for c, w in zip(clients, weights))
    np.testing.assert_allclose(out[DELTA], expected, rtol=1e-5)
    s._ranks, s._svd = {3: 4}, {}
    down = s.client_state(out, 3)
    assert DELTA not in down
    np.testing.assert_allclose(s.scale * down[B] @ down[A], expected, rtol=1e-4, atol=1e-5)  # rank 4 >= rank(dW)


def test_rank_assignment_and_truncation():
    assert [client_rank(i, (2, 4, 8), "cycle", 0) for i in range(5)] == [2, 4, 8, 2, 4]
    draws = [client_rank(i, (2, 4, 8, 16), "random", 3) for i in range(40)]
    assert draws == [client_rank(i, (2, 4, 8, 16), "random", 3) for i in range(40)] and set(draws) == {2, 4, 8, 16}
    assert truncated(A, np.ones((4, 3)), 2).shape == (2, 3) and truncated(B, np.ones((5, 4)), 2).shape == (5, 2)


def test_strategies_need_lora():
    with pytest.raises(ConfigError, match="use method=lora"):
        _strategy(HetLoRA, HetLoRAConfig(), {"method.name": "adapter"})


def test_hetlora_self_pruning_accepts_the_pruned_rank_and_keeps_it():
    from flwr.app import Array, ArrayRecord, RecordDict

    s = _strategy(HetLoRA, HetLoRAConfig(self_pruning=True, prune_gamma=0.25))
    s._ranks, s._identity = {7: 4}, {7: 2}
    assert s.round_config() == {"lora-prune-lambda": 0.01, "lora-prune-gamma": 0.25}

    def reply(rank):
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in _client(rank, 0).items()})})
        return types.SimpleNamespace(metadata=types.SimpleNamespace(src_node_id=7), content=content,
                                     has_error=lambda: False)

    assert s.reply_rank(reply(3)) == 3 and s.reply_rank(reply(2)) == 4  # 4 - round(0.25 * 4) only
    s.pruned[2] = 3
    assert s.rank_for(2) == 3 and s.rank_for(1) == 2  # identity 1 cycles to rank 2 anyway
    restored = _strategy(HetLoRA, HetLoRAConfig(self_pruning=True))
    restored.load_state_dict(s.state_dict())
    assert restored.pruned == {2: 3}


def test_ranks_by_device_follow_the_classes_compute():
    from client.ranks import device_ranks

    speeds = {"phone-mid": (29, 2000), "rpi5": (46, 3000), "laptop": (307, 8000)}
    assert device_ranks((16, 2, 8, 4), speeds) == {"phone-mid": 2, "rpi5": 8, "laptop": 16}
    assert device_ranks((2, 4, 8, 16), {**speeds, "phone-high": (56, 4000)}) == {
        "phone-mid": 2, "rpi5": 4, "phone-high": 8, "laptop": 16}
    assert device_ranks((2, 4), {"rpi5": (46, 3000)}) == {"rpi5": 4}
    assert device_ranks((2, 4), {"a": (46, 3000), "b": (46, 4000)}) == {"a": 2, "b": 4}  # memory breaks a tie


def test_by_device_gives_each_client_its_simulated_class_rank():
    from client.config import ClientConfig
    from client.methods import METHODS
    from strategies.population import DeviceConfig
    from strategies.runconfig import flatten

    profiles = {n: {"memory_mb": m, "flops_fp32": f, "flops_quant": f / 2, "uplink_mbps": 10, "downlink_mbps": 10,
                    "availability": 1.0, "dropout": 0.0, "joules_per_gflop": 0.1, "joules_per_mb": 0.1}
                for n, m, f in (("slow", 2000, 20), ("fast", 8000, 300))}
    device = DeviceConfig(name="mix", shares={"slow": 0.75, "fast": 0.25}, profiles=profiles)
    method = METHODS["lora"].config(r=8, lora_alpha=16, rank_choices=(2, 8), rank_assignment="by_device")
    client = ClientConfig(method=method, device=device, num_clients=8)
    s = _strategy(HetLoRA, HetLoRAConfig(), flatten(client))
    classes = device.population.classes(8, 0)
    want = [8 if device.population.names[c] == "fast" else 2 for c in classes]
    assert [s.rank_for(i) for i in range(8)] == want and want.count(8) == 2
    with pytest.raises(ConfigError, match="by_device needs a device population"):
        _strategy(HetLoRA, HetLoRAConfig(), flatten(ClientConfig(method=method)))


def test_by_device_on_a_deployment_takes_the_devices_the_nodes_declared():
    from client.config import ClientConfig
    from client.methods import METHODS
    from strategies.runconfig import flatten

    method = METHODS["lora"].config(r=16, lora_alpha=32, rank_choices=(2, 4, 8, 16), rank_assignment="by_device")
    s = _strategy(HetLoRA, HetLoRAConfig(), {**flatten(ClientConfig(method=method)), "deployed": True})
    with pytest.raises(RuntimeError, match="not known yet"):
        s.rank_for(0)
    pi, phone, laptop = ({"name": n, "gflops": g, "memory-mb": m}
                         for n, g, m in (("rpi5", 46.0, 3000.0), ("phone-mid", 29.0, 2000.0), ("laptop", 307.0, 8000.0)))
    with pytest.raises(ConfigError, match=r"client\(s\) \[2\] declared no device"):
        s.set_devices({0: pi, 1: phone}, [0, 1, 2])
    s.set_devices({0: pi, 1: phone, 2: laptop, 3: pi}, [0, 1, 2, 3])
    assert [s.rank_for(i) for i in range(4)] == [8, 2, 16, 8]  # slowest class the smallest rank, as in simulation


def test_hetlora_holders_average_each_component_over_the_clients_that_trained_it():
    s = _strategy(HetLoRA, HetLoRAConfig(padding="holders"))
    c1, c2 = _client(1, 0), _client(2, 1)
    glob = {A: np.full((4, 3), 7.0, np.float32), B: np.full((5, 4), 7.0, np.float32), HEAD: np.zeros((2, 5))}
    out = s.aggregate_states([c1, c2], [0.25, 0.75], glob)
    np.testing.assert_allclose(out[A][0], 0.25 * c1[A][0] + 0.75 * c2[A][0], rtol=1e-6)  # both hold component 0
    np.testing.assert_allclose(out[A][1], c2[A][1], rtol=1e-6)  # only client 2: its value, not 0.75x it
    np.testing.assert_allclose(out[B][:, 1], c2[B][:, 1], rtol=1e-6)
    np.testing.assert_array_equal(out[A][2:], 7.0)  # nobody trained components 2, 3: kept
    np.testing.assert_array_equal(out[B][:, 2:], 7.0)
    with pytest.raises(ConfigError, match="strategy.padding"):
        HetLoRAConfig(padding="mean")


def test_hetlora_global_padding_averages_the_updates_so_nothing_shrinks():
    s = _strategy(HetLoRA, HetLoRAConfig(padding="global"))
    c1, c2 = _client(1, 0), _client(2, 1)
    glob = {A: np.full((4, 3), 7.0, np.float32), B: np.full((5, 4), 7.0, np.float32), HEAD: np.zeros((2, 5))}
    out = s.aggregate_states([c1, c2], [0.25, 0.75], glob)
    np.testing.assert_allclose(out[A][0], 0.25 * c1[A][0] + 0.75 * c2[A][0], rtol=1e-6)  # both trained it
    np.testing.assert_allclose(out[A][1], 7.0 + 0.75 * (c2[A][1] - 7.0), rtol=1e-6)  # client 1 counts as unchanged
    np.testing.assert_allclose(out[B][:, 1], 7.0 + 0.75 * (c2[B][:, 1] - 7.0), rtol=1e-6)
    np.testing.assert_array_equal(out[A][2:], 7.0)  # nobody trained components 2, 3: kept, not zeroed
    np.testing.assert_array_equal(out[B][:, 2:], 7.0)
    same = {A: glob[A][:2].copy(), B: glob[B][:, :2].copy(), HEAD: np.zeros((2, 5), np.float32)}
    np.testing.assert_array_equal(s.aggregate_states([same, same], [0.5, 0.5], glob)[A], glob[A])  # no update: no change


def test_flexlora_update_averaging_keeps_what_a_low_rank_client_could_not_hold():
    s = _strategy(FlexLoRA, FlexLoRAConfig(average="updates"))
    glob = s.initial_global({**_client(4, 9), B: np.zeros((5, 4), np.float32)})
    rng = np.random.default_rng(3)
    glob[DELTA] = rng.normal(size=(5, 3)).astype(np.float32)  # rank 3
    s._ranks = {1: 1, 2: 4}
    sent = {n: s.client_state(glob, n) for n in (1, 2)}
    # nobody changed what they received: dW stays as it was (products: the rank-1 truncation would pull it down)
    np.testing.assert_allclose(s.aggregate_states([sent[1], sent[2]], [0.5, 0.5], glob)[DELTA], glob[DELTA],
                               rtol=1e-5, atol=1e-5)
    plain = _strategy(FlexLoRA, FlexLoRAConfig()).aggregate_states([sent[1], sent[2]], [0.5, 0.5], glob)[DELTA]
    assert np.abs(plain - glob[DELTA]).max() > 0.1
    # the rank-1 client moves its factors: dW moves by its weight times its product's change
    moved = {**sent[1], B: sent[1][B] + 0.5}
    out = s.aggregate_states([moved, sent[2]], [0.25, 0.75], glob)
    change = s.scale * (moved[B] @ moved[A] - sent[1][B] @ sent[1][A])
    np.testing.assert_allclose(out[DELTA], glob[DELTA] + 0.25 * change, rtol=1e-4, atol=1e-5)
    # every client at full rank: the same as FlexLoRA's mean of products
    clients = [_client(4, 0), _client(4, 1)]
    np.testing.assert_allclose(s.aggregate_states(clients, [0.4, 0.6], glob)[DELTA],
                               _strategy(FlexLoRA, FlexLoRAConfig()).aggregate_states(clients, [0.4, 0.6], glob)[DELTA],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="strategy.average"):
        FlexLoRAConfig(average="mean")
