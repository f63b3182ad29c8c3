"""How the training split is divided among ``num_clients``: one config class per scheme.

Each scheme is a frozen config dataclass registered in :data:`PARTITIONERS` that builds
its flwr-datasets partitioner (imported lazily: configs stay light). The simulator
(``simulation/partition.py``) attaches the data and caches the partitions; a client
only carries its config to find its part. Schemes:

- iid: ``IidPartitioner``, equal contiguous shards of the shuffled split;
- dirichlet: ``InnerDirichletPartitioner``, equal-size clients whose label mix is
  ``q_i ~ Dir(alpha * 1_C)`` (Hsu et al. 2019); small alpha -> one or two dominant
  classes per client; always feasible, also for 100 clients at alpha=0.1;
- dirichlet_clients: ``DirichletPartitioner``, per class ``p_k ~ Dir(alpha * 1_K)`` over
  the K clients (Yurochkin et al. 2019); skews sizes too, and needs every client to
  reach ``min_partition_size`` (small alpha with many clients may be infeasible);
- pathological: ``PathologicalPartitioner``, each client holds ``classes_per_client``
  classes (the first ``client_id mod C``, the rest drawn with ``seed``);
- shard: ``ShardPartitioner``, sort by label, cut shards, deal ``shards_per_client``
  shards to each client (McMahan et al. 2017, FedAvg);
- size: ``Linear/Square/ExponentialPartitioner``, client i gets a share ~ f(i + 1);
- dirichlet_scale: the model of ``dirichlet`` (equal sizes, label mix ``q_i ~ Dir(alpha
  * 1_C)``) in O(clients x classes) numpy, for populations of 100,000 clients and more,
  where flwr-datasets' sequential sampler takes minutes per thousand clients (201 s for
  10,000 here). Each client draws its mix and its class counts (multinomial); where a
  class is asked for more than it has, random units of it are dropped and those clients
  are filled with examples of the classes left over, so every example is used once and
  sizes stay equal. Not the same draw as ``dirichlet`` for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from client.config import PartitionConfig
from strategies.plugins import Registry
from strategies.runconfig import check, check_choice

LABEL = "label"


def _equal_sizes(num_examples: int, num_clients: int) -> list[int]:
    base, extra = divmod(num_examples, num_clients)
    return [base + (1 if i < extra else 0) for i in range(num_clients)]


@dataclass(frozen=True)
class IidConfig(PartitionConfig):
    name: str = "iid"
    hint: ClassVar[str] = "use fewer clients (num_clients)"

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        from flwr_datasets.partitioner import IidPartitioner

        return IidPartitioner(num_partitions=num_clients)


@dataclass(frozen=True)
class DirichletConfig(PartitionConfig):
    """alpha: concentration of each client's label mix (smaller: more skewed)."""

    name: str = "dirichlet"
    alpha: float = 0.5
    hint: ClassVar[str] = "use a larger partition.alpha (now {alpha}) or fewer clients"

    def __post_init__(self) -> None:
        check(self.alpha > 0, "partition.alpha", "a number > 0", self.alpha)

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        from flwr_datasets.partitioner import InnerDirichletPartitioner

        return InnerDirichletPartitioner(
            partition_sizes=_equal_sizes(num_examples, num_clients), partition_by=LABEL, alpha=self.alpha, seed=seed
        )


@dataclass(frozen=True)
class DirichletClientsConfig(PartitionConfig):
    """alpha: concentration of each class over clients; min_partition_size: resample
    until every client has this many; self_balancing: flwr-datasets' balancing."""

    name: str = "dirichlet_clients"
    alpha: float = 0.5
    min_partition_size: int = 1
    self_balancing: bool = False
    hint: ClassVar[str] = (
        "use a larger partition.alpha (now {alpha}), a smaller partition.min_partition_size "
        "(now {min_partition_size}) or fewer clients"
    )

    def __post_init__(self) -> None:
        check(self.alpha > 0, "partition.alpha", "a number > 0", self.alpha)
        check(self.min_partition_size >= 0, "partition.min_partition_size", "an integer >= 0", self.min_partition_size)

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        from flwr_datasets.partitioner import DirichletPartitioner

        return DirichletPartitioner(
            num_partitions=num_clients, partition_by=LABEL, alpha=self.alpha,
            min_partition_size=self.min_partition_size, self_balancing=self.self_balancing, seed=seed,
        )


@dataclass(frozen=True)
class PathologicalConfig(PartitionConfig):
    """classes_per_client: how many classes each client holds."""

    name: str = "pathological"
    classes_per_client: int = 2
    hint: ClassVar[str] = "use a smaller partition.classes_per_client (now {classes_per_client}) or fewer clients"

    def __post_init__(self) -> None:
        check(self.classes_per_client >= 1, "partition.classes_per_client", "an integer >= 1", self.classes_per_client)

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        from flwr_datasets.partitioner import PathologicalPartitioner

        return PathologicalPartitioner(
            num_partitions=num_clients, partition_by=LABEL, num_classes_per_partition=self.classes_per_client,
            class_assignment_mode="first-deterministic", seed=seed,
        )


@dataclass(frozen=True)
class ShardConfig(PartitionConfig):
    """shards_per_client shards of shard_size examples (None: as large as possible)."""

    name: str = "shard"
    shards_per_client: int = 2
    shard_size: int | None = None
    hint: ClassVar[str] = (
        "use a smaller partition.shard_size (now {shard_size}), fewer partition.shards_per_client "
        "(now {shards_per_client}) or fewer clients"
    )

    def __post_init__(self) -> None:
        check(self.shards_per_client >= 1, "partition.shards_per_client", "an integer >= 1", self.shards_per_client)

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        from flwr_datasets.partitioner import ShardPartitioner

        return ShardPartitioner(
            num_partitions=num_clients, partition_by=LABEL, num_shards_per_partition=self.shards_per_client,
            shard_size=self.shard_size, seed=seed,
        )


SIZE_DISTRIBUTIONS = ("linear", "square", "exponential")


@dataclass(frozen=True)
class SizeConfig(PartitionConfig):
    """size_distribution: client i's share ~ (i + 1), (i + 1)^2 or exp(i + 1)."""

    name: str = "size"
    size_distribution: str = "linear"
    hint: ClassVar[str] = "use fewer clients or partition.size_distribution=linear (now {size_distribution})"

    def __post_init__(self) -> None:
        check_choice("partition.size_distribution", self.size_distribution, SIZE_DISTRIBUTIONS)

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        from flwr_datasets import partitioner as p

        cls = {"linear": p.LinearPartitioner, "square": p.SquarePartitioner, "exponential": p.ExponentialPartitioner}
        return cls[self.size_distribution](num_partitions=num_clients)


def dirichlet_scale_indices(labels: Any, num_clients: int, alpha: float, seed: int) -> tuple[Any, Any]:
    """(order, offsets): client i holds examples ``order[offsets[i]:offsets[i + 1]]``
    (see ``dirichlet_scale`` in the module docstring). ``labels``: (n,) class ids."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    num_classes = int(labels.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    sizes = np.asarray(_equal_sizes(n, num_clients), dtype=np.int64)
    mix = rng.dirichlet(np.full(num_classes, alpha), size=num_clients)
    take = rng.multinomial(sizes, mix)  # (clients, classes)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    for c in range(num_classes):
        excess = int(take[:, c].sum()) - len(by_class[c])
        if excess > 0:  # drop random units of class c
            units = np.repeat(np.arange(num_clients), take[:, c])
            np.subtract.at(take[:, c], units[rng.choice(len(units), excess, replace=False)], 1)
    used = take.sum(axis=0)
    leftover = rng.permutation(np.concatenate([by_class[c][used[c]:] for c in range(num_classes)]))
    owners = [np.repeat(np.arange(num_clients), take[:, c]) for c in range(num_classes)]
    owners.append(np.repeat(np.arange(num_clients), sizes - take.sum(axis=1)))
    examples = [by_class[c][:used[c]] for c in range(num_classes)] + [leftover]
    owner = np.concatenate(owners)
    order = np.concatenate(examples)[np.argsort(owner, kind="stable")]
    return order, np.concatenate([[0], np.cumsum(sizes)])


@dataclass(frozen=True)
class DirichletScaleConfig(DirichletConfig):
    """alpha: concentration of each client's label mix (as ``dirichlet``), vectorized."""

    name: str = "dirichlet_scale"
    hint: ClassVar[str] = "use fewer clients (num_clients) or more data"

    def build(self, num_clients: int, seed: int, num_examples: int) -> Any:
        return None  # no flwr-datasets partitioner: :meth:`indices` gives every client's examples

    def indices(self, labels: Any, num_clients: int, seed: int) -> tuple[Any, Any]:
        return dirichlet_scale_indices(labels, num_clients, self.alpha, seed)


PARTITIONERS = Registry("partition", PartitionConfig)
for _cfg in (IidConfig, DirichletConfig, DirichletClientsConfig, PathologicalConfig, ShardConfig, SizeConfig,
             DirichletScaleConfig):
    PARTITIONERS.add(_cfg.name, _cfg, _cfg)
