"""The whole server-side state of a run, and its atomic checkpoints.

``ServerState`` is the one serializable place for everything needed to continue a run
exactly: the global trainable state, the strategy's own state (optimizer moments, seed
histories, ...), the last completed round and the client sampler's RNG state.

Layout under ``<run_dir>/checkpoints/``::

    round-0003/global.safetensors     # trainable state after round 3 (fp32)
    round-0003/strategy.safetensors   # strategy state (may be empty)
    round-0003/state.json             # round, sampler RNG
    latest.json                       # {"round": 3, "dir": "round-0003"} (atomic)
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


def _save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def save_checkpoint(state: ServerState, ckpt_dir: Path) -> Path:
    """Write ``state`` as ``round-XXXX/`` and point ``latest.json`` at it, atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"round-{state.round:04d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=ckpt_dir))
    _save_arrays(state.global_state, tmp / "global.safetensors")
    _save_arrays(state.strategy_state, tmp / "strategy.safetensors")
    meta = {"round": state.round, "sampler_state": state.sampler_state}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    final = ckpt_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = ckpt_dir / ".latest.json.tmp"
    latest_tmp.write_text(json.dumps({"round": state.round, "dir": name}))
    os.replace(latest_tmp, ckpt_dir / "latest.json")
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
