"""Data loading: generated dataset, files (CSV/JSONL/Parquet), AG News, HF, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from client import data_generated
from client.config import DataConfig
from client.data import Splits, load_splits
from strategies.runconfig import ConfigError

AG_NEWS = Path(__file__).resolve().parents[3] / "shared" / "data" / "ag_news_test.csv"


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_splits.cache_clear()
    yield
    load_splits.cache_clear()


def _file_cfg(path: Path, **kw) -> DataConfig:
    kw.setdefault("test_size", 2)
    return DataConfig(source="file", path=str(path), **kw)


def _rows(splits: Splits) -> list[tuple[str, int]]:
    """(text, label) of train then test."""
    return [(r["text"], r["label"]) for ds in (splits.train, splits.test) for r in ds]


def _table(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": np.arange(n),
        "title": [f"title {i}" for i in range(n)],
        "body": [None if i % 4 == 0 else f"body {i}" for i in range(n)],
        "topic": rng.permutation(["pets", "cars", "art"] * (n // 3)),
    })


# --- generated -------------------------------------------------------------------------


def test_generated_is_deterministic_and_balanced():
    a = data_generated.generate(2400, 4, seed=3)
    b = data_generated.generate(2400, 4, seed=3)
    c = data_generated.generate(2400, 4, seed=4)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert a[0] != c[0]
    assert np.bincount(a[1]).tolist() == [600] * 4
    assert a[2] == ("sports", "science", "business", "world")
    lengths = [len(t.split()) for t in a[0]]
    assert min(lengths) >= 8 and max(lengths) <= 20


def test_generated_vocabularies_are_disjoint_and_extend_past_named_classes():
    names, vocab = data_generated.topic_vocabulary(12)
    assert len(names) == 12 and names[-1] == "topic_11"
    words = [w for ws in vocab for w in ws]
    assert all(len(ws) == data_generated.WORDS_PER_TOPIC for ws in vocab)
    assert len(set(words)) == len(words)
    assert not set(words) & set(data_generated.SHARED)
    texts, labels, _ = data_generated.generate(600, 12, seed=0)
    assert np.bincount(labels).tolist() == [50] * 12


def test_generated_splits_default_config():
    splits = load_splits(DataConfig())
    assert isinstance(splits, Splits)
    assert (len(splits.train), len(splits.test)) == (2000, 400)
    assert splits.train.column_names == ["text", "label"]
    assert splits.num_classes == 4
    assert load_splits(DataConfig()) is splits  # cached per process


def _bow_naive_bayes_accuracy(splits: Splits) -> float:
    """Multinomial naive Bayes on word counts (Laplace smoothing), numpy only."""
    tok = lambda t: t.lower().rstrip(".").split()  # noqa: E731
    vocab = {w: i for i, w in enumerate(sorted({w for t in splits.train["text"] for w in tok(t)}))}

    def counts(ds):
        m = np.zeros((len(ds), len(vocab) + 1))
        for i, t in enumerate(ds["text"]):
            for w in tok(t):
                m[i, vocab.get(w, len(vocab))] += 1
        return m, np.asarray(ds["label"])

    x, y = counts(splits.train)
    xt, yt = counts(splits.test)
    c = splits.num_classes
    word = np.stack([x[y == k].sum(0) for k in range(c)]) + 1.0  # (C, V)
    log_p = np.log(word / word.sum(1, keepdims=True))
    prior = np.log(np.bincount(y, minlength=c) / len(y))
    return float(((xt @ log_p.T + prior).argmax(1) == yt).mean())


def test_generated_is_learnable_but_not_trivial():
    acc = _bow_naive_bayes_accuracy(load_splits(DataConfig()))
    assert 0.6 < acc < 0.97, acc


def test_generated_label_names_override_and_count_check():
    names = ("a", "b", "c", "d")
    assert load_splits(DataConfig(label_names=names)).label_names == names
    with pytest.raises(ConfigError, match="expected 4 names"):
        load_splits(DataConfig(label_names=("a", "b")))


# --- files -----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_file_formats_with_multiple_text_columns_and_string_labels(tmp_path, ext):
    frame = _table()
    path = tmp_path / f"data.{ext}"
    {"csv": lambda: frame.to_csv(path, index=False),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "parquet": lambda: frame.to_parquet(path)}[ext]()
    splits = load_splits(_file_cfg(path, text_columns=("title", "body"), label_column="topic", test_size=3))
    assert splits.label_names == ("art", "cars", "pets")  # sorted unique values
    assert (len(splits.train), len(splits.test)) == (9, 3)
    rows = dict(_rows(splits))
    assert "title 0" in rows  # body missing -> no dangling ". "
    assert "title 1. body 1" in rows
    for i in range(12):
        text = f"title {i}" if i % 4 == 0 else f"title {i}. body {i}"
        assert splits.label_names[rows[text]] == frame.topic[i]


def test_file_integer_labels_max_examples_and_seeded_split(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(50)], "label": [5, 7] * 25}).to_csv(path, index=False)
    cfg = _file_cfg(path, test_size=5, max_examples=20, seed=1)
    splits = load_splits(cfg)
    assert splits.label_names == ("5", "7")
    assert sorted(set(splits.train["label"])) == [0, 1]
    assert (len(splits.train), len(splits.test)) == (15, 5)
    assert not set(list(splits.train["text"])) & set(list(splits.test["text"]))
    load_splits.cache_clear()
    assert list(load_splits(cfg).test["text"]) == list(splits.test["text"])  # same seed, same split
    other = load_splits(_file_cfg(path, test_size=5, max_examples=20, seed=2))
    assert list(other.test["text"]) != list(splits.test["text"])


def test_ag_news_agreed_split():
    if not AG_NEWS.is_file():
        pytest.skip(f"{AG_NEWS} not present")
    cfg = DataConfig(source="file", path=str(AG_NEWS), text_columns=("title", "description"), test_size=1600)
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.test)) == (6000, 1600)
    assert splits.label_names == ("1", "2", "3", "4")
    assert Counter(label for _, label in _rows(splits)) == {k: 1900 for k in range(4)}


# --- errors ----------------------------------------------------------------------------


def test_missing_file_names_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="file not found") as err:
        load_splits(_file_cfg(Path("nope/missing.csv")))
    assert str(tmp_path / "nope" / "missing.csv") in str(err.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("text,label\na,1\n")
    with pytest.raises(ConfigError, match=r"unknown file type '\.txt'.*\.csv"):
        load_splits(_file_cfg(path))


def test_unknown_column_lists_available(tmp_path):
    path = tmp_path / "d.csv"
    _table().to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"data.text_columns.*\['headline'\].*\['id', 'title', 'body', 'topic'\]"):
        load_splits(_file_cfg(path, text_columns=("headline",), label_column="topic"))
    with pytest.raises(ConfigError, match=r"data.label_column.*\['label'\]"):
        load_splits(_file_cfg(path, text_columns=("title",)))


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match="empty|no rows"):
        load_splits(_file_cfg(path))


def test_single_class(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": "x"}) + "\n" for i in range(5)))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        load_splits(_file_cfg(path))


def test_test_size_too_large(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": list("abcdef"), "label": [0, 1] * 3}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match="data.test_size"):
        load_splits(_file_cfg(path, test_size=6))
    with pytest.raises(ConfigError, match="max_examples=4"):
        load_splits(_file_cfg(path, test_size=4, max_examples=4))
    with pytest.raises(ConfigError, match="data.test_size"):
        load_splits(DataConfig(num_examples=100, test_size=100))


# --- Hugging Face ------------------------------------------------------------------------


def test_hf_offline_suggests_file(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'ag_news' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match=r"Hugging Face hub.*data.source=file"):
        load_splits(DataConfig(source="hf", hf_name="ag_news"))


def test_hf_maps_columns_and_class_names(monkeypatch):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(10)], "label": [0, 1] * 5}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: ds)
    splits = load_splits(DataConfig(source="hf", hf_name="fake/sentiment", test_size=2))
    assert splits.label_names == ("neg", "pos")
    assert (len(splits.train), len(splits.test)) == (8, 2)
