"""Divide the training split among simulated clients with flwr-datasets partitioners.

The schemes and their settings are the config classes of ``client/partitioners.py``
(each builds its flwr-datasets partitioner); this module attaches the data, checks that
every client gets examples, and caches the partitions. The partitioning of a config is
computed once per process (every Ray worker computes the same one: all randomness comes
from ``seed``) and every client reads its part from that cache.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
import numpy as np
from rich.console import Console
from rich.table import Table

from client.config import ClientConfig, DataConfig, PartitionConfig
from client.data import load_splits
from client.partitioners import LABEL
from strategies.runconfig import ConfigError

log = logging.getLogger(__name__)
MAX_PLOTTED = 2000  # clients drawn one by one in partition.png; more are binned
ROW = "__anther_row"  # the index column a flwr-datasets partitioner's parts are read back by


def build_partitioner(cfg: PartitionConfig, num_clients: int, seed: int, num_examples: int = 0):
    """The flwr-datasets partitioner of ``cfg`` (no dataset attached).

    Raises
    ------
    ConfigError
        Arguments the partitioner rejects, with what to change.
    """
    try:
        return cfg.build(num_clients, seed, num_examples)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"partition.name={cfg.name}: {err}; {_hint(cfg)}") from err


class Partitions(Sequence):
    """Every client's part of the training split, kept as one array of example indices
    grouped by client (``order``, ``offsets``): a population costs two integer arrays,
    not an object per client. ``parts[i]`` builds client i's ``datasets.Dataset`` (the
    rows the partitioner gave it, in its order) on demand; the last 256 are kept."""

    def __init__(self, train: datasets.Dataset, order: np.ndarray, offsets: np.ndarray) -> None:
        self.train, self.order, self.offsets = train, np.asarray(order, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
        self._part = functools.lru_cache(maxsize=256)(self._select)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._part(i % len(self))

    def _select(self, i: int) -> datasets.Dataset:
        return self.train.select(self.order[self.offsets[i]:self.offsets[i + 1]])

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def label_counts(self, num_classes: int) -> np.ndarray:
        """(num_clients, num_classes) label counts, in one vectorized pass."""
        labels = np.asarray(self.train.with_format("arrow")[LABEL], dtype=np.int64)[self.order]
        owner = np.repeat(np.arange(len(self)), self.sizes)
        flat = np.bincount(owner * num_classes + labels, minlength=len(self) * num_classes)
        return flat[: len(self) * num_classes].reshape(len(self), num_classes)


def partition_train_set(client_cfg: ClientConfig) -> Partitions:
    """All ``num_clients`` partitions of the training split (cached per process).

    The cache key is (data config, partition config, num_clients, seed), so configs that
    differ only in, say, the learning rate share one partitioning.

    Raises
    ------
    ConfigError
        More clients than training examples, an impossible scheme, or a client left
        without examples.
    """
    return _partitions(client_cfg.data, client_cfg.partition, client_cfg.num_clients, client_cfg.seed)


def load_client_partition(client_cfg: ClientConfig, partition_id: int) -> datasets.Dataset:
    """The training examples of client ``partition_id`` (0-based) from the cache."""
    if not 0 <= partition_id < client_cfg.num_clients:
        raise ConfigError(f"partition_id: expected 0..{client_cfg.num_clients - 1} (num_clients), got {partition_id}")
    return _partitions(client_cfg.data, client_cfg.partition, client_cfg.num_clients, client_cfg.seed)[partition_id]


@functools.lru_cache(maxsize=4)
def _partitions(data: DataConfig, cfg: PartitionConfig, num_clients: int, seed: int) -> Partitions:
    splits = load_splits(data)
    train = splits.train
    n, num_classes = len(train), splits.num_classes
    if num_clients > n:
        raise ConfigError(
            f"num_clients: expected at most the {n} training examples, got {num_clients}; use fewer "
            f"clients or more data (data.num_examples, data.max_examples, data.test_size)"
        )
    if cfg.name == "pathological" and cfg.classes_per_client > num_classes:
        raise ConfigError(
            f"partition.classes_per_client: expected at most the {num_classes} classes of the data, "
            f"got {cfg.classes_per_client}"
        )
    partitioner = build_partitioner(cfg, num_clients, seed, n)
    if partitioner is None:  # a vectorized scheme: every client's indices at once
        order, offsets = cfg.indices(np.asarray(train.with_format("arrow")[LABEL], dtype=np.int64), num_clients, seed)
        parts = Partitions(train, order, offsets)
    else:
        parts = _flwr_partitions(partitioner, train, cfg, num_clients)
    empty = [int(i) for i in np.flatnonzero(parts.sizes == 0)]
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (f", ... ({len(empty)} in all)" if len(empty) > 20 else "")
        extra = " (a larger partition.alpha, or partition.min_partition_size >= 1 to resample)"
        raise ConfigError(
            f"partition.name={cfg.name} leaves client(s) {shown} without training examples; use fewer "
            f"clients or a less skewed partition{extra if cfg.name.startswith('dirichlet') else ''}"
        )
    unused = n - int(parts.sizes.sum())
    if unused > 0:
        log.warning("partition %s leaves %d of %d training examples unassigned", cfg.name, unused, n)
    return parts


def _flwr_partitions(partitioner: Any, train: datasets.Dataset, cfg: PartitionConfig, num_clients: int) -> Partitions:
    """A flwr-datasets partitioner's parts, as the indices of their rows in ``train``."""
    n = len(train)
    partitioner.dataset = train.add_column(ROW, np.arange(n))  # each part's rows tell their indices
    with warnings.catch_warnings():  # Dirichlet retry chatter; failures are rephrased below
        warnings.filterwarnings("ignore", module=r"flwr_datasets\..*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="pyarrow")  # datasets' sort
        try:
            rows = [np.asarray(partitioner.load_partition(i).with_format("arrow")[ROW], dtype=np.int64)
                    for i in range(num_clients)]
        except (ValueError, ZeroDivisionError) as err:
            raise ConfigError(
                f"partition.name={cfg.name} cannot split {n} training examples among {num_clients} clients "
                f"({err}); {_hint(cfg)}"
            ) from err
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    return Partitions(train, np.concatenate(rows) if rows else np.zeros(0, np.int64), offsets)


def _hint(cfg: PartitionConfig) -> str:
    return cfg.hint.format(**vars(cfg))


# --- statistics and reports ------------------------------------------------------------


def partition_stats(parts: Sequence[datasets.Dataset], num_classes: int) -> np.ndarray:
    """Label counts per client.

    Returns
    -------
    np.ndarray
        (num_clients, num_classes) int64; row i = histogram of client i's labels.
    """
    if isinstance(parts, Partitions):
        return parts.label_counts(num_classes)
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, part in enumerate(parts):
        labels = np.asarray(part.with_format("arrow")[LABEL], dtype=np.int64)  # arrow: 10x faster than numpy format
        counts[i] = np.bincount(labels, minlength=num_classes)[:num_classes]
    return counts


_BLOCKS = " ▁▂▃▄▅▆▇█"


def _spark(row: np.ndarray) -> str:
    """Inline bar: one block character per class, height ~ that class's share."""
    top = row.max()
    if top == 0:
        return " " * len(row)
    return "".join(_BLOCKS[int(np.ceil(8 * c / top))] for c in row)


def print_partition_table(
    counts: np.ndarray, label_names: Sequence[str], console: Console | None = None, max_rows: int = 20
) -> None:
    """Print a compact table: client id, size, label counts (<= 8 classes) and an inline bar.

    With more than ``max_rows`` clients only the first and last ``max_rows // 2`` are
    listed. A closing row sums the labels over all clients; the caption gives the
    min / median / max client size and the mean number of classes present per client.
    """
    counts = np.asarray(counts)
    num_clients, num_classes = counts.shape
    console = console or Console()
    sizes = counts.sum(axis=1)
    per_class = num_classes <= 8
    table = Table(title=f"{int(sizes.sum())} training examples over {num_clients} clients",
                  show_edge=False, pad_edge=False, min_width=56)
    table.add_column("client", justify="right")
    table.add_column("size", justify="right")
    if per_class:
        for name in label_names:
            table.add_column(str(name)[:10], justify="right")
    table.add_column("labels")
    if num_clients > max_rows:
        head = max(max_rows // 2, 1)
        shown = [*range(head), None, *range(num_clients - head, num_clients)]
    else:
        shown = list(range(num_clients))
    for j, i in enumerate(shown):
        last = j == len(shown) - 1
        if i is None:
            table.add_row("…", "…", *(["…"] * num_classes if per_class else []), "")
            continue
        cells = [str(int(c)) for c in counts[i]] if per_class else []
        table.add_row(str(i), str(int(sizes[i])), *cells, _spark(counts[i]), end_section=last)
    totals = counts.sum(axis=0)
    table.add_row("all", str(int(sizes.sum())), *([str(int(c)) for c in totals] if per_class else []), _spark(totals))
    classes_present = (counts > 0).sum(axis=1).mean()
    table.caption = (f"size min/med/max {int(sizes.min())}/{np.median(sizes):g}/{int(sizes.max())}, "
                     f"classes/client {classes_present:.2f} of {num_classes}")
    console.print(table)


def plot_partition(counts: np.ndarray, label_names: Sequence[str], path: str | Path) -> None:
    """Write a stacked bar chart of label counts per client to ``path`` (PNG).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). Beyond
    60 clients each class is drawn as one filled step polygon (touching bars), so 1,000
    clients render fast and read as an area plot; beyond ``MAX_PLOTTED`` clients it plots
    the mean counts of that many bins of consecutive clients (100,000 clients: 100 s ->
    about a second); the legend is capped at 20 classes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    counts = np.asarray(counts)
    num_clients, num_classes = counts.shape
    edges = np.arange(num_clients + 1) - 0.5
    per_bin = -(-num_clients // MAX_PLOTTED)
    if per_bin > 1:  # a large population: the mean label counts of consecutive clients, MAX_PLOTTED bins
        starts = np.arange(0, num_clients, per_bin)
        widths = np.diff(np.append(starts, num_clients))
        counts = np.add.reduceat(counts, starts, axis=0) / widths[:, None]
        edges = np.append(starts, num_clients) - 0.5
    fig = Figure(figsize=(min(4 + 0.4 * num_clients, 14), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = _colormap(num_classes)
    x = np.arange(num_clients)
    many = num_clients > 60
    bottom = np.zeros(len(counts))
    for k in range(num_classes):
        top = bottom + counts[:, k]
        if many:  # one filled step polygon per class instead of num_clients rectangles
            ax.stairs(top, edges, baseline=bottom, fill=True, color=cmap(k),
                      label=str(label_names[k]))
        else:
            ax.bar(x, counts[:, k], bottom=bottom, width=0.8, color=cmap(k), linewidth=0.4, edgecolor="white",
                   label=str(label_names[k]))
        bottom = top
    ax.set_xlim(-0.5 if many else -0.6, num_clients - 0.5 if many else num_clients - 0.4)
    ax.set_ylim(0, max(float(bottom.max()), 1.0) * 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.set_xlabel("client")
    ax.set_ylabel("examples" if per_bin == 1 else f"examples (mean of {per_bin} consecutive clients)")
    ax.set_title(f"Label distribution over {num_clients:,} clients")
    if num_classes <= 20:
        ax.legend(title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.savefig(path, dpi=120)


def _colormap(num_classes: int) -> Callable[[int], tuple]:
    from matplotlib import colormaps

    if num_classes <= 10:
        return colormaps["tab10"]
    if num_classes <= 20:
        return colormaps["tab20"]
    viridis = colormaps["viridis"]
    return lambda k: viridis(k / max(num_classes - 1, 1))
