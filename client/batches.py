"""Tokenization, batching and scoring for the two task heads.

classification: ``text -> input_ids``; the model's sequence-classification head gives
    ``(B, C)`` logits and the loss.
causal_lm: an instruction prompt with the answer appended; ``labels`` are ``-100``
    everywhere except the answer tokens, so the loss is on the answer only. A
    prediction is the label whose answer's first token has the highest logit at the
    answer position (first tokens are checked to be distinct).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

PROMPT_HEAD = "Classify the text into one of: {names}.\nText: "
PROMPT_TAIL = "\nAnswer:"


@dataclass
class Encoded:
    """A tokenized dataset, right-padded to a common length."""

    input_ids: torch.Tensor  # (N, T) long
    attention_mask: torch.Tensor  # (N, T) long
    labels: torch.Tensor  # (N,) class ids, or (N, T) token labels for causal_lm
    classes: torch.Tensor  # (N,) class ids
    answer_pos: torch.Tensor | None = None  # (N,) index whose logits predict the answer

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs for rows ``idx``, trimmed to the longest row."""
        mask = self.attention_mask[idx]
        t = int(mask.sum(1).max())
        out = {"input_ids": self.input_ids[idx, :t], "attention_mask": mask[:, :t]}
        out["labels"] = self.labels[idx, :t] if self.labels.dim() == 2 else self.labels[idx]
        return out


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
    bodies = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    n = len(bodies)
    ids = torch.full((n, max_length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n, max_length), -100, dtype=torch.long)
    mask = torch.zeros((n, max_length), dtype=torch.long)
    pos = torch.zeros(n, dtype=torch.long)
    for i, (body, c) in enumerate(zip(bodies, cls.tolist())):
        ans = answers[c] + eos
        room = max_length - len(bos) - len(head) - len(tail) - len(ans)
        if room < 1:
            raise ValueError(f"model.max_length={max_length} is too short for the prompt; use at least {max_length - room + 8}")
        prompt = bos + head + body[:room] + tail
        row = prompt + ans
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(prompt) : len(row)] = torch.tensor(ans)
        pos[i] = len(prompt) - 1  # logits here predict the answer's first token
    return Encoded(ids, mask, labels, cls, pos)


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
        rows, masks = [], []
        for i in idx.tolist():
            p = int(data.answer_pos[i]) + 1  # prompt length
            rows.append(torch.cat([data.input_ids[i, :p], a]))
        t = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), t, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)], mask[j, : len(r)] = r, 1
        logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)  # (B, T, V)
        total = torch.zeros(len(rows))
        for j, i in enumerate(idx.tolist()):
            p = int(data.answer_pos[i]) + 1
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
        out = model(**batch)
        total_loss += float(out.loss) * len(idx)
        if task == "classification":
            pred = out.logits.argmax(-1)  # (B,)
        elif first_tokens is not None:
            logits = out.logits[torch.arange(len(idx)), data.answer_pos[idx]]  # (B, V)
            pred = logits[:, first_tokens].argmax(-1)  # (B,) over the C answers
        else:
            assert answers is not None, "answers are needed when first tokens collide"
            pred = _answer_loglik(model, data, idx, answers).argmax(-1)  # (B,)
        correct += int((pred == data.classes[idx]).sum())
    return {"eval_loss": total_loss / len(data), "eval_accuracy": correct / len(data)}
