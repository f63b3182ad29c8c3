"""What the PEFT methods compute, checked against the model they wrap: prefix tuning
with a text-initialised prefix is the model reading that text first; prompt tuning on a
decoder classifier pools the last real token whatever the padding; fresh adapters are
the identity; BitFit trains bias terms only."""

import pytest
import torch

from client.backbones import load_backbone
from client.config import ClientConfig, ModelConfig, QuantConfig
from client.methods import METHODS, build_method

TEXT = "new chip doubles speed of phones"


def _build(method, model="tiny-llama", task="auto", max_length=160, **settings):
    cfg = ClientConfig(model=ModelConfig(name=model, task=task, max_length=max_length), quant=QuantConfig(mode="none"),
                       method=METHODS[method].config(**settings), lr=1e-2, batch_size=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = load_backbone(cfg.model, cfg.quant, num_labels=4)
    return backbone, build_method(method, backbone, cfg)


def test_text_prefix_is_the_model_reading_the_text_first():
    """Causal Llama: keys/values of the init text's P tokens as the prefix, and the input
    at positions P.. reproduce the logits of the text and input concatenated."""
    init = "talks resume in geneva"
    backbone, plain = _build("lora")  # the same frozen weights, LoRA B = 0: the plain model
    tok = backbone.tokenizer
    text_ids = tok(init, add_special_tokens=False, return_tensors="pt")["input_ids"]
    p = text_ids.shape[1]
    _, m = _build("prefix", num_virtual_tokens=p, init="text", init_text=init)
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    with torch.no_grad():
        both = plain.model(input_ids=torch.cat([text_ids, ids], 1)).logits[:, p:]
        prefixed = m.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           position_ids=torch.arange(p, p + n)[None]).logits
    torch.testing.assert_close(prefixed, both, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_prefix_keys_are_visible_to_padding_and_masked_rows_alike(model):
    """A padded row gives the same logits as the row alone (prefix columns always visible)."""
    backbone, m = _build("prefix", model=model, task="classification", num_virtual_tokens=3, init="random")
    enc = backbone.tokenizer([TEXT, TEXT + " and tablets too"], padding="max_length", max_length=80,
                             return_tensors="pt")
    alone = backbone.tokenizer([TEXT], padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        batch = m.model(**enc).logits[0]
        single = m.model(**alone).logits[0]
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task, side", [("classification", "right"), ("causal_lm", "left")])
def test_prompt_tuning_on_a_decoder_does_not_depend_on_padding(task, side):
    """The classifier pools the last real token, and the prompt sits right before the
    text (positions count real tokens) however long the padding."""
    backbone, m = _build("prompt", task=task, num_virtual_tokens=4, init="vocab")
    backbone.tokenizer.padding_side = side
    logits = []
    for length in (48, 96):
        enc = backbone.tokenizer([TEXT], padding="max_length", max_length=length, return_tensors="pt")
        with torch.no_grad():
            out = m.model(**enc).logits
        logits.append(out if task == "classification" else out[:, -5:])
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_fresh_adapters_are_the_identity(model, placement):
    backbone, plain = _build("lora", model=model, task="classification")
    _, m = _build("adapter", model=model, task="classification", adapter_dim=4, adapter_layers=1, placement=placement)
    names = [n for n, _ in m.trainable_parameters()]
    per_site = 4  # down.weight, down.bias, up.weight, up.bias
    sites = 1 if placement == "pfeiffer" else 2
    depth = len([n for n in names if n.endswith("up.bias")])
    assert depth == sites and len([n for n in names if "adapter" in n]) == per_site * sites
    assert all(".1." in n for n in names if "adapter" in n)  # the top block only
    enc = backbone.tokenizer([TEXT], padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(m.model(**enc).logits, plain.model(**enc).logits)


def test_bitfit_trains_only_bias_terms_and_the_head():
    backbone, m = _build("bitfit", model="tiny-bert", task="classification")
    names = [n for n, _ in m.trainable_parameters()]
    assert names and all(n.endswith(".bias") or n.startswith("classifier.") for n in names)
    assert any(n.startswith("classifier.weight") for n in names)
    assert sum(p.numel() for _, p in m.trainable_parameters()) == sum(v.numel() for v in m.trainable_state().values())


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_head_trains_only_the_classification_head(model):
    backbone, m = _build("head", model=model, task="classification")
    names = [n for n, _ in m.trainable_parameters()]
    assert names and all(n.split(".")[0] in backbone.head_modules for n in names)
    assert sum(p.numel() for _, p in m.trainable_parameters()) == sum(v.numel() for v in m.trainable_state().values())
