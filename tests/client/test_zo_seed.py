"""zo_seed (MeZO steps with seeds) on the client: gradient in expectation, the pairs
reproduce the local update, catch-up, configuration errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from client.backbones import load_backbone
from client.batches import batch_iterator, encode
from client.config import ClientConfig, ModelConfig, QuantConfig
from client.methods import METHODS, build_method
from client.methods.prefix_cache import FrozenPrefix
from client.methods.zo_seed import ZoSeedConfig, ZoSeedMethod
from kernels import accumulate_
from strategies import seeds as sd
from strategies import wire
from strategies.config import SeedConfig
from strategies.kinds.seeds import CatchUpError, seed_reply, sync_to_base
from strategies.registry import build_strategy
from strategies.runconfig import ConfigError, build

NAMES = ("sports", "science", "business", "world")
TEXTS = ["the match ended in a draw", "new chip doubles speed", "stocks fell sharply", "talks resume"] * 4


class Quadratic(torch.nn.Module):
    """L(w) = 1/2 (w - c)^T A (w - c); forward_loss reads ``.loss``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0]))
        self.register_buffer("c", torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5]))
        self.register_buffer("a", torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5]))

    def forward(self, input_ids, **_):
        d = self.w - self.c
        return SimpleNamespace(loss=0.5 * (self.a * d * d).sum(), logits=None)


def _quadratic_method(**method):
    m = object.__new__(ZoSeedMethod)
    m.cfg = ClientConfig(method=ZoSeedConfig(**method), lr=1e-3)
    m.model = Quadratic()
    m.synced = None
    m.prefix = FrozenPrefix(m.model, [m.model.w])  # no layers: disabled
    return m


def test_zo_step_follows_the_gradient_in_expectation():
    m = _quadratic_method(zo_eps=1e-3)
    w0 = m.model.w.detach().clone()
    true = m.model.a * (w0 - m.model.c)
    batches = iter(lambda: {"input_ids": torch.zeros(1, 1)}, None)
    rng = torch.get_rng_state()
    update = m.local_train(batches, 4000, {sd.POOL_SIZE: 4000, sd.LR: 1e-12, sd.BACKEND: "torch"})  # w stays put
    index, scalar = update.pairs
    # no draw seed sent: the draws derive from the run seed (round 0), not from torch's global RNG
    assert torch.equal(torch.get_rng_state(), rng)
    np.testing.assert_array_equal(index, sd.draw_indices(sd.draw_seed(m.cfg.seed, 0, 0), 4000, 4000))
    assert torch.equal(m.model.w.detach(), w0)  # restored after the round
    # sum_j g_j z_j / steps estimates the gradient: E[z z^T] g = g
    est = torch.zeros(5)
    pool = sd.seed_pool(m.cfg.seed, 4000)
    accumulate_([est], [int(pool[i]) for i in index], [float(s) / len(index) for s in scalar], backend="torch")
    cos = torch.nn.functional.cosine_similarity(est, true, dim=0)
    assert float(cos) > 0.97, (est, true)


def _tiny(method="zo_seed", quant="none", model="tiny-bert", **kw):
    cfg = ClientConfig(
        model=ModelConfig(name=model, max_length=160),
        quant=QuantConfig(mode=quant),
        method=METHODS[method].config(r=4, **kw),
        lr=1e-2,
        batch_size=4,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = load_backbone(cfg.model, cfg.quant, num_labels=4)
    m = build_method(method, backbone, cfg)
    data = encode(backbone.task, backbone.tokenizer, TEXTS, [0, 1, 2, 3] * 4, NAMES, 160)
    return cfg, m, data


@pytest.mark.parametrize("n", [1, 3])
def test_pairs_reproduce_the_local_update(n):
    cfg, m, data = _tiny()
    before = m.trainable_state()
    m.restore = lambda *a: None  # keep the locally trained state to compare
    torch.manual_seed(1)
    update = m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 5, {sd.PERTURBATIONS: n})
    after = m.trainable_state()
    index, scalar = update.pairs
    assert len(index) == 5 * n
    replay = {k: v.clone() for k, v in before.items()}
    pool = sd.seed_pool(cfg.seed, 4096)
    accumulate_(sd.ordered(replay), [int(pool[i]) for i in index], [-cfg.lr * float(s) for s in scalar])
    for k in before:
        torch.testing.assert_close(replay[k], after[k], rtol=0, atol=1e-5)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_zo_seed_on_nf4_backbone_perturbs_adapters_only():
    _, m, data = _tiny(quant="nf4", model="tiny-llama")
    before = m.trainable_state()
    update = m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 2, {})
    assert len(update.pairs[0]) == 2
    assert all(torch.equal(before[k], v) for k, v in m.trainable_state().items())


def test_all_parameters_mode_undoes_its_update():
    _, m, data = _tiny(zo_params="all")
    before = m.trainable_state()
    assert len(before) > 20  # every weight, not just adapters
    m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 3, {})
    for k, v in m.trainable_state().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)


def test_method_config_errors():
    with pytest.raises(ConfigError, match="unquantized"):
        _tiny(zo_params="all", quant="nf4")


@pytest.mark.parametrize("key, value", [("weight_decay", 0.1), ("dist", "rademacher"), ("kernel_backend", "torch"),
                                        ("perturbations", 3)])
def test_strategy_settings_are_not_method_settings(key, value):
    """weight decay has no zo_seed form; dist, kernel_backend and perturbations are the
    seed strategy's (sent in the round config; their values are checked by SeedConfig)."""
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) method\.{key}\b"):
        build(ClientConfig, {"method": {"name": "zo_seed", key: value}})


def test_method_config_values():
    with pytest.raises(ConfigError, match="zo_eps"):
        ZoSeedConfig(zo_eps=0.0)


class _Grid:
    def __init__(self, nodes):
        self.nodes, self.identity_of = nodes, {n: n for n in nodes}

    def get_node_ids(self):
        return list(self.nodes)


def _as_received(msg, run_id=5):
    msg.metadata.__dict__["_run_id"] = run_id
    return msg


def test_client_catches_up_to_the_server_state():
    cfg, m, data = _tiny()
    initial = m.trainable_state()
    s = build_strategy(SeedConfig(num_seeds=256, lr=1e-2), seed=cfg.seed, rounds=5, local_steps=3)
    state = {k: v.numpy() for k, v in initial.items()}
    for rnd in range(1, 4):
        (msg,) = s.configure_train(rnd, ArrayRecord({k: Array(v) for k, v in state.items()}), ConfigRecord(), _Grid([1]))
        msg = _as_received(msg)
        rc = sync_to_base(m, lambda: initial, msg, dict(msg.content[wire.CONFIG]))
        for k, v in m.trainable_state().items():  # the client trains from exactly the global state
            assert np.array_equal(v.numpy(), state[k]), (rnd, k)
        update = m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(rnd)), 3, rc)
        rep = seed_reply(msg, update, rc, {wire.NUM_EXAMPLES: 16, wire.TRAIN_LOSS: 1.0})
        rep.metadata.__dict__["_src_node_id"] = 1
        assert s.check_reply(rnd, rep)[1] is None
        arrays, _ = s.aggregate_train(rnd, [rep])
        state = {k: a.numpy() for k, a in arrays.items()}
        if rnd == 1:
            s.synced[1] = 0  # pretend the client missed a round: history of 2 rounds next
    # a copy from another run cannot be caught up from a history that starts after round 0
    s.synced[1] = 2
    (msg,) = s.configure_train(4, ArrayRecord({k: Array(v) for k, v in state.items()}), ConfigRecord(), _Grid([1]))
    with pytest.raises(CatchUpError, match="cannot catch up"):
        sync_to_base(m, lambda: initial, _as_received(msg, run_id=6), dict(msg.content[wire.CONFIG]))


@pytest.mark.parametrize("model, kw", [("tiny-bert", dict(zo_params="head")), ("tiny-llama", dict(lora_layers=1))])
def test_frozen_prefix_reuse_gives_the_same_losses(model, kw):
    _, m, data = _tiny(model=model, **kw)
    assert m.prefix.k >= 1
    batch = data.batch(torch.arange(4))
    plain = m.loss(batch)
    with m.prefix.reuse():  # first batch: the probe decides
        m.loss(batch)
    assert m.prefix.enabled
    calls = []
    hook = m.prefix.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with m.prefix.reuse():
        first, second = m.loss(batch), m.loss(batch)
    hook.remove()
    assert first == pytest.approx(plain, abs=1e-6) and second == pytest.approx(plain, abs=1e-6)
    assert len(calls) == 2  # the hook fires, but layer 0's real forward ran only once
    assert all("forward" not in layer.__dict__ for layer in m.prefix.layers)  # restored


def test_frozen_prefix_is_off_when_embeddings_are_perturbed():
    _, m, data = _tiny(zo_params="all")
    batch = data.batch(torch.arange(4))
    with m.prefix.reuse():
        m.loss(batch)
    assert m.prefix.enabled is False


def test_full_parameter_runtime_keeps_no_copy_of_the_initial_state():
    from client.runtime import clear_cache, get_runtime

    cfg = ClientConfig(model=ModelConfig(name="tiny-bert", max_length=160), method=ZoSeedConfig(zo_params="all"),
                       lr=1e-2, batch_size=4)
    clear_cache()
    rt = get_runtime(cfg, 4)
    try:
        assert rt.kept is None and rt.method.pristine
        first = {k: v.clone() for k, v in rt.initial_state.items()}  # untouched: the parameters themselves
        data = encode(rt.backbone.task, rt.backbone.tokenizer, TEXTS, [0, 1, 2, 3] * 4, NAMES, 160)
        rt.method.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 2, {sd.LR: 10.0})
        assert not rt.method.pristine
        again = rt.initial_state  # moved: reloaded from the checkpoint, bitwise the same
        assert set(again) == set(first) and all(torch.equal(again[k], first[k]) for k in first)
    finally:
        clear_cache()
