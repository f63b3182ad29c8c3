"""Compare finished runs: one figure of curves and a table of figures of merit.

Give run directories, Hydra sweep roots (every folder below one that holds a
metrics.jsonl is a run) or globs. Runs are labelled by the config keys that differ
between them (read from each run's config.yaml).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

EXAMPLE = """\
examples:
  python -m simulation.compare multirun/2026-12-02/10-00-00 --target 0.86
  python -m simulation.compare 'outputs/*/*' -o curves.png --csv runs.csv
  python -m simulation.compare outputs/fedavg outputs/fedprox --markdown
  python -m simulation.compare 'runs/*_s[0-3]' --over seed --target 0.86
"""

METRICS = "metrics.jsonl"
_MISSING = "\0missing"
# Config leaves that differ from run to run without meaning anything (paths, clocks).
_MEANINGLESS_LEAVES = {
    "run_dir", "output_dir", "out_dir", "log_dir", "logdir", "save_dir", "dir",
    "timestamp", "time", "date", "started", "start_time", "run_name", "run_id", "job_id", "job_num",
}
# Hydra's own settings; experiment trackers, resuming and where checkpoints go never change results
_NOT_COMPARED = {"hydra", "logger", "resume", "keep_checkpoints"}
_CLOCKLIKE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[-:]\d{2}[-:]\d{2}")
_GROUP_IDENTITY = ("name", "mode", "source")  # the leaf that names a config group's choice


class Notes:
    """One short line on stderr per thing left out."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream

    def __call__(self, msg: str) -> None:
        print(msg, file=self.stream or sys.stderr)


@dataclass
class Run:
    path: Path  # as found (relative to the current directory when given so)
    rows: list[dict[str, Any]]
    config: dict[str, Any] | None = None  # flattened: dotted key -> value
    label: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- finding runs


def _natural_key(path: Path) -> list[Any]:
    """``2`` before ``10``: sweep job folders sort by number."""
    return [[int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)] for part in path.parts]


def find_runs(args: list[str], note: Notes) -> list[Path]:
    """Run directories in ``args`` (run dirs, sweep roots, globs), in order, without duplicates."""
    found: list[Path] = []
    for arg in args:
        expanded = os.path.expanduser(arg)
        if not os.path.exists(expanded) and glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded, recursive=True), key=lambda s: _natural_key(Path(s)))
            if not matches:
                note(f"ignored {arg}: no path matches")
            paths = [Path(m) for m in matches]
        else:
            paths = [Path(expanded)]
        for path in paths:
            if path.is_file() and path.name == METRICS:
                found.append(path.parent)
            elif path.is_file():
                note(f"ignored {path}: not a run directory")
            elif not path.exists():
                note(f"ignored {path}: no such file or directory")
            elif (path / METRICS).is_file():
                found.append(path)
            else:
                below = sorted((m.parent for m in path.rglob(METRICS) if m.is_file()), key=_natural_key)
                if not below:
                    note(f"ignored {path}: not a run directory (no {METRICS} in it or below)")
                found.extend(below)
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` sorted by round; ``ValueError`` says what is wrong."""
    path = run_dir / METRICS
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{METRICS} unreadable ({err.__class__.__name__})") from err
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{METRICS} line {n} is not JSON") from None
        round_ = row.get("round") if isinstance(row, dict) else None
        if not isinstance(round_, int):
            raise ValueError(f"{METRICS} line {n} has no integer 'round'")  # noqa: TRY004 (bad data)
        for key in ("bytes_up", "bytes_down", "wall_s"):
            if not isinstance(row.get(key), (int, float)):
                row[key] = 0
        rows.append(row)
    if not rows:
        raise ValueError(f"{METRICS} is empty")
    return sorted(rows, key=lambda r: r["round"])


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"strategy.name": "fedprox", ...}``; lists and empty maps are leaves."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj} if prefix else {}


def read_config(run_dir: Path, note: Notes) -> dict[str, Any] | None:
    """The run's resolved config, flattened; None when it has none (or it does not parse)."""
    import yaml

    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            note(f"{run_dir}: {path.name} does not parse; labelled by folder name")
            return None
        if isinstance(data, dict):
            data.pop("hydra", None)
            return flatten(data)
        return None
    return None


def load_runs(paths: list[Path], note: Notes) -> list[Run]:
    runs = []
    for path in paths:
        try:
            rows = read_rows(path)
        except ValueError as err:
            note(f"skipped {path}: {err}")
            continue
        runs.append(Run(path=path, rows=rows, config=read_config(path, note)))
    return runs


# ---------------------------------------------------------------- labels


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def fmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _meaningless(key: str, values: list[Any]) -> bool:
    parts = key.split(".")
    if parts[0] in _NOT_COMPARED or parts[-1] in _MEANINGLESS_LEAVES:
        return True
    # a value unique to every run that looks like a clock or a dated path
    return (
        len(values) > 1
        and len({_canon(v) for v in values}) == len(values)
        and all(isinstance(v, str) and _CLOCKLIKE.search(v) for v in values)
    )


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in all ``configs`` (in config order)."""
    keys: dict[str, None] = {}
    for cfg in configs:
        keys.update(dict.fromkeys(cfg))
    out = []
    for key in keys:
        values = [cfg.get(key, _MISSING) for cfg in configs]
        if len({_canon(v) for v in values}) > 1 and not _meaningless(key, [v for v in values if v != _MISSING]):
            out.append(key)
    return out


def _identity_key(group: str, keys: set[str]) -> str | None:
    for leaf in _GROUP_IDENTITY:
        if f"{group}.{leaf}" in keys:
            return f"{group}.{leaf}"
    return None


def label_keys(configs: list[dict[str, Any]], differing: list[str]) -> list[str]:
    """The differing keys worth a label: a key only some choices of a group have
    (``strategy.proximal_mu`` next to ``strategy=fedavg``) is implied by the choice.
    Group choices come first."""
    all_keys = {k for cfg in configs for k in cfg}
    diff = set(differing)
    out = []
    idents = [k for k in differing if "." in k and _identity_key(k.split(".")[0], all_keys) == k]
    for key in idents + [k for k in differing if k not in idents]:  # group choices first
        group = key.split(".")[0]
        ident = _identity_key(group, all_keys) if "." in key else None
        if ident and ident != key and ident in diff and any(key not in cfg for cfg in configs):
            continue
        out.append(key)
    return out


def short_names(keys: list[str], configs: list[dict[str, Any]]) -> dict[str, str]:
    """``strategy.name`` -> ``strategy``; ``partition.alpha`` -> ``alpha`` when no other key
    ends so; else the full dotted key."""
    all_keys = {k for cfg in configs for k in cfg}

    def candidate(key: str) -> str:
        parts = key.split(".")
        if len(parts) > 1 and parts[-1] in _GROUP_IDENTITY and _identity_key(parts[0], all_keys) == key:
            return parts[0] if len(parts) == 2 else ".".join(parts[:-1])
        return parts[-1]

    taken: dict[str, set[str]] = {}
    for key in all_keys:
        taken.setdefault(key.split(".")[-1], set()).add(key)
        taken.setdefault(candidate(key), set()).add(key)
    out = {}
    for key in keys:
        c = candidate(key)
        out[key] = c if taken.get(c, set()) <= {key} else key
    return out


def folder_names(paths: list[Path]) -> list[str]:
    """The fewest trailing path parts that tell every run apart (``3``, ``10-00-00/3``)."""
    parts = [p.resolve().parts for p in paths]
    longest = max((len(p) for p in parts), default=1)
    for k in range(1, longest + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def make_unique(labels: list[str], folders: list[str]) -> list[str]:
    labels = list(labels)
    for label in list(labels):
        if labels.count(label) > 1:
            dupes = [j for j, lab in enumerate(labels) if lab == label]
            for j in dupes:
                labels[j] = f"{label} ({folders[j]})"
    n = 2
    while len(set(labels)) < len(labels):  # folders are unique, so only when a label equals a folder name
        seen: set[str] = set()
        for i, label in enumerate(labels):
            if label in seen:
                labels[i] = f"{label} #{n}"
            seen.add(labels[i])
        n += 1
    return labels


def label_words(cfg: dict[str, Any], keys: list[str], shorts: dict[str, str]) -> str:
    """``strategy=fedprox alpha=0.1``: ``cfg``'s values of ``keys``, by their short names."""
    return " ".join(f"{shorts[k]}={fmt_value(cfg[k])}" for k in keys if k in cfg)


def assign_labels(runs: list[Run]) -> tuple[list[str], dict[str, str]]:
    """Set ``run.label`` for every run; return the differing keys (full) and their short names."""
    configs = [r.config for r in runs if r.config is not None]
    differing = differing_keys(configs) if len(configs) > 1 else []
    keys = label_keys(configs, differing)
    shorts = short_names(keys, configs)
    folders = folder_names([r.path for r in runs])
    labels = []
    for run, folder in zip(runs, folders):
        cfg = run.config or {}
        labels.append(label_words(cfg, keys, shorts) or folder)
    for run, label in zip(runs, make_unique(labels, folders)):
        run.label = label
    return differing, {k: shorts[k] for k in keys}


def figure_title(runs: list[Run], varying: list[str]) -> str:
    """``4 runs: strategy, alpha · minilm · lora``."""
    configs = [r.config for r in runs if r.config is not None]
    head = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    if varying:
        head += ": " + ", ".join(varying)
    common = []
    if configs and len(configs) == len(runs):
        for key in ("model.name", "method.name", "strategy.name"):
            values = {_canon(c.get(key)) for c in configs}
            if len(values) == 1 and configs[0].get(key) is not None:
                common.append(fmt_value(configs[0][key]))
    return " · ".join([head, *common])


# ---------------------------------------------------------------- figures of merit


def to_target(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """First round >= 1 whose test accuracy reaches ``target``, with the bytes uploaded and
    the wall time of rounds 1..that round. Round 0 (the evaluation before any training)
    never counts, and its evaluation time is not part of the wall time."""
    up, wall = 0, 0.0
    for r in sorted(rows, key=lambda r: r["round"]):
        if r["round"] < 1:
            continue
        up += r.get("bytes_up") or 0
        wall += r.get("wall_s") or 0
        acc = r.get("eval_accuracy")
        if acc is not None and acc >= target:
            return {"round": r["round"], "bytes_up": up, "wall_s": wall}
    return None


def run_stats(rows: list[dict[str, Any]], target: float | None = None) -> dict[str, Any]:
    """Rounds, final/best accuracy (and the mean of the last three evaluations after training), traffic, wall time and peak RSS of one run (training rounds
    only for traffic, time and RSS; accuracies as in summary.json)."""
    trained = [r for r in rows if r["round"] >= 1]
    accs = [r["eval_accuracy"] for r in rows if isinstance(r.get("eval_accuracy"), (int, float))]
    late = [r["eval_accuracy"] for r in trained if isinstance(r.get("eval_accuracy"), (int, float))]
    rss = [r["client_peak_rss_mb"] for r in trained if isinstance(r.get("client_peak_rss_mb"), (int, float))]
    stats = {
        "rounds": max(r["round"] for r in rows),
        "final_acc": accs[-1] if accs else None,
        "best_acc": max(accs) if accs else None,
        "last3_acc": sum(late[-3:]) / len(late[-3:]) if late else None,  # steadier than one evaluation
        "bytes_up": sum(r.get("bytes_up") or 0 for r in trained),
        "bytes_down": sum(r.get("bytes_down") or 0 for r in trained),
        "wall_s": sum(r.get("wall_s") or 0 for r in trained),
        "peak_rss_mb": max(rss) if rss else None,
    }
    if target is not None:
        stats["hit"] = to_target(rows, target)
    return stats


def fmt_mib(n_bytes: float) -> str:
    mib = n_bytes / 2**20
    if mib == 0:
        return "0"
    if mib >= 100:
        return f"{mib:.0f}"
    if mib >= 1:
        return f"{mib:.2f}"
    return f"{mib:.3g}"  # seed strategies upload kilobytes: keep 3 significant digits


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _row_cells(s: dict[str, Any]) -> list[str]:
    return [
        str(s["rounds"]), _acc(s["final_acc"]), _acc(s["best_acc"]), _acc(s["last3_acc"]), fmt_mib(s["bytes_up"]),
        fmt_mib(s["bytes_down"]), fmt_s(s["wall_s"]), "-" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f}",
    ]


def _target_cells(hit: dict[str, Any] | None) -> list[str]:
    if hit is None:
        return ["not reached", "-", "-"]
    return [str(hit["round"]), fmt_mib(hit["bytes_up"]), fmt_s(hit["wall_s"])]


def _target_name(target: float) -> str:
    return f"{target:.1%}".replace(".0%", "%")


# ---------------------------------------------------------------- repeats (--over seed)


@dataclass
class Group:
    """Runs whose configs differ only in the ``--over`` key (e.g. seeds of one setting)."""

    label: str
    runs: list[Run]
    over: list[Any] = field(default_factory=list)  # each run's value of the --over key


def group_runs(runs: list[Run], over: str) -> list[Group]:
    """Runs grouped by every compared config key but ``over``, in first-seen order; the
    label names the keys that differ between groups. A run without a config is its own
    group. ``ValueError`` when no run's config has ``over``."""
    configs = [r.config for r in runs if r.config is not None]
    if not any(over in c for c in configs):
        known = sorted({k for c in configs for k in c if "." not in k})
        raise ValueError(f"--over {over}: no run's config has that key (top-level keys: {', '.join(known)}; "
                         "nested keys are dotted, e.g. strategy.name)")
    differing = [k for k in differing_keys(configs) if k != over] if len(configs) > 1 else []
    keys = label_keys(configs, differing)
    shorts = short_names(keys, configs)
    groups: dict[str, Group] = {}
    for i, run in enumerate(runs):
        if run.config is None:
            groups[f"\0{i}"] = Group(run.label, [run], [None])
            continue
        ident = _canon({k: run.config.get(k, _MISSING) for k in differing})
        label = label_words(run.config, keys, shorts) or "all runs"
        group = groups.setdefault(ident, Group(label, []))
        group.runs.append(run)
        group.over.append(run.config.get(over))
    return list(groups.values())


def _mean_sd(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def group_stats(group: Group) -> dict[str, Any]:
    """Mean and sample standard deviation over the group's runs of final, best and last-3
    accuracy and of the round first reaching the target (over the runs that reached it)."""
    out: dict[str, Any] = {"n": len(group.runs), "over": group.over}
    for key in ("final_acc", "best_acc", "last3_acc"):
        out[key] = _mean_sd([r.stats[key] for r in group.runs if r.stats.get(key) is not None])
    out["bytes_up"] = sum(r.stats["bytes_up"] for r in group.runs) / len(group.runs)
    if "hit" in group.runs[0].stats:
        hits = [r.stats["hit"]["round"] for r in group.runs if r.stats.get("hit")]
        out["hit"] = (_mean_sd([float(h) for h in hits]), len(hits))
    return out


def _pm(ms: tuple[float, float] | None, digits: int) -> str:
    return "-" if ms is None else f"{ms[0]:.{digits}f}±{ms[1]:.{digits}f}"


def _group_cells(g: dict[str, Any], target: float | None, digits: int = 4) -> list[str]:
    cells = [",".join(fmt_value(v) for v in g["over"]), _pm(g["final_acc"], digits),
             _pm(g["best_acc"], digits), _pm(g["last3_acc"], digits), fmt_mib(g["bytes_up"])]
    if target is not None:
        ms, reached = g["hit"]
        cells.append(f"{_pm(ms, 1)} {reached}/{g['n']}" if ms else f"never 0/{g['n']}")
    return cells


def group_headers(over: str, target: float | None) -> list[str]:
    cols = [over, "final", "best", "last3", "MiB up"]
    return cols + [f"round to {_target_name(target)}"] if target is not None else cols


def print_groups(groups: list[Group], over: str, console: Console, target: float | None = None) -> None:
    """Each group's mean±sd (accuracies to 3 digits); settings that would not fit beside
    the numbers go to a numbered key, as in :func:`print_tables`."""

    def build(keyed: bool) -> Table:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        t.add_column("#" if keyed else "setting", justify="right" if keyed else "left", no_wrap=True)
        for h in group_headers(over, target):
            t.add_column(h, justify="right", no_wrap=True)
        for i, g in enumerate(groups, 1):
            t.add_row(Text(str(i) if keyed else g.label), *_group_cells(group_stats(g), target, digits=3))
        return t

    table = build(keyed=False)
    keyed = console.measure(table, options=console.options.update_width(10_000)).maximum > console.width
    console.print()
    console.print(Text(f"mean±standard deviation over {over}", style="bold"))
    if keyed:
        table = build(keyed=True)
        for i, g in enumerate(groups, 1):
            console.print(Text(f"{i:>{len(str(len(groups)))}}  {g.label}"))
    console.print(table)


def markdown_groups(groups: list[Group], over: str, target: float | None = None) -> str:
    cols = ["setting", *group_headers(over, target)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for g in groups:
        lines.append("| " + " | ".join([g.label.replace("|", "\\|"), *_group_cells(group_stats(g), target)]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- output

HEADERS = ["rnds", "final", "best", "last3", "MiB up", "MiB dn", "wall s", "RSS MB"]


def print_tables(runs: list[Run], console: Console, title: str = "", target: float | None = None,
                 caption: str = "") -> None:
    """The title, the table (and the to-target table) at the console's width. Labels that
    would not fit go to a numbered key under the title rather than being wrapped into
    fragments; numbers never wrap."""

    def build(keyed: bool) -> tuple[Table, Table | None]:
        def table() -> Table:
            t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
            t.add_column("#" if keyed else "run", justify="right" if keyed else "left", no_wrap=True)
            return t

        main = table()
        for h in HEADERS:
            main.add_column(h, justify="right", no_wrap=True)
        hits = None
        if target is not None:
            hits = table()
            for h in ("round", "MiB up", "wall s"):
                hits.add_column(h, justify="right", no_wrap=True)
        for i, run in enumerate(runs, 1):
            name = Text(str(i) if keyed else run.label)
            main.add_row(name, *_row_cells(run.stats))
            if hits is not None:
                hits.add_row(name.copy(), *_target_cells(run.stats["hit"]))
        return main, hits

    main, hits = build(keyed=False)
    unbounded = console.options.update_width(10_000)  # a measure is otherwise capped at the width
    keyed = max(console.measure(t, options=unbounded).maximum for t in (main, hits) if t is not None) > console.width
    if title:
        console.print(Text(title, style="bold"))
    if keyed:
        main, hits = build(keyed=True)
        width = len(str(len(runs)))
        for i, run in enumerate(runs, 1):
            console.print(Text(f"{i:>{width}}  {run.label}"))
    console.print()
    console.print(main)
    if hits is not None:
        console.print()
        console.print(Text(f"first round >= 1 reaching {_target_name(target)} test accuracy"))
        console.print(hits)
    if caption:
        console.print()
        console.print(Text(caption, style="dim"))


def markdown_table(runs: list[Run], target: float | None = None) -> str:
    cols = ["run", "rounds", "final acc", "best acc", "mean of last 3 evals", "MiB up", "MiB down", "wall s", "peak RSS MB"]
    if target is not None:
        t = _target_name(target)
        cols += [f"round to {t}", f"MiB up to {t}", f"wall s to {t}"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for run in runs:
        cells = [run.label.replace("|", "\\|"), *_row_cells(run.stats)]
        if target is not None:
            cells += _target_cells(run.stats["hit"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(runs: list[Run], path: Path, differing: list[str], target: float | None = None) -> None:
    """One row per run, full column names and raw numbers (bytes, seconds)."""
    cols = ["label", "run_dir", *differing, "rounds", "final_acc", "best_acc", "last3_acc", "bytes_up", "bytes_down",
            "wall_s", "peak_rss_mb"]
    if target is not None:
        cols += ["target", "target_round", "target_bytes_up", "target_wall_s"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    for run in runs:
        s, cfg = run.stats, run.config or {}
        row = [run.label, str(run.path), *(fmt_value(cfg[k]) if k in cfg else "" for k in differing),
               s["rounds"], s["final_acc"], s["best_acc"], s["last3_acc"], s["bytes_up"], s["bytes_down"],
               round(s["wall_s"], 3), s["peak_rss_mb"]]
        if target is not None:
            hit = s["hit"] or {}
            row += [target, hit.get("round"), hit.get("bytes_up"),
                    None if not hit else round(hit["wall_s"], 3)]
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in row])
    Path(path).write_text(buf.getvalue())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulation.compare",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="PATH",
                   help="run directory, sweep root (searched below for runs) or glob such as 'outputs/*'; "
                        "paths that hold no run are skipped with a note")
    p.add_argument("-o", "--output", type=Path, default=Path("compare.png"), metavar="PNG",
                   help="figure to write: accuracy and loss against rounds and uploaded MiB (default: %(default)s)")
    p.add_argument("--target", type=float, default=None, metavar="ACC",
                   help="test accuracy (e.g. 0.86) to report the first training round reaching it, "
                        "MiB uploaded and wall seconds up to it")
    p.add_argument("--csv", type=Path, default=None, metavar="PATH",
                   help="also write one CSV row per run: label, run_dir, each differing config key, raw figures")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table instead of the console table")
    p.add_argument("--over", default=None, metavar="KEY",
                   help="also group the runs that differ only in this config key (e.g. seed) and print each "
                        "group's mean ± standard deviation of final, best and last-3 accuracy")
    return p


def main(argv: list[str] | None = None, console: Console | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    note = Notes()
    runs = load_runs(find_runs(args.runs, note), note)
    if not runs:
        p.exit(2, f"{p.prog}: error: no runs to compare (a run directory holds {METRICS}); "
                  f"looked in: {' '.join(args.runs)}\n")
    differing, shorts = assign_labels(runs)
    for run in runs:
        run.stats = run_stats(run.rows, args.target)
    title = figure_title(runs, list(shorts.values()))
    groups = None
    if args.over is not None:
        try:
            groups = group_runs(runs, args.over)
        except ValueError as err:
            p.exit(2, f"{p.prog}: error: {err}\n")

    from simulation.report import plot_runs  # matplotlib only now

    plot_runs({r.label: r.rows for r in runs}, args.output, title=title)
    if args.csv is not None:
        write_csv(runs, args.csv, differing, args.target)
    if args.markdown:
        print(markdown_table(runs, args.target))
        if groups is not None:
            print()
            print(markdown_groups(groups, args.over, args.target))
    else:
        console = console or Console()
        print_tables(runs, console, title=title, target=args.target,
                     caption=f"curves in {args.output}" + (f", rows in {args.csv}" if args.csv else ""))
        if groups is not None:
            print_groups(groups, args.over, console, args.target)


if __name__ == "__main__":
    main()
