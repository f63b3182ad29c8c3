"""A resumed run must be the run its checkpoints belong to (light: no torch).

A fresh run records its flat run config beside its checkpoints
(``checkpoints/run_config.json``). Resuming compares the new config with it and refuses,
before training and without writing anything, every difference that changes the
trained state or what it means (model, quantization, data, method and its settings,
strategy and its settings, population, partition, seeds, local training); only the keys
in :data:`RESUMABLE` may change. Keys only one side has (another plug-in's defaults,
which Flower's own run config carries) are not compared: a plug-in switch shows as its
``name`` key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from strategies.runconfig import ConfigError

RUN_CONFIG_FILE = "run_config.json"
# what may change between a run and its resumption: length, reporting, where, how long to wait
RESUMABLE = frozenset({"rounds", "eval_every", "resume", "logger", "logger_group", "run_dir", "timeout_s",
                       "evaluator", "keep_checkpoints", "screen.max_reply_mb", "screen.norm_bound", "screen.min_valid_replies",
                       "screen.max_resamples"})
# derived by the simulator, not chosen: the node pool (a round's size; clients train the same on any
# pool) and the assignment's estimates (a resumed run plans with the recorded ones)
DERIVED = frozenset({"pool", "assign.peak_mb", "assign.flops", "assign.bytes", "assign.quantized",
                     "assign.run_local_steps", "assign.run_batch_size"})


def record_run_config(ckpt_dir: Path, run_config: Mapping[str, Any]) -> None:
    """Write the run's config beside its checkpoints (atomically)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{RUN_CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(_plain(run_config), indent=1, sort_keys=True))
    os.replace(tmp, ckpt_dir / RUN_CONFIG_FILE)


def check_resumable(ckpt_dir: Path, run_config: Mapping[str, Any]) -> None:
    """ConfigError listing the keys whose values differ from the checkpoints' run
    (nothing to compare against: checkpoints written before this check existed)."""
    path = ckpt_dir / RUN_CONFIG_FILE
    if not path.is_file():
        return
    old, new = json.loads(path.read_text()), _plain(run_config)
    changed = sorted(k for k in set(old) & set(new) if k not in RESUMABLE | DERIVED and old[k] != new[k])
    if changed:
        shown = "\n  - ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:12])
        more = f"\n  - ... and {len(changed) - 12} more" if len(changed) > 12 else ""
        raise ConfigError(
            f"resume: the checkpoints in {ckpt_dir} belong to a run with other settings; continuing would mix two "
            f"runs. Differences:\n  - {shown}{more}\nResume with the run's own settings (only "
            f"{', '.join(sorted(RESUMABLE - {'resume', 'run_dir', 'evaluator'}))} may change), or start afresh in "
            "another run directory.")


def _plain(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-comparable values (a list given as text and as a list compare equal)."""
    out = {}
    for k, v in run_config.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[str(k)] = list(v) if isinstance(v, tuple) else v
    return out
