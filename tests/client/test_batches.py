"""Prompt encoding puts the loss on the answer only; scoring reads the answer position."""

import pytest
import torch

from client.backbones import load_backbone
from client.batches import answer_first_tokens, answer_token_ids, encode, evaluate
from client.config import ModelConfig, QuantConfig

NAMES = ("sports", "science", "business", "world")


def test_causal_labels_cover_only_the_answer():
    bb = load_backbone(ModelConfig(name="tiny-llama", max_length=160), QuantConfig(), num_labels=4)
    assert bb.task == "causal_lm"
    data = encode("causal_lm", bb.tokenizer, ["a long text " * 40, "short"], [2, 0], NAMES, 160)
    assert data.input_ids.shape == (2, 160)
    for i, c in enumerate([2, 0]):
        ans = bb.tokenizer(f" {NAMES[c]}", add_special_tokens=False)["input_ids"]
        labelled = data.labels[i][data.labels[i] != -100].tolist()
        assert labelled[: len(ans)] == ans  # answer tokens (then eos)
        pos = int(data.answer_pos[i])
        assert data.input_ids[i, pos + 1] == ans[0]  # logits at pos predict the answer
        assert data.input_ids[i, -1] == bb.tokenizer.eos_token_id  # left padded: rows end at T
        assert pos >= 160 - data.keep  # inside the kept logits
    b = data.batch(torch.arange(2))
    assert b["labels"].shape == (2, data.keep) and b["logits_to_keep"] == data.keep
    # a byte-level tokenizer shares the leading space: whole-answer scoring is used
    assert answer_first_tokens(bb.tokenizer, NAMES) is None


def test_evaluate_both_tasks():
    for task in ("classification", "causal_lm"):
        bb = load_backbone(ModelConfig(name="tiny-llama", task=task, max_length=160), QuantConfig(), num_labels=4)
        data = encode(task, bb.tokenizer, ["x y z"] * 5, [0, 1, 2, 3, 0], NAMES, 160)
        first = answer_first_tokens(bb.tokenizer, NAMES) if task == "causal_lm" else None
        answers = answer_token_ids(bb.tokenizer, NAMES) if task == "causal_lm" else None
        out = evaluate(bb.model, data, task, first, batch_size=2, answers=answers)
        assert 0.0 <= out["eval_accuracy"] <= 1.0 and out["eval_loss"] > 0
        assert torch.isfinite(torch.tensor(out["eval_loss"]))


@pytest.mark.parametrize("model, task", [("tiny-llama", "causal_lm"), ("tiny-bert", "causal_lm")])
def test_answer_loss_equals_full_sequence_loss(model, task):
    """Loss from the kept logits equals the model's own loss over the whole sequence."""
    from client.batches import forward_loss

    bb = load_backbone(ModelConfig(name=model, task=task, max_length=160), QuantConfig(), num_labels=4)
    data = encode("causal_lm", bb.tokenizer, ["one text", "another, longer text here"], [1, 3], NAMES, 160)
    b = data.batch(torch.arange(2))
    loss, _ = forward_loss(bb.model, b)
    full_labels = data.labels[:, -b["input_ids"].shape[1]:]
    kwargs = {"position_ids": b["position_ids"]}
    ref = bb.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=full_labels, **kwargs).loss
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
