"""LoRA at a client's rank: a state with k < r components trains rank k (the rest stays
zero and the reply is k components), and a dense ``base_delta`` adds to its layer."""

import torch

from client.backbones import load_backbone
from client.batches import batch_iterator, encode
from client.config import ClientConfig, ModelConfig, QuantConfig
from client.methods import METHODS, build_method
from client.ranks import BASE_DELTA, is_a, is_b, module_of, truncated

TEXTS = ["the match ended in a draw", "new chip doubles speed", "stocks fell sharply", "talks resume in geneva"] * 4
LABELS = [0, 1, 2, 3] * 4
NAMES = ("sports", "science", "business", "world")


def _lora(quant="none"):
    cfg = ClientConfig(model=ModelConfig(name="tiny-bert", max_length=64), quant=QuantConfig(mode=quant),
                       method=METHODS["lora"].config(r=8, rank_choices=(2, 8)), lr=1e-2, batch_size=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = load_backbone(cfg.model, cfg.quant, num_labels=4)
    m = build_method("lora", backbone, cfg)
    return m, encode(backbone.task, backbone.tokenizer, TEXTS, LABELS, NAMES, 64), backbone


def test_a_truncated_state_trains_that_rank_only():
    m, data, _ = _lora()
    full = m.trainable_state()
    low = {k: truncated(k, v, 2) for k, v in full.items()}
    m.load_trainable_state(low)
    assert m.rank == 2
    update = m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 3, {})
    assert {k: tuple(v.shape) for k, v in update.state.items()} == {k: tuple(v.shape) for k, v in low.items()}
    assert any(not torch.equal(update.state[k], low[k]) for k in low if module_of(k))
    for name, p in m.trainable_parameters():  # components 2.. never moved from zero
        if is_a(name):
            assert not p[2:].any()
        elif is_b(name):
            assert not p[:, 2:].any()
    m.load_trainable_state(full)  # the global rank again
    assert m.rank == 8 and all(torch.equal(full[k], v) for k, v in m.trainable_state().items())


def test_base_delta_is_added_to_the_adapted_layer():
    m, data, backbone = _lora()
    state = m.trainable_state()
    name = next(k for k in state if is_a(k))
    module = module_of(name)
    layer = m.model.get_submodule(module).base_layer
    delta = torch.randn_like(layer.weight) * 0.1
    batch = next(batch_iterator(data, 4, torch.Generator().manual_seed(0)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    m.load_trainable_state({**state, module + BASE_DELTA: delta})
    with torch.no_grad():
        with_delta = m.model(**inputs).logits
        layer.weight += delta  # the same update merged into the weight
        m._deltas[module].zero_()
        merged = m.model(**inputs).logits
    torch.testing.assert_close(with_delta, merged, rtol=1e-5, atol=1e-5)


def test_self_pruning_drops_fading_top_components():
    from strategies import wire

    m, data, _ = _lora()
    state = m.trainable_state()
    for k in state:
        if module_of(k) and not is_a(k):
            state[k] = torch.randn_like(state[k]) * 0.1  # a trained B: the top components carry something
    m.load_trainable_state(state)
    config = {wire.PRUNE_LAMBDA: 10.0, wire.PRUNE_GAMMA: 0.25}
    update = m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 3, config)
    assert m.rank == 6 and update.metrics[wire.LORA_RANK] == 6
    assert all(v.shape[0] == 6 for k, v in update.state.items() if is_a(k))
