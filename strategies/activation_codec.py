"""Wire codecs for split training's activations and their gradients (both directions).

``fp32``, ``fp16`` and ``bf16`` reuse the state codecs (:mod:`strategies.codecs`);
``int8`` stores each row (the last axis: one token's hidden vector) as int8 codes with
its own fp32 scale, ``x ~ q * s`` with ``s = max|x_row| / 127`` and
``q = round(x / s)`` in [-127, 127]: a quarter of fp32's bytes plus 4 bytes per token.
A tensor ``name`` travels as ``name`` (and ``name.scale`` for int8) in an ArrayRecord.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from strategies.codecs import get_codec

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord

ACTIVATION_CODECS = ("fp32", "fp16", "bf16", "int8")
SCALE = ".scale"


def wire_dtype(codec: str) -> np.dtype:
    """The numpy dtype of a tensor's codes on the wire."""
    return np.dtype(np.int8) if codec == "int8" else get_codec(codec).wire_dtype


def encode_into(record: ArrayRecord, name: str, tensor: torch.Tensor, codec: str) -> None:
    """Put ``tensor`` into ``record`` under ``name`` (and ``name.scale``) with ``codec``."""
    import torch
    from flwr.app import Array

    t = tensor.detach().float().cpu()
    if codec != "int8":
        record[name] = Array(get_codec(codec).to_wire(t))
        return
    scale = t.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127.0  # (..., 1)
    record[name] = Array((t / scale).round_().clamp_(-127, 127).to(torch.int8).numpy())
    record[name + SCALE] = Array(scale.numpy())


def check_encoded(record: ArrayRecord, name: str, codec: str, shape: tuple[int, ...] | None = None) -> str | None:
    """Why ``record[name]`` is not a ``codec`` encoding (of ``shape`` when given), or None."""
    if codec not in ACTIVATION_CODECS:
        return f"unknown activation codec '{codec}' (valid: {', '.join(ACTIVATION_CODECS)})"
    if name not in record:
        return f"no '{name}' tensor"
    arr = record[name]
    if np.dtype(arr.dtype) != wire_dtype(codec):
        return f"'{name}' has dtype {arr.dtype}, expected {wire_dtype(codec)} for activation codec {codec}"
    if shape is not None and tuple(arr.shape) != tuple(shape):
        return f"'{name}' has shape {tuple(arr.shape)}, expected {tuple(shape)}"
    if codec == "int8":
        scale = record.get(name + SCALE)
        if scale is None or tuple(scale.shape) != (*tuple(arr.shape)[:-1], 1) or np.dtype(scale.dtype) != np.float32:
            return f"'{name}' lacks its per-row float32 scale of shape {(*tuple(arr.shape)[:-1], 1)}"
    return None


def decode_from(record: ArrayRecord, name: str, codec: str) -> torch.Tensor:
    """The fp32 tensor ``encode_into`` stored (check it with :func:`check_encoded` first)."""
    import torch

    if codec != "int8":
        return get_codec(codec).from_wire(record[name].numpy())
    codes = torch.from_numpy(np.asarray(record[name].numpy())).float()
    return codes * torch.from_numpy(np.asarray(record[name + SCALE].numpy(), dtype=np.float32))
