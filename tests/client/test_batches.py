"""Prompt encoding puts the loss on the answer only; scoring reads the answer position."""

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
