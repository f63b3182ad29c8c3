"""Experiment tracking: mirror a run's metrics to TensorBoard, MLflow and/or W&B.

``logger=tensorboard|mlflow|wandb`` (several joined with ``,`` or ``+``) picks the
trackers. Everything is written offline by default:

* TensorBoard: event files in ``<run_dir>/tensorboard/`` (``tensorboard --logdir outputs``).
* MLflow: ``$MLFLOW_TRACKING_URI`` if set, else the local file store ``<cwd>/mlruns``
  (shared by the runs of a sweep); experiment = ``group`` or ``"anther"``.
* W&B: an offline run under ``<run_dir>/wandb/`` (``wandb sync <run_dir>/wandb/offline-run-*``);
  ``WANDB_MODE=online`` (set by the user) logs online instead.

The tracker libraries are imported only in :meth:`Trackers.open`, so importing this
module stays light. A tracker that fails (at start or while logging) is reported once on
the ``anther.trackers`` logger and disabled; training goes on. The ids needed to resume
(MLflow run id, W&B run id) are kept in ``<run_dir>/tracking.json``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlparse

from strategies.runconfig import ConfigError

log = logging.getLogger("anther.trackers")

TRACKERS = ("tensorboard", "mlflow", "wandb")
STATE_FILE = "tracking.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# tracker -> (importable module, human name)
_PACKAGES = {
    "tensorboard": ("tensorboard", "TensorBoard"),
    "mlflow": ("mlflow", "MLflow"),
    "wandb": ("wandb", "wandb"),
}


# --------------------------------------------------------------------------- config


def parse_logger(value: Any) -> tuple[str, ...]:
    """``logger`` value -> tracker names, in order, without duplicates.

    Accepts None/""/"none", a name, names joined with "," or "+", or a list/tuple of those.
    """
    if value is None or value is False:
        return ()
    if isinstance(value, str):
        parts = re.split(r"[,+]", value)
    elif isinstance(value, Iterable):
        parts = []
        for item in value:
            if item is None:
                continue
            if not isinstance(item, str):
                raise ConfigError(f"logger: expected tracker names, got {value!r}")
            parts.extend(re.split(r"[,+]", item))
    else:
        raise ConfigError(f"logger: expected a tracker name or a list of them, got {value!r}")
    names: list[str] = []
    for part in parts:
        name = part.strip().lower()
        if name in ("", "none", "null"):
            continue
        if name not in TRACKERS:
            raise ConfigError(
                f"logger={name!r} is not known; valid choices: none, {', '.join(TRACKERS)} "
                "(several joined with ',' or '+', e.g. logger=tensorboard,mlflow)"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def check_installed(names: Iterable[str]) -> None:
    """Raise ConfigError with the ``pip install`` hint when a tracker's package is missing."""
    names = parse_logger(names)
    missing = [n for n in names if not _has_module(_PACKAGES[n][0])]
    if missing:
        human = " and ".join(_PACKAGES[n][1] for n in missing)
        raise ConfigError(
            f"logger={','.join(missing)} needs {human}: pip install 'anther[{','.join(missing)}]'"
        )


def _has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: in sys.modules with __spec__ None
        return False


# --------------------------------------------------------------------------- helpers


def _plain(obj: Any) -> Any:
    """JSON-able copy of a config (dicts, DictConfig, dataclasses, lists, paths)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)) or (
        hasattr(obj, "__iter__") and hasattr(obj, "__len__") and not isinstance(obj, (str, bytes, dict))
    ):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _flatten(obj: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": leaf}``; lists stay as they are (leaves)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        full = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, full, sep))
        else:
            out[full] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(row: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float | int]:
    """Numeric leaves of a row (nested dicts flattened with '/'), bools and None left out."""
    return {
        k: v for k, v in _flatten(row, sep="/").items() if k not in skip and _is_number(v)
    }


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _split_summary(summary: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    numbers, texts = {}, {}
    for key, value in _flatten(_plain(dict(summary)), sep="/").items():
        if value is None:
            continue
        if _is_number(value):
            numbers[key] = value
        else:
            texts[key] = _as_text(value)
    return numbers, texts


def _config_text(config: Mapping[str, Any]) -> str:
    try:
        import yaml

        return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    except Exception:  # noqa: BLE001 - any YAML trouble: JSON will do
        return json.dumps(config, indent=2, default=str)


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    path = run_dir / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------- backends


class _Backend:
    name = ""
    state: dict[str, Any] | None = None  # saved to tracking.json under ``name``

    def log_row(self, step: int, metrics: dict[str, float | int]) -> None: ...

    def log_summary(self, step: int, numbers: dict[str, Any], texts: dict[str, str]) -> None: ...

    def log_files(self, step: int, images: list[Path], others: list[Path]) -> None: ...

    def close(self, failed: bool) -> None: ...


class _TensorBoard(_Backend):
    name = "tensorboard"

    def __init__(self, run_dir: Path, *, config: dict | None, resume: bool, **_: Any) -> None:
        from torch.utils.tensorboard import (
            SummaryWriter,  # needs the tensorboard package
        )

        self._cls = SummaryWriter
        self.logdir = run_dir / "tensorboard"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.state = {"logdir": str(self.logdir)}
        self._writer = None
        if not resume:  # a resumed run opens its writer at the first row (purging later steps)
            self._open(None)

    def _open(self, purge_step: int | None):
        if self._writer is None:
            self._writer = self._cls(log_dir=str(self.logdir), purge_step=purge_step)
            if self.config is not None:
                text = _config_text(self.config)
                self._writer.add_text("config", f"```yaml\n{text}\n```", 0)
                self._writer.flush()
        return self._writer

    def log_row(self, step, metrics):
        writer = self._open(step)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def log_summary(self, step, numbers, texts):
        from torch.utils.tensorboard.summary import hparams

        writer = self._open(None)
        metrics = {f"summary/{k}": v for k, v in numbers.items()}
        if self.config is not None:
            hp = {
                k: v if isinstance(v, (bool, int, float, str)) else _as_text(v)
                for k, v in _flatten(self.config).items()
                if v is not None
            }
            for summary in hparams(hp, metrics):
                writer.file_writer.add_summary(summary, step)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        if texts:
            table = "| key | value |\n|---|---|\n" + "".join(
                f"| {k} | {v.replace('|', '/')} |\n" for k, v in texts.items()
            )
            writer.add_text("summary", table, step)
        writer.flush()

    def log_files(self, step, images, others):
        if not images:
            return
        import numpy as np
        from PIL import Image

        writer = self._open(None)
        for path in images:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"))
            writer.add_image(f"figures/{path.stem}", array, step, dataformats="HWC")
        writer.flush()

    def close(self, failed):
        if self._writer is not None:
            self._writer.close()


_MLFLOW_KEY = re.compile(r"[^\w\-. /:]")


class _MLflow(_Backend):
    name = "mlflow"

    def __init__(
        self, run_dir: Path, *, run_name: str, group: str | None, config: dict | None,
        resume: bool, state: dict[str, Any], **_: Any,
    ) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").resolve().as_uri()
        scheme = urlparse(uri).scheme
        if scheme in ("", "file") or len(scheme) == 1:  # local file store (1 letter: a drive)
            # MLflow >= 3.7 refuses the file store ("maintenance mode") unless this is set.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
        except ImportError:  # pragma: no cover - old MLflow
            MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH = 500, 5000
        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self._param_len, self._tag_len = MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH
        self.client = client = MlflowClient(tracking_uri=uri)

        experiment_name = group or "anther"
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(experiment_name)
            except MlflowException:  # created concurrently by another run of the sweep
                experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment_id)

        run_id = self._find_run(experiment_id, run_name, state, uri) if resume else None
        existing: dict[str, str] = {}
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            existing = client.get_run(run_id).data.params
        else:
            tags = {"anther.run_dir": str(run_dir.resolve())}
            if group:
                tags["anther.group"] = group
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self.run_id = run_id
        self.state = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri}

        if config:
            values = {self._key(k): _as_text(v)[: self._param_len] for k, v in _flatten(config).items()}
            # params are immutable: a resumed run keeps the ones it has
            params = [Param(k, v) for k, v in values.items() if k not in existing]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i : i + 100])

    def _find_run(self, experiment_id: str, run_name: str, state: dict, uri: str) -> str | None:
        from mlflow.exceptions import MlflowException

        if state.get("run_id") and state.get("tracking_uri") == uri:
            try:
                run = self.client.get_run(state["run_id"])
                if run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active":
                    return run.info.run_id
            except MlflowException:
                pass
        quote = "'" if "'" not in run_name else '"'
        if quote in run_name:
            return None
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"attributes.run_name = {quote}{run_name}{quote}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    @staticmethod
    def _key(key: str) -> str:
        return _MLFLOW_KEY.sub("_", key)[:250]

    def _log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        batch = [self._Metric(self._key(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_row(self, step, metrics):
        self._log_metrics(step, metrics)

    def log_summary(self, step, numbers, texts):
        self._log_metrics(step, {f"summary/{k}": v for k, v in numbers.items()})
        tags = [self._RunTag(self._key(f"summary/{k}"), v[: self._tag_len]) for k, v in texts.items()]
        for i in range(0, len(tags), 100):
            self.client.log_batch(self.run_id, tags=tags[i : i + 100])

    def log_files(self, step, images, others):
        for path in images:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")
        for path in others:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, failed):
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class _WandB(_Backend):
    name = "wandb"

    def __init__(
        self, run_dir: Path, *, run_name: str, group: str | None, config: dict | None,
        resume: bool, state: dict[str, Any], **_: Any,
    ) -> None:
        import wandb

        self._wandb = wandb
        kwargs: dict[str, Any] = {
            "mode": os.environ.get("WANDB_MODE") or "offline",  # the user's explicit choice wins
            "dir": str(run_dir),
            "project": os.environ.get("WANDB_PROJECT") or "anther",
            "group": group,
            "name": run_name,
            "config": config,
            "settings": wandb.Settings(silent=True, console="off"),
        }
        if resume and state.get("id"):
            kwargs.update(id=state["id"], resume="allow")
        self.run = run = wandb.init(**kwargs)
        run.define_metric("round")
        run.define_metric("*", step_metric="round")  # resumed runs may log a round again
        self.state = {"id": run.id, "project": kwargs["project"], "dir": str(run.dir)}

    def log_row(self, step, metrics):
        self.run.log({"round": step, **metrics})

    def log_summary(self, step, numbers, texts):
        self.run.summary.update({**numbers, **texts})

    def log_files(self, step, images, others):
        if images:
            self.run.log(
                {"round": step, **{f"figures/{p.stem}": self._wandb.Image(str(p)) for p in images}}
            )
        files_dir = Path(self.run.dir)
        for path in others:
            # files/anther/<name>: W&B keeps its own config.yaml in files/. A copy (not
            # wandb.save's symlink): the file as it is now, and no warning printed.
            target = files_dir / "anther" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            self.run.save(str(target), base_path=str(files_dir), policy="now")

    def close(self, failed):
        self.run.finish(exit_code=1 if failed else 0)


_BACKENDS: dict[str, type[_Backend]] = {
    "tensorboard": _TensorBoard,
    "mlflow": _MLflow,
    "wandb": _WandB,
}


# --------------------------------------------------------------------------- facade


class Trackers:
    """The open trackers of one run; every call is a no-op once a tracker has failed."""

    def __init__(self, backends: Iterable[_Backend] = ()) -> None:
        self._backends: list[_Backend] = list(backends)
        self._step = 0
        self._closed = False

    @classmethod
    def open(
        cls,
        names: Any,
        run_dir: Path,
        *,
        run_name: str,
        group: str | None = None,
        config: dict | None = None,
        resume: bool = False,
        strict: bool = False,
    ) -> Trackers:
        """Start the trackers ``names`` (anything :func:`parse_logger` accepts).

        Raises ConfigError for an unknown name or a missing package. A tracker that fails
        to start is reported on the ``anther.trackers`` logger and left out (``strict``:
        raise instead).
        """
        names = parse_logger(names)
        if not names:
            return cls()
        check_installed(names)
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        plain_config = _plain(config) if config is not None else None
        state = _read_state(run_dir)
        backends: list[_Backend] = []
        for name in names:
            try:
                backend = _BACKENDS[name](
                    run_dir, run_name=str(run_name), group=group, config=plain_config,
                    resume=resume, state=state.get(name) or {},
                )
            except Exception as exc:
                if strict:
                    raise
                log.warning(
                    "logger=%s could not start (%s: %s); the run goes on without it",
                    name, type(exc).__name__, exc,
                )
                continue
            backends.append(backend)
            if backend.state is not None:
                state[name] = backend.state
        if any(b.state is not None for b in backends):
            try:
                _write_state(run_dir, state)
            except OSError as exc:
                log.warning("could not write %s: %s", run_dir / STATE_FILE, exc)
        return cls(backends)

    @property
    def names(self) -> tuple[str, ...]:
        """The trackers still logging."""
        return tuple(b.name for b in self._backends)

    def __bool__(self) -> bool:
        return bool(self._backends)

    def _each(self, method: str, *args: Any) -> None:
        for backend in list(self._backends):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker must never stop training
                log.warning(
                    "logger=%s failed in %s (%s: %s); it is disabled for the rest of the run",
                    backend.name, method, type(exc).__name__, exc,
                )
                self._backends.remove(backend)
                try:
                    backend.close(True)
                except Exception as close_exc:  # noqa: BLE001 - it is already broken
                    log.debug("logger=%s: close after failure: %s", backend.name, close_exc)

    def log_row(self, row: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` row: every numeric value at step ``row["round"]``."""
        if not self._backends:
            return
        step = row.get("round")
        step = int(step) if _is_number(step) and math.isfinite(step) else self._step + 1
        self._step = step
        metrics = _numbers(row, skip=("round",))
        if metrics:
            self._each("log_row", step, metrics)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Numbers as summary metrics, everything else (not None) as text/tags."""
        if not self._backends:
            return
        numbers, texts = _split_summary(summary)
        self._each("log_summary", self._step, numbers, texts)

    def log_files(self, paths: Iterable[str | os.PathLike]) -> None:
        """Images (.png/.jpg) as images, other files as artifacts; missing paths skipped."""
        if not self._backends:
            return
        files = [Path(p) for p in paths if p is not None and Path(p).is_file()]
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if files:
            self._each("log_files", self._step, images, others)

    def close(self, *, failed: bool = False) -> None:
        """Finish every tracker (idempotent); ``failed`` marks the runs as failed."""
        if self._closed:
            return
        self._closed = True
        backends, self._backends = self._backends, []
        for backend in backends:
            try:
                backend.close(failed)
            except Exception as exc:  # noqa: BLE001
                log.warning("logger=%s failed in close (%s: %s)", backend.name, type(exc).__name__, exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def __repr__(self) -> str:
        return f"Trackers({', '.join(self.names) or 'none'})"
