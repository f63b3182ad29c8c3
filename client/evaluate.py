"""Central evaluation of the global trainable state on the held-out test split.

The server loads :func:`make_central_evaluate` by import path (``server.evaluator``),
so it never imports client code; it runs in the server process with the same backbone
cache and the same tokenization as the clients.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch

from client.batches import answer_first_tokens, answer_token_ids, encode, evaluate
from client.config import ClientConfig
from client.data import load_splits
from client.data_source import label_names
from client.runtime import get_runtime
from strategies.runconfig import unflatten


def make_central_evaluate(run_config: dict[str, Any]) -> Callable[[int, dict[str, np.ndarray]], dict[str, float]]:
    """Build ``evaluate(round, global_state) -> {"eval_loss", "eval_accuracy"}``."""
    cfg = unflatten(ClientConfig, run_config)
    cfg = dataclasses.replace(cfg, method=cfg.method.evaluation_method())  # e.g. split: the whole LoRA model
    names = label_names(cfg)
    test = load_splits(cfg.data).test
    state: dict[str, Any] = {}

    def _evaluate(server_round: int, global_state: dict[str, np.ndarray]) -> dict[str, float]:
        rt = get_runtime(cfg, len(names))
        if "data" not in state:  # tokenize once, lazily (after the backbone exists)
            state["data"] = encode(rt.backbone.task, rt.backbone.tokenizer, test["text"], test["label"], names, cfg.model.max_length)
            causal = rt.backbone.task == "causal_lm"
            state["first"] = answer_first_tokens(rt.backbone.tokenizer, names) if causal else None
            state["answers"] = answer_token_ids(rt.backbone.tokenizer, names) if causal else None
        rt.method.load_trainable_state({k: torch.from_numpy(np.asarray(v)) for k, v in global_state.items()})
        return evaluate(rt.method.model, state["data"], rt.backbone.task, state["first"], answers=state["answers"])

    return _evaluate
