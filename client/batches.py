"""Tokenization, batching and scoring for the two task heads.

classification: ``text -> input_ids``; the model's sequence-classification head gives
    ``(B, C)`` logits and the loss.
causal_lm: an instruction prompt with the answer appended; ``labels`` are ``-100``
    everywhere except the answer tokens, so the loss is on the answer only. A
    prediction is the label whose answer's first token has the highest logit at the
    answer position (first tokens are checked to be distinct).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

PROMPT_HEAD = "Classify the text into one of: {names}.\nText: "
PROMPT_TAIL = "\nAnswer:"


@dataclass
class Encoded:
    """A tokenized dataset, padded to a common length.

    classification rows are right-padded. causal_lm rows are left-padded so that every
    answer ends at the last position: the loss needs logits for only the last
    ``keep`` positions (``logits_to_keep``), never the full ``(B, T, V)`` tensor.
    """

    input_ids: torch.Tensor  # (N, T) long
    attention_mask: torch.Tensor  # (N, T) long
    labels: torch.Tensor  # (N,) class ids, or (N, T) token labels for causal_lm
    classes: torch.Tensor  # (N,) class ids
    answer_pos: torch.Tensor | None = None  # (N,) index whose logits predict the answer
    prompt_start: torch.Tensor | None = None  # (N,) first non-pad index (causal_lm)
    keep: int = 0  # causal_lm: trailing positions whose logits the loss needs

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs for rows ``idx``, trimmed to the longest row."""
        mask = self.attention_mask[idx]
        t = int(mask.sum(1).max())
        if self.keep == 0:  # right-padded classification
            return {"input_ids": self.input_ids[idx, :t], "attention_mask": mask[:, :t], "labels": self.labels[idx]}
        mask = mask[:, -t:]
        return {
            "input_ids": self.input_ids[idx, -t:],
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),  # (B, t) left padding
            "labels": self.labels[idx, -self.keep :],  # (B, keep): answer + eos, rest -100
            "logits_to_keep": self.keep,
        }


def _accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def forward_loss(model, batch: dict[str, torch.Tensor]):
    """``(loss, logits)`` for a batch from :meth:`Encoded.batch`.

    causal_lm: logits for the last ``keep`` positions only, ``(B, keep, V)``, and the
    mean cross-entropy of the answer tokens: ``logits[:, t]`` predicts ``labels[:, t+1]``.
    """
    if "logits_to_keep" not in batch:
        out = model(**batch)
        return out.loss, out.logits
    keep = int(batch["logits_to_keep"])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "logits_to_keep")}
    if _accepts(model, "logits_to_keep"):
        inputs["logits_to_keep"] = keep
    if not _accepts(model, "position_ids"):
        inputs.pop("position_ids")
    logits = model(**inputs).logits[:, -keep:]  # (B, keep, V)
    labels = batch["labels"]  # (B, keep)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    return loss, logits


def answer_texts(label_names: Sequence[str]) -> list[str]:
    return [f" {name}" for name in label_names]


def answer_first_tokens(tokenizer, label_names: Sequence[str]) -> torch.Tensor | None:
    """(C,) first token of each answer, or ``None`` if two answers share it (then
    :func:`evaluate` scores whole answers by their log-likelihood instead)."""
    firsts = [tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answer_texts(label_names)]
    return torch.tensor(firsts) if len(set(firsts)) == len(firsts) else None


def answer_token_ids(tokenizer, label_names: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer (without eos)."""
    return [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answer_texts(label_names)]


def encode(task: str, tokenizer, texts: Sequence[str], classes: Sequence[int], label_names: Sequence[str], max_length: int) -> Encoded:
    """Tokenize a dataset for ``task`` ("classification" | "causal_lm")."""
    cls = torch.tensor(list(classes), dtype=torch.long)
    if task == "classification":
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
        return Encoded(enc["input_ids"], enc["attention_mask"], cls, cls)
    return _encode_causal(tokenizer, texts, cls, label_names, max_length)


def _encode_causal(tokenizer, texts, cls: torch.Tensor, label_names, max_length: int) -> Encoded:
    head = tokenizer(PROMPT_HEAD.format(names=", ".join(label_names)), add_special_tokens=False)["input_ids"]
    tail = tokenizer(PROMPT_TAIL, add_special_tokens=False)["input_ids"]
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answer_texts(label_names)]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    keep = max(len(a) for a in answers) + len(eos) + 1  # answer + eos, and the position before
    bodies = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    n, T = len(bodies), max_length
    ids = torch.full((n, T), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n, T), -100, dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    pos = torch.zeros(n, dtype=torch.long)
    start = torch.zeros(n, dtype=torch.long)
    for i, (body, c) in enumerate(zip(bodies, cls.tolist())):
        ans = answers[c] + eos
        room = T - len(bos) - len(head) - len(tail) - max(keep, len(ans) + 1)
        if room < 1:
            raise ValueError(f"model.max_length={T} is too short for the prompt; use at least {T - room + 8}")
        prompt = bos + head + body[:room] + tail
        row = prompt + ans
        s0 = T - len(row)  # left padding: the row ends at T
        ids[i, s0:] = torch.tensor(row)
        mask[i, s0:] = 1
        labels[i, T - len(ans) :] = torch.tensor(ans)
        pos[i] = T - len(ans) - 1  # logits here predict the answer's first token
        start[i] = s0
    return Encoded(ids, mask, labels, cls, pos, start, keep)


def batch_iterator(data: Encoded, batch_size: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches (a new permutation every pass)."""
    n = len(data)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield data.batch(perm[start : start + batch_size])


def _answer_loglik(model, data: Encoded, idx: torch.Tensor, answers: list[list[int]]) -> torch.Tensor:
    """(B, C) summed log-probability of each answer after each row's prompt."""
    scores = []
    for ans in answers:
        a = torch.tensor(ans)
        rows = []
        for i in idx.tolist():
            rows.append(torch.cat([data.input_ids[i, int(data.prompt_start[i]) : int(data.answer_pos[i]) + 1], a]))
        t = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), t, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)], mask[j, : len(r)] = r, 1
        logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)  # (B, T, V)
        total = torch.zeros(len(rows))
        for j, i in enumerate(idx.tolist()):
            p = int(data.answer_pos[i]) + 1 - int(data.prompt_start[i])  # prompt length
            pos = torch.arange(p - 1, p - 1 + len(ans))  # logits at pos predict token pos+1
            total[j] = logp[j, pos, a].sum()
        scores.append(total)
    return torch.stack(scores, 1)


@torch.inference_mode()
def evaluate(
    model, data: Encoded, task: str, first_tokens: torch.Tensor | None, batch_size: int = 64,
    answers: list[list[int]] | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``data``.

    For causal LMs the prediction is the answer whose first token scores highest at the
    answer position, or (``first_tokens is None``) whose whole answer is most likely.
    """
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        batch = data.batch(idx)
        loss, logits = forward_loss(model, batch)
        total_loss += float(loss) * len(idx)
        if task == "classification":
            pred = logits.argmax(-1)  # (B,)
        elif first_tokens is not None:
            rel = data.answer_pos[idx] - (data.input_ids.shape[1] - data.keep)  # index among kept logits
            logits = logits[torch.arange(len(idx)), rel]  # (B, V)
            pred = logits[:, first_tokens].argmax(-1)  # (B,) over the C answers
        else:
            assert answers is not None, "answers are needed when first tokens collide"
            pred = _answer_loglik(model, data, idx, answers).argmax(-1)  # (B,)
        correct += int((pred == data.classes[idx]).sum())
    return {"eval_loss": total_loss / len(data), "eval_accuracy": correct / len(data)}
