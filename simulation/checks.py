"""Checks of a whole run before any heavy import (torch, transformers, Flower, datasets).

:func:`check_run` looks at what the typed config alone cannot: the data file (exists,
readable, has the named columns, enough rows for the test split and for every client),
the partition against the data's size and classes, a hub model against the local cache
when the hub is off, ``resume`` against the run directory, and the chosen trackers
against what is installed. Each problem names its key; all arrive in one ConfigError.
Partitions that only fail when drawn (Dirichlet over clients with a minimum size) are
found when the data is partitioned, still before the backbone loads.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from client.config import ClientConfig, DataConfig
from server.config import ServerConfig
from strategies.runconfig import ConfigError

FILE_TYPES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")  # as client/data.py reads them
COMPRESSION = (".gz", ".bz2", ".xz", ".zip", ".zst")


@dataclass(frozen=True)
class DataShape:
    """What a light look at the data tells: rows and, when cheap to know, classes."""

    rows: int
    num_classes: int | None = None


def check_run(client: ClientConfig, server: ServerConfig, trackers: tuple[str, ...] = ()) -> None:
    """Raise one ConfigError listing every problem found (each naming its key)."""
    errors: list[str] = []
    shape = _collect(errors, lambda: peek_data(client.data))
    if shape is not None:
        _collect(errors, lambda: check_population(client, shape))
    _collect(errors, lambda: check_model(client))
    _collect(errors, lambda: check_method(client))
    _collect(errors, lambda: check_ranks(client, server))
    _collect(errors, lambda: check_resume(server, client))
    _collect(errors, lambda: check_trust(client, server))
    if trackers:
        from server.trackers import check_installed

        _collect(errors, lambda: check_installed(trackers))
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors) if len(errors) > 1 else errors[0])


def _collect(errors: list[str], fn: Callable[[], object]) -> object:
    try:
        return fn()
    except ConfigError as err:
        errors.append(str(err))
        return None


# -- data -----------------------------------------------------------------------------------
def peek_data(cfg: DataConfig) -> DataShape | None:
    """Rows (and classes) of the configured data without loading it; None when only
    loading can tell (Hugging Face datasets, compressed or JSON-array files)."""
    if cfg.source == "generated":
        if cfg.num_examples < cfg.num_classes:
            raise ConfigError(
                f"data.num_examples: expected at least data.num_classes={cfg.num_classes}, got {cfg.num_examples}"
            )
        return DataShape(cfg.num_examples, cfg.num_classes)
    if cfg.source != "file":
        return None
    path = Path(cfg.path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"data.path: file not found: {path} (given as {cfg.path!r})")
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSION
    ext = (suffixes[:-1] if compressed else suffixes or [""])[-1] if suffixes else ""
    if ext not in FILE_TYPES:
        raise ConfigError(f"data.path: unknown file type {ext or '(none)'!r} for {path}; expected one of {', '.join(FILE_TYPES)}")
    if compressed and not suffixes[-1] == ".gz":
        return None
    reader = {".csv": _csv_rows, ".tsv": _csv_rows, ".jsonl": _jsonl_rows, ".ndjson": _jsonl_rows,
              ".parquet": _parquet_rows}.get(ext)
    if reader is None:
        return None
    try:
        columns, labels = reader(path, cfg.label_column, delimiter="\t" if ext == ".tsv" else ",")
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
        raise ConfigError(f"data.path: could not read {path} as {ext[1:]}: {err}") from err
    _check_columns(cfg, columns, str(path))
    present = [v for v in labels if v not in (None, "")]
    if not present:
        raise ConfigError(f"data: {path} has no rows")
    classes = len(set(present))
    if classes < 2:
        raise ConfigError(
            f"data.label_column={cfg.label_column!r}: expected at least 2 classes in {path}, found {classes}"
        )
    return DataShape(len(present), classes)


def _open(path: Path):
    return gzip.open(path, "rt", newline="") if path.suffix.lower() == ".gz" else path.open(newline="")


def _csv_rows(path: Path, label: str, delimiter: str) -> tuple[list[str], list[object]]:
    with _open(path) as f:
        rows = csv.reader(f, delimiter=delimiter)
        header = next(rows, None)
        if header is None:
            raise ConfigError(f"data.path: {path} is empty")
        at = header.index(label) if label in header else None
        values = [row[at] if at is not None and at < len(row) else None for row in rows if row]
    return header, values


def _jsonl_rows(path: Path, label: str, delimiter: str) -> tuple[list[str], list[object]]:
    columns: dict[str, None] = {}
    values = []
    with _open(path) as f:
        for line in _nonblank(f):
            row = json.loads(line)
            columns.update(dict.fromkeys(row))
            value = row.get(label)
            values.append(json.dumps(value) if isinstance(value, (list, dict)) else value)
    if not columns:
        raise ConfigError(f"data.path: {path} is empty")
    return list(columns), values


def _nonblank(lines) -> Iterator[str]:
    return (line for line in lines if line.strip())


def _parquet_rows(path: Path, label: str, delimiter: str) -> tuple[list[str], list[object]]:
    import pyarrow.parquet as pq  # light next to pandas; only for Parquet files

    schema = pq.read_schema(path)
    values = pq.read_table(path, columns=[label]).column(0).to_pylist() if label in schema.names else []
    return list(schema.names), values


def _check_columns(cfg: DataConfig, columns: list[str], where: str) -> None:
    missing = [c for c in (*cfg.text_columns, cfg.label_column) if c not in columns]
    if missing:
        keys = ", ".join(dict.fromkeys("data.label_column" if c == cfg.label_column else "data.text_columns" for c in missing))
        raise ConfigError(f"{keys}: column(s) {missing} not in {where}; its columns are {columns}")


def check_population(client: ClientConfig, shape: DataShape) -> None:
    """Test split, clients and partition settings against the data's size and classes."""
    data, part = client.data, client.partition
    rows = min(shape.rows, data.max_examples) if data.max_examples > 0 else shape.rows
    if data.test_size >= rows:
        capped = f" (data.max_examples={data.max_examples})" if data.max_examples > 0 else ""
        raise ConfigError(
            f"data.test_size: expected fewer than the {rows} examples available{capped} "
            f"so that some remain for training, got {data.test_size}"
        )
    train = rows - data.test_size
    if client.num_clients > train:
        raise ConfigError(
            f"num_clients: expected at most the {train} training examples, got {client.num_clients}; use fewer "
            f"clients or more data (data.num_examples, data.max_examples, data.test_size)"
        )
    per_client = getattr(part, "classes_per_client", None)
    if per_client is not None and shape.num_classes is not None and per_client > shape.num_classes:
        raise ConfigError(
            f"partition.classes_per_client: expected at most the {shape.num_classes} classes of the data, got {per_client}"
        )
    shards = getattr(part, "shards_per_client", None)
    if shards is not None and shards * client.num_clients > train:
        raise ConfigError(
            f"partition.shards_per_client: {shards} shards for each of {client.num_clients} clients need at least "
            f"{shards * client.num_clients} training examples, there are {train}; {part.hint.format(**vars(part))}"
        )


# -- model, resume ----------------------------------------------------------------------------
def check_model(client: ClientConfig) -> None:
    """A hub model (``model=hf``) must be a local folder or, with the hub off, cached."""
    if client.model.name != "hf" or not client.model.path:
        return
    from client.hub import BackboneUnavailable, hub_offline, resolve_hf_path

    if not hub_offline() and not Path(client.model.path).expanduser().is_dir():
        return  # fetched (or refused) by the hub when the backbone loads
    try:
        resolve_hf_path(client.model.path)
    except BackboneUnavailable as err:
        raise ConfigError(str(err)) from None


def check_method(client: ClientConfig) -> None:
    """The method's settings against the backbone (depth, width, context, bias terms),
    before anything loads, for the offline backbones (hub models are checked on load)."""
    from client.model_facts import known_facts

    facts = known_facts(client.model)
    if facts is not None:
        client.method.check_backbone(facts, client.model)


def check_ranks(client: ClientConfig, server: ServerConfig) -> None:
    """Heterogeneous ranks need a strategy that gives each client its rank."""
    from strategies.registry import HETERO_RANK

    strategy = server.strategy
    if getattr(client.method, "rank_choices", ()) and not strategy.target and strategy.name not in HETERO_RANK:
        raise ConfigError(f"method.rank_choices needs a strategy that aggregates heterogeneous ranks: "
                          f"strategy={' | '.join(HETERO_RANK)} (got strategy={strategy.name})")
    if getattr(client.method, "rank_assignment", "cycle") == "by_device" and not client.device.active \
            and not server.deployed:  # deployed: each node's --device, told in its "hello" reply
        from client.ranks import BY_DEVICE_NEEDS_DEVICES

        raise ConfigError(BY_DEVICE_NEEDS_DEVICES)


def check_trust(client: ClientConfig, server: ServerConfig) -> None:
    """A compressing codec, a robust rule, DP, secure aggregation or an attack must fit
    the strategy's update kind (and a robust rule the round size), and one another."""
    from strategies.registry import DELTA, HETERO_RANK, strategy_kind

    kind = strategy_kind(server.strategy)
    name = server.strategy.target or server.strategy.name
    hetero = kind == DELTA and not server.strategy.target and server.strategy.name in HETERO_RANK
    what = f"{'heterogeneous-rank ' if hetero else ''}{kind} updates"
    equal_deltas = kind == DELTA and not hetero
    _check_codec(server, kind, name)
    _check_robust(server, kind, name, what, equal_deltas)
    _check_dp(server, name, what, equal_deltas)
    _check_secagg(client, server, name, what, equal_deltas)
    _check_attack(client, kind, name)


def _check_codec(server: ServerConfig, kind: str, name: str) -> None:
    from strategies.codecs import LOSSLESS_CASTS

    if server.codec.name not in LOSSLESS_CASTS and kind != "delta":
        raise ConfigError(f"codec={server.codec.name} compresses delta updates; strategy={name} exchanges {kind} updates "
                          f"(codec={' | '.join(LOSSLESS_CASTS)})")


def _check_robust(server: ServerConfig, kind: str, name: str, what: str, equal_deltas: bool) -> None:
    from strategies.robust import SEED_RULES

    robust = server.robust
    if robust.name == "none":
        return
    if kind == "seeds":
        if robust.name not in SEED_RULES:
            raise ConfigError(f"robust={robust.name} does not apply to seed updates; for strategy={name}: "
                              f"robust={' | '.join(SEED_RULES)}")
        return
    if not equal_deltas:
        raise ConfigError(f"robust={robust.name} aggregates equal-shaped delta updates; strategy={name} aggregates "
                          f"{what} (use robust=none)")
    if server.clients_per_round < robust.min_replies():
        raise ConfigError(f"robust={robust.name} with num_malicious={robust.num_malicious} needs "
                          f"{robust.requirement()} replies per round; clients_per_round={server.clients_per_round}")


def _check_dp(server: ServerConfig, name: str, what: str, equal_deltas: bool) -> None:
    dp = server.dp
    if dp.name == "none":
        return
    seeds = what == "seeds updates"
    if seeds and dp.name == "client":
        raise ConfigError(f"dp=client with strategy={name}: seed updates are clipped on the server; use dp=server")
    if not (equal_deltas or seeds):
        raise ConfigError(f"dp={dp.name} clips and noises equal-shaped delta or seed updates; strategy={name} aggregates "
                          f"{what}")
    if server.robust.name != "none":
        raise ConfigError(f"dp={dp.name} with robust={server.robust.name}: the privacy wrapper's clipping already "
                          "bounds every update; use one of them")
    if dp.target_epsilon > 0:
        from strategies.dp import noise_for

        noise_for(dp.target_epsilon, server.rounds, server.clients_per_round, server.num_clients, dp.delta)


def _check_secagg(client: ClientConfig, server: ServerConfig, name: str, what: str, equal_deltas: bool) -> None:
    from strategies.adversary import DELTA_ONLY
    from strategies.codecs import LOSSLESS_CASTS

    secagg = server.secagg
    if secagg.name == "none":
        return
    if not equal_deltas:
        raise ConfigError(f"secagg={secagg.name} sums equal-shaped delta updates; strategy={name} aggregates {what}")
    for key, value in (("robust", server.robust.name), ("dp", server.dp.name)):
        if value != "none":
            raise ConfigError(f"secagg={secagg.name} with {key}={value}: the server sees only the sum, so it cannot "
                              f"screen, clip or weigh single updates (use {key}=none)")
    if server.device.active:
        raise ConfigError(f"secagg={secagg.name} with device={server.device.name}: the server sees only the sum, so it "
                          "cannot leave out a straggler or a dropout after the fact (use device=none)")
    if server.codec.name not in LOSSLESS_CASTS:
        raise ConfigError(f"secagg={secagg.name} with codec={server.codec.name}: compressed updates do not add up; "
                          f"secure aggregation has its own fixed point (codec={' | '.join(LOSSLESS_CASTS)})")
    if client.attack.name in DELTA_ONLY:
        raise ConfigError(f"attack={client.attack.name} crafts delta replies; secure aggregation exchanges other messages")


def _check_attack(client: ClientConfig, kind: str, name: str) -> None:
    from strategies.adversary import DELTA_ONLY

    attack = client.attack
    if attack.name == "none":
        return
    if attack.fraction <= 0:
        raise ConfigError(f"attack={attack.name} needs attack.fraction in (0, 1), got {attack.fraction}")
    if attack.name in DELTA_ONLY and kind != "delta":
        raise ConfigError(f"attack={attack.name} crafts delta replies; strategy={name} aggregates {kind} updates")
    if kind == "activations":
        raise ConfigError(f"attack={attack.name}: adversaries are not simulated in split training (method=split)")


def check_resume(server: ServerConfig, client: ClientConfig | None = None) -> None:
    """``resume=true`` needs a checkpoint in the run directory, and a resume (``true``, or
    ``auto`` finding a checkpoint) the settings of the run that wrote it."""
    if server.resume == "false":
        return
    ckpt_dir = Path(server.run_dir) / "checkpoints"
    latest = ckpt_dir / "latest.json"
    if latest.is_file() and client is not None:
        from server.run_identity import check_resumable
        from strategies.runconfig import flatten

        check_resumable(ckpt_dir, {**flatten(client), **flatten(server)})
        return
    if server.resume == "true" and not latest.is_file():
        raise ConfigError(
            f"resume=true: {Path(server.run_dir) / 'checkpoints'} holds no checkpoint to continue from; "
            "use resume=auto to continue when there is one and start afresh otherwise, or drop resume=true"
        )
