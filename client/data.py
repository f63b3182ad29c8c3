"""Load a text-classification dataset and split it into train and test.

Three sources go through the same path (``DataConfig.source``):

- ``generated``: the built-in offline dataset (``client.data_generated``);
- ``file``: CSV / TSV / JSONL / JSON / Parquet read with pandas;
- ``hf``: ``datasets.load_dataset(hf_name, split=hf_split)`` (needs the hub or its cache).

Every source yields texts and labels in 0..C-1 (sorted order of the original label
values). The rows are then shuffled with ``numpy.random.default_rng(cfg.seed)``,
capped at ``max_examples``, and the last ``test_size`` rows become the test split. For
AG News (7,600 rows, test_size=1600) this is the agreed 6,000 / 1,600 split.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from client import data_generated
from client.config import DATA_SOURCES, DataConfig
from strategies.runconfig import ConfigError

log = logging.getLogger(__name__)

FEATURES = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})

_READERS = {
    ".csv": lambda p: pd.read_csv(p),
    ".tsv": lambda p: pd.read_csv(p, sep="\t"),
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".ndjson": lambda p: pd.read_json(p, lines=True),
    ".json": lambda p: _read_json(p),
    ".parquet": lambda p: pd.read_parquet(p),
    ".pq": lambda p: pd.read_parquet(p),
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zip", ".zst")


@dataclass(frozen=True)
class Splits:
    """Train and held-out test split of one dataset.

    train, test: ``datasets.Dataset`` with columns ``text`` (str) and ``label``
        (int64 in 0..C-1).
    label_names: C human-readable names, index = label.
    """

    train: datasets.Dataset
    test: datasets.Dataset
    label_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.label_names)


@functools.lru_cache(maxsize=8)
def load_splits(cfg: DataConfig) -> Splits:
    """Load the dataset described by ``cfg`` and split it (cached per process).

    Parameters
    ----------
    cfg : DataConfig
        Frozen data config; equal configs share one cached result.

    Returns
    -------
    Splits
        Shuffled train/test splits and the label names.

    Raises
    ------
    ConfigError
        Missing or unreadable file, unknown column, empty data, fewer than two
        classes, wrong number of ``label_names``, ``test_size`` too large, or a
        Hugging Face dataset that cannot be loaded.
    """
    loader = _SOURCES[cfg.source]
    texts, labels, names = loader(cfg)
    if cfg.label_names:
        if len(cfg.label_names) != len(names):
            raise ConfigError(
                f"data.label_names: expected {len(names)} names (one per class, for labels "
                f"{list(names)} in this order), got {len(cfg.label_names)}: {list(cfg.label_names)}"
            )
        names = tuple(str(n) for n in cfg.label_names)
    train_idx, test_idx = split_indices(len(texts), cfg)
    train, test = _to_dataset(texts, labels, train_idx), _to_dataset(texts, labels, test_idx)
    return Splits(train=train, test=test, label_names=names)


def split_indices(num_rows: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle, cap at ``max_examples``, last ``test_size`` rows are the test split.

    Returns
    -------
    train_idx, test_idx : np.ndarray
        Row indices into the loaded data (disjoint).
    """
    perm = np.random.default_rng(cfg.seed).permutation(num_rows)
    if cfg.max_examples > 0:
        perm = perm[: cfg.max_examples]
    if cfg.test_size >= len(perm):
        capped = f" (data.max_examples={cfg.max_examples})" if cfg.max_examples > 0 else ""
        raise ConfigError(
            f"data.test_size: expected fewer than the {len(perm)} examples available{capped} "
            f"so that some remain for training, got {cfg.test_size}"
        )
    return perm[: -cfg.test_size], perm[-cfg.test_size :]


def _to_dataset(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"text": [texts[i] for i in idx], "label": labels[idx].tolist()}, features=FEATURES
    )


# --- sources ---------------------------------------------------------------------------


def _load_generated(cfg: DataConfig) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    if cfg.num_examples < cfg.num_classes:
        raise ConfigError(
            f"data.num_examples: expected at least data.num_classes={cfg.num_classes}, got {cfg.num_examples}"
        )
    return data_generated.generate(cfg.num_examples, cfg.num_classes, cfg.seed)


def _load_file(cfg: DataConfig) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    path = Path(cfg.path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"data.path: file not found: {path} (given as {cfg.path!r})")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in _READERS:
        raise ConfigError(
            f"data.path: unknown file type {ext or '(none)'!r} for {path}; "
            f"expected one of {', '.join(sorted(_READERS))}"
        )
    try:
        frame = _READERS[ext](path)
    except pd.errors.EmptyDataError as err:
        raise ConfigError(f"data.path: {path} is empty") from err
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ConfigError(f"data.path: could not read {path} as {ext[1:]}: {err}") from err
    return _from_frame(frame, cfg, where=str(path))


def _read_json(path: Path) -> pd.DataFrame:
    try:
        return pd.read_json(path)
    except ValueError:
        return pd.read_json(path, lines=True)


def _load_hf(cfg: DataConfig) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    try:
        ds = datasets.load_dataset(cfg.hf_name, split=cfg.hf_split)
    except Exception as err:  # offline, unknown name, unknown split: all the user's to fix
        raise ConfigError(
            f"data.hf_name={cfg.hf_name!r} (split {cfg.hf_split!r}) could not be loaded: "
            f"{type(err).__name__}: {err}. data.source=hf needs the Hugging Face hub (or its "
            f"local cache); offline, export the data to CSV/JSONL/Parquet and use "
            f"data.source=file data.path=<file>"
        ) from err
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDataset)):
        raise ConfigError(f"data.hf_split: expected a single split name, got {cfg.hf_split!r}")
    feature = ds.features.get(cfg.label_column)
    class_names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    return _from_frame(ds.to_pandas(), cfg, where=f"{cfg.hf_name}[{cfg.hf_split}]", class_names=class_names)


_SOURCES = {"generated": _load_generated, "file": _load_file, "hf": _load_hf}
assert tuple(_SOURCES) == DATA_SOURCES, "a data source needs a loader here and a name in client.config"


# --- column mapping --------------------------------------------------------------------


def _from_frame(
    frame: pd.DataFrame, cfg: DataConfig, where: str, class_names: list[str] | None = None
) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Map a table to (texts, labels 0..C-1, label names) following ``cfg``'s columns."""
    if len(frame) == 0:
        raise ConfigError(f"data: {where} has no rows")
    wanted = [*cfg.text_columns, cfg.label_column]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        keys = ", ".join("data.label_column" if c == cfg.label_column else "data.text_columns" for c in missing)
        raise ConfigError(
            f"{keys}: column(s) {missing} not in {where}; its columns are {[str(c) for c in frame.columns]}"
        )
    raw = frame[cfg.label_column]
    keep = raw.notna().to_numpy()
    if not keep.all():
        log.warning("data: dropping %d of %d rows of %s without a label in column %r",
                    int((~keep).sum()), len(frame), where, cfg.label_column)
        frame, raw = frame[keep], raw[keep]
    values = [_plain(v) for v in raw.tolist()]
    uniques = _sorted_unique(values)
    if len(uniques) < 2:
        raise ConfigError(
            f"data.label_column={cfg.label_column!r}: expected at least 2 classes in {where}, "
            f"found {len(uniques)} ({uniques})"
        )
    index = {v: i for i, v in enumerate(uniques)}
    labels = np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values))
    if class_names is not None and all(isinstance(v, int) and 0 <= v < len(class_names) for v in uniques):
        names = tuple(class_names[v] for v in uniques)
    else:
        names = tuple(str(v) for v in uniques)
    columns = [frame[c].tolist() for c in cfg.text_columns]
    texts = [". ".join(str(p) for p in parts if not _missing(p)) for parts in zip(*columns)]
    return texts, labels, names


def _plain(value: Any) -> Any:
    """numpy scalar -> Python; integral floats (from a column with NaNs) -> int."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _sorted_unique(values: list[Any]) -> list[Any]:
    uniques = list(dict.fromkeys(values))
    try:
        return sorted(uniques)
    except TypeError:  # mixed types, e.g. 1 and "1b"
        return sorted(uniques, key=str)


def _missing(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like cell
        return False
