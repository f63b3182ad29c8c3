"""Every registered method: 2 local steps on a tiny model leave the frozen backbone
alone; delta methods (and split training's client part, trained against an in-process
server part) change the trainable state and round-trip exactly through the wire codec;
seed methods reply (seed, scalar) pairs and leave the state as it was."""

import numpy as np
import pytest
import torch

from client.backbones import load_backbone
from client.batches import batch_iterator, encode
from client.config import ClientConfig, ModelConfig, QuantConfig
from client.methods import METHODS, build_method
from strategies import wire
from strategies.codecs import get_codec
from strategies.runconfig import ConfigError

TEXTS = ["the match ended in a draw", "new chip doubles speed", "stocks fell sharply", "talks resume in geneva"] * 4
LABELS = [0, 1, 2, 3] * 4
NAMES = ("sports", "science", "business", "world")
SETTINGS = {"split": {"r": 4, "cut": 1}, "prompt": {"num_virtual_tokens": 4}, "prefix": {"num_virtual_tokens": 4},
            "adapter": {"adapter_dim": 4}, "ia3": {}, "bitfit": {}, "head": {}}
BIASED = {"tiny-bert"}  # BitFit needs bias terms; the tiny Llama has none


def _setup(method: str, model: str, task: str = "auto", quant: str = "none"):
    cfg = ClientConfig(
        model=ModelConfig(name=model, task=task, max_length=160),
        quant=QuantConfig(mode=quant),
        method=METHODS[method].config(**SETTINGS.get(method, {"r": 4})),
        lr=1e-2,
        batch_size=4,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = load_backbone(cfg.model, cfg.quant, num_labels=len(NAMES))
    m = build_method(method, backbone, cfg)
    data = encode(backbone.task, backbone.tokenizer, TEXTS, LABELS, NAMES, cfg.model.max_length)
    return cfg, m, data


def _frozen(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("model, task", [("tiny-bert", "auto"), ("tiny-llama", "auto"), ("tiny-llama", "classification")])
@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_method_conformance(method, model, task, quant):
    if quant == "nf4" and model != "tiny-llama":
        pytest.skip("k-bit backbones are checked on the tiny Llama")
    if method == "bitfit" and model not in BIASED:
        with pytest.raises(ConfigError, match="has none"):
            _setup(method, model, task, quant)
        return
    if method == "head" and model == "tiny-llama" and task == "auto":  # causal LM: no classification head
        with pytest.raises(ConfigError, match="causal LM"):
            _setup(method, model, task, quant)
        return
    cfg, m, data = _setup(method, model, task, quant)
    before = m.trainable_state()
    frozen = _frozen(m.model)
    assert before and frozen
    round_config = {}
    if m.kind == wire.KIND_ACTIVATIONS:  # the client part trains against the server's part
        from client.methods.split import SERVER
        from client.split_server import ServerPart
        from strategies.runconfig import flatten

        round_config[SERVER] = ServerPart({**flatten(cfg), "data.label_names": NAMES})
    update = m.local_train(batch_iterator(data, cfg.batch_size, torch.Generator().manual_seed(0)), 2, round_config)
    assert update.metrics[wire.TRAIN_LOSS] > 0
    for k, v in _frozen(m.model).items():
        assert torch.equal(v, frozen[k]), f"frozen parameter {k} changed"
    assert m.kind == METHODS[method].kind
    if m.kind == wire.KIND_SEEDS:
        index, scalar = update.pairs
        assert 1 <= len(index) == len(scalar) and np.isfinite(scalar).all() and not update.state
        assert all(torch.equal(before[k], v) for k, v in m.trainable_state().items())  # restored
        return
    assert m.kind in (wire.KIND_DELTA, wire.KIND_ACTIVATIONS)
    assert all(v.dtype == torch.float32 for v in update.state.values())
    # what travels is exactly the trainable tensors
    assert sum(v.numel() for v in update.state.values()) == sum(p.numel() for _, p in m.trainable_parameters())
    changed = [k for k in before if not torch.equal(before[k], update.state[k])]
    assert changed, "no trainable tensor changed"
    for k, v in _frozen(m.model).items():
        assert torch.equal(v, frozen[k]), f"frozen parameter {k} changed"
    codec = get_codec("fp32")
    decoded = codec.decode(codec.encode(update.state))
    assert decoded.keys() == update.state.keys()
    assert all(torch.equal(decoded[k], update.state[k]) for k in decoded)
    m.load_trainable_state(before)  # applying a state restores it exactly
    assert all(torch.equal(before[k], v) for k, v in m.trainable_state().items())


def test_fedprox_term_pulls_towards_global():
    cfg, m, data = _setup("lora", "tiny-bert")
    start = m.trainable_state()

    def drift(mu):
        m.load_trainable_state(start)
        gen = torch.Generator().manual_seed(0)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            out = m.local_train(batch_iterator(data, 4, gen), 3, {wire.PROXIMAL_MU: mu}).state
        return sum(float((out[k] - start[k]).norm()) for k in start)

    assert drift(100.0) < drift(0.0)


def test_load_state_rejects_mismatch():
    _, m, _ = _setup("lora", "tiny-bert")
    state = m.trainable_state()
    key = next(iter(state))
    with pytest.raises(KeyError, match="missing"):
        m.load_trainable_state({k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match="shape"):
        m.load_trainable_state({**state, key: torch.zeros(1)})


def test_qlora_nf4_trains_adapters_only():
    cfg, m, data = _setup("lora", "tiny-llama", quant="nf4")
    before = m.trainable_state()
    update = m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 2, {})
    assert any(not torch.equal(before[k], update.state[k]) for k in before)
    assert all(v.dtype == torch.float32 for v in update.state.values())
    # what travels is exactly the trainable tensors
    assert sum(v.numel() for v in update.state.values()) == sum(p.numel() for _, p in m.trainable_parameters())
