"""Where a client's local examples come from, and their tokenized cache.

- Deployment: ``node_config["data-path"]`` names the device's own CSV/JSONL/Parquet
  file (same column mapping as ``data``; ``data.label_names`` must be set).
- Simulation: ``node_config["partition-id"]`` selects a partition of the configured
  dataset; the partitioning lives in ``simulation.partition`` and is looked up by
  import path, so client code does not import the simulator.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from client.batches import Encoded, encode
from client.config import ClientConfig
from client.data import load_splits
from strategies import wire
from strategies.plugins import import_string
from strategies.runconfig import ConfigError

PARTITION_FN = "simulation.partition:load_client_partition"


def label_names(cfg: ClientConfig) -> tuple[str, ...]:
    """Class names 0..C-1 (from config, else from the configured dataset)."""
    return tuple(cfg.data.label_names) or load_splits(cfg.data).label_names


def local_dataset(cfg: ClientConfig, node_config: dict[str, Any]):
    """The client's training examples (a datasets.Dataset with text, label)."""
    if "data-path" in node_config:
        if not cfg.data.label_names:
            raise ConfigError("a client with its own data-path needs data.label_names so labels agree across clients")
        own = dataclasses.replace(cfg.data, source="file", path=str(node_config["data-path"]), test_size=1)
        splits = load_splits(own)
        return splits.train
    if wire.PARTITION_ID in node_config:
        return import_string(PARTITION_FN)(cfg, int(node_config[wire.PARTITION_ID]))
    raise ConfigError("node_config has neither 'partition-id' (simulation) nor 'data-path' (deployment)")


@lru_cache(maxsize=256)
def encoded_partition(cfg: ClientConfig, partition_key: tuple, task: str, tokenizer, flip_labels: bool = False) -> Encoded:
    """Tokenized local data, cached per (config, partition, tokenizer); ``flip_labels``
    (a label-flipping attacker) maps label ``y`` to ``C - 1 - y`` first."""
    ds = local_dataset(cfg, dict(partition_key))
    names = label_names(cfg)
    labels = [len(names) - 1 - int(y) for y in ds["label"]] if flip_labels else ds["label"]
    return encode(task, tokenizer, ds["text"], labels, names, cfg.model.max_length)
