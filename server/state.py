"""The whole server-side state of a run, and its atomic checkpoints.

``ServerState`` is the one serializable place for everything needed to continue a run
exactly: the global trainable state, the strategy's own state (optimizer moments, seed
histories, ...), the last completed round and the client sampler's RNG state.

Layout under ``<run_dir>/checkpoints/``::

    round-0003/global.safetensors     # trainable state after round 3 (fp32)
    round-0003/strategy.safetensors   # strategy state (may be empty)
    round-0003/state.json             # round, sampler RNG
    latest.json                       # {"round": 3, "dir": "round-0003"} (atomic)

Every file is fsync'd before it is renamed into place, and its folder after, so a power
loss leaves either the previous checkpoint or the new one, never a half-written one;
``latest.json`` is replaced last. Only the newest ``keep`` round folders are kept (0:
all), and leftovers of an interrupted write are removed on the next save.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file


@dataclass
class ServerState:
    """Everything a resumed server needs."""

    round: int
    global_state: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    sampler_state: dict[str, Any] = field(default_factory=dict)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    _fsync(path)


def write_durably(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (fsync'd file and folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def save_checkpoint(state: ServerState, ckpt_dir: Path, keep: int = 0) -> Path:
    """Write ``state`` as ``round-XXXX/`` and point ``latest.json`` at it, atomically and
    durably; then keep only the newest ``keep`` round folders (0: all)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".round-*"):  # an interrupted write's leftovers
        shutil.rmtree(stale, ignore_errors=True)
    name = f"round-{state.round:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=ckpt_dir))
    _save_arrays(state.global_state, tmp / "global.safetensors")
    _save_arrays(state.strategy_state, tmp / "strategy.safetensors")
    meta = {"round": state.round, "sampler_state": state.sampler_state}
    write_durably(tmp / "state.json", json.dumps(meta, indent=1))
    final = ckpt_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(ckpt_dir)
    write_durably(ckpt_dir / "latest.json", json.dumps({"round": state.round, "dir": name}))
    if keep > 0:
        rounds = sorted(p for p in ckpt_dir.glob("round-*") if p.is_dir() and p.name != name)
        for old in rounds[: max(0, len(rounds) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt_dir: Path) -> ServerState | None:
    """Load the state ``latest.json`` points at, or ``None`` if there is no checkpoint."""
    latest = ckpt_dir / "latest.json"
    if not latest.exists():
        return None
    folder = ckpt_dir / json.loads(latest.read_text())["dir"]
    meta = json.loads((folder / "state.json").read_text())
    return ServerState(
        round=int(meta["round"]),
        global_state=load_file(str(folder / "global.safetensors")),
        strategy_state=load_file(str(folder / "strategy.safetensors")),
        sampler_state=meta["sampler_state"],
    )
