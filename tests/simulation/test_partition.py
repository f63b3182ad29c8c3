"""Partitioning of the training split with flwr-datasets partitioners."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    InnerDirichletPartitioner,
    ExponentialPartitioner,
    IidPartitioner,
    LinearPartitioner,
    PathologicalPartitioner,
    ShardPartitioner,
    SquarePartitioner,
)
from rich.console import Console

from client.config import ClientConfig, DataConfig, PartitionConfig
from client.partitioners import (
    PARTITIONERS,
    DirichletClientsConfig,
    DirichletConfig,
    IidConfig,
    PathologicalConfig,
    ShardConfig,
    SizeConfig,
)
from client.data import load_splits
from simulation import partition
from simulation.partition import (
    build_partitioner,
    load_client_partition,
    partition_stats,
    partition_train_set,
    plot_partition,
    print_partition_table,
)
from strategies.runconfig import ConfigError

DATA = DataConfig(num_examples=1200, test_size=200)  # 1,000 training examples, 4 classes


def _cfg(name: str = "iid", num_clients: int = 10, seed: int = 0, **kw) -> ClientConfig:
    return ClientConfig(data=DATA, partition=PARTITIONERS[name].config(**kw), num_clients=num_clients, seed=seed)


def _stats(cc: ClientConfig) -> np.ndarray:
    return partition_stats(partition_train_set(cc), 4)


def _examples(ds) -> Counter:
    return Counter(zip(ds["text"], ds["label"]))


def _max_class_fraction(counts: np.ndarray) -> float:
    """Mean over clients of the share of the client's most frequent label."""
    return float((counts.max(1) / counts.sum(1)).mean())


def test_registry_matches_config_choices():
    assert set(PARTITIONERS) == {"iid", "dirichlet", "dirichlet_clients", "pathological", "shard", "size", "dirichlet_scale"}
    for name in PARTITIONERS:
        plugin = PARTITIONERS[name]
        assert issubclass(plugin.config, PartitionConfig) and plugin.config().name == name
    assert not hasattr(partition, "PARTITIONERS")  # one registry: client.partitioners
    with pytest.raises(ConfigError, match="dirichlet"):
        PARTITIONERS["nope"]


@pytest.mark.parametrize(("cfg", "cls"), [
    (IidConfig(), IidPartitioner),
    (DirichletConfig(), InnerDirichletPartitioner),
    (DirichletClientsConfig(), DirichletPartitioner),
    (PathologicalConfig(), PathologicalPartitioner),
    (ShardConfig(), ShardPartitioner),
    (SizeConfig(size_distribution="linear"), LinearPartitioner),
    (SizeConfig(size_distribution="square"), SquarePartitioner),
    (SizeConfig(size_distribution="exponential"), ExponentialPartitioner),
])
def test_build_partitioner(cfg, cls):
    assert type(build_partitioner(cfg, 5, seed=0, num_examples=100)) is cls


@pytest.mark.parametrize("cc", [
    _cfg("iid"), _cfg("dirichlet", alpha=0.3), _cfg("dirichlet_clients", alpha=0.3), _cfg("size"),
    _cfg("size", size_distribution="square"),
], ids=["iid", "dirichlet", "dirichlet-clients", "size-linear", "size-square"])
def test_partitions_cover_training_set_without_overlap(cc):
    parts = partition_train_set(cc)
    assert len(parts) == cc.num_clients
    union = Counter()
    for part in parts:
        union += _examples(part)
    assert union == _examples(load_splits(cc.data).train)


def test_shard_partitions_do_not_overlap():
    parts = partition_train_set(_cfg("shard", shards_per_client=2))
    union = sum((_examples(p) for p in parts), Counter())
    assert sum(len(p) for p in parts) == sum(union.values())
    assert not union - _examples(load_splits(DATA).train)


def test_dirichlet_small_alpha_skews_labels_more_than_iid():
    iid = _max_class_fraction(_stats(_cfg("iid")))
    skewed = _max_class_fraction(_stats(_cfg("dirichlet", alpha=0.1)))
    assert iid < 0.35  # ~1/4 for 4 balanced classes
    assert skewed > 0.6 and skewed > iid + 0.3


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_at_most_k_classes(k):
    counts = _stats(_cfg("pathological", classes_per_client=k))
    assert ((counts > 0).sum(1) <= k).all()
    assert ((counts > 0).sum(1) == k).all()  # balanced data: every assigned class has examples


def test_same_seed_same_partitions_other_seed_differs():
    a = _stats(_cfg("dirichlet", alpha=0.5, seed=1))
    partition._partitions.cache_clear()  # recompute, not a cache hit
    b = _stats(_cfg("dirichlet", alpha=0.5, seed=1))
    c = _stats(_cfg("dirichlet", alpha=0.5, seed=2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_partitions_are_cached_and_shared_across_unrelated_fields():
    cc = _cfg("dirichlet", alpha=0.5)
    first = partition_train_set(cc)
    same = partition_train_set(ClientConfig(data=cc.data, partition=cc.partition, num_clients=10, lr=0.5))
    assert all(a is b for a, b in zip(first, same))
    assert load_client_partition(cc, 3) is first[3]
    with pytest.raises(ConfigError, match="partition_id"):
        load_client_partition(cc, 10)


# --- errors ----------------------------------------------------------------------------


def test_more_clients_than_examples():
    with pytest.raises(ConfigError, match="num_clients: expected at most the 1000 training examples, got 1001"):
        partition_train_set(_cfg("iid", num_clients=1001))


def test_pathological_more_classes_than_data():
    with pytest.raises(ConfigError, match="classes_per_client: expected at most the 4 classes"):
        partition_train_set(_cfg("pathological", classes_per_client=5))


def test_dirichlet_unsatisfiable_min_partition_size_is_rephrased():
    with pytest.raises(ConfigError, match=r"larger partition.alpha.*smaller partition.min_partition_size"):
        partition_train_set(_cfg("dirichlet_clients", num_clients=20, alpha=0.05, min_partition_size=40))


def test_empty_clients_are_named():
    with pytest.raises(ConfigError, match=r"leaves client\(s\) \d+(, \d+)*.* without training examples.*alpha"):
        partition_train_set(_cfg("dirichlet_clients", num_clients=50, alpha=0.01, min_partition_size=0))


def test_dirichlet_label_skew_is_feasible_at_100_clients():
    parts = partition_train_set(_cfg("dirichlet", num_clients=100, alpha=0.1))
    assert len(parts) == 100 and min(len(p) for p in parts) >= 1


def test_impossible_shard_and_size_are_config_errors():
    with pytest.raises(ConfigError, match="shard_size"):
        partition_train_set(_cfg("shard", num_clients=10, shard_size=200))
    with pytest.raises(ConfigError, match="size_distribution"):
        partition_train_set(_cfg("size", num_clients=200, size_distribution="exponential"))


# --- reports -----------------------------------------------------------------------------


def test_partition_stats_counts_labels():
    counts = _stats(_cfg("iid", num_clients=4))
    assert counts.shape == (4, 4) and counts.dtype == np.int64
    assert counts.sum() == 1000
    assert counts.sum(0).tolist() == np.bincount(load_splits(DATA).train["label"], minlength=4).tolist()


def test_table_prints_small_and_truncated():
    names = load_splits(DATA).label_names
    console = Console(record=True, width=120)
    print_partition_table(_stats(_cfg("iid", num_clients=3)), names, console=console)
    small = console.export_text()
    assert "sports" in small and "client" in small and "min/med/max 333/333/334" in small
    console = Console(record=True, width=120)
    counts = np.random.default_rng(0).integers(0, 9, size=(1000, 4))
    print_partition_table(counts, names, console=console, max_rows=6)
    big = console.export_text()
    assert "…" in big and "999" in big and "\n   500 " not in big
    assert "classes/client" in big


@pytest.mark.parametrize("num_clients", [3, 1000])
def test_plot_writes_png(tmp_path, num_clients):
    counts = np.random.default_rng(0).integers(0, 20, size=(num_clients, 4))
    path = tmp_path / "partition.png"
    plot_partition(counts, ("a", "b", "c", "d"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dirichlet_scale_uses_every_example_once_with_equal_sizes_and_skewed_mixes():
    import numpy as np

    from client.partitioners import dirichlet_scale_indices

    labels = np.random.default_rng(1).integers(0, 4, 40_000)
    order, offsets = dirichlet_scale_indices(labels, 10_000, 0.1, seed=0)
    assert sorted(order.tolist()) == list(range(40_000)) and set(np.diff(offsets).tolist()) == {4}
    again, _ = dirichlet_scale_indices(labels, 10_000, 0.1, seed=0)
    assert (order == again).all()  # seeded
    skewed = np.array([len(set(labels[order[a:b]].tolist())) for a, b in zip(offsets[:-1], offsets[1:])]).mean()
    flat, _ = dirichlet_scale_indices(labels, 10_000, 100.0, seed=0)
    mixed = np.array([len(set(labels[flat[a:b]].tolist())) for a, b in zip(offsets[:-1], offsets[1:])]).mean()
    assert skewed < 1.6 < 2.5 < mixed  # alpha 0.1: about one class per client; alpha 100: most of 4


def test_partitions_are_index_arrays_with_vectorized_counts():
    cc = _cfg("dirichlet_scale", num_clients=50, alpha=0.5)
    parts = partition_train_set(cc)
    assert len(parts) == 50 and parts.order.dtype.kind == "i" and parts.sizes.sum() == len(parts.train)
    counts = partition_stats(parts, 4)
    assert (counts[7] == np.bincount(np.asarray(parts[7]["label"]), minlength=4)).all()
