"""Wire codecs for split training's activations and their gradients (both directions).

``fp32``, ``fp16`` and ``bf16`` reuse the state codecs (:mod:`strategies.codecs`);
``int8`` scales twice: each channel (the last axis) by its largest magnitude over the
tensor, ``c_j = max|x_:j|``, then each row (one token's hidden vector) of the
channel-normalised values by its own, ``s_i = max_j |x_ij / c_j| / 127``, and stores
``q_ij = round(x_ij / (c_j s_i))`` in [-127, 127]: ``x ~ q * s * c``. A quarter of fp32's
bytes plus 4 bytes per token and per channel. Transformer hidden states carry a few
outlier channels (MiniLM's largest channel maxima are 4-5x the median's) that a row
scale alone spends its 8 bits on: measured at the cut after block 2 of MiniLM on AG
News, the channel normalisation halves the activations' error (1.7% -> 0.8% relative)
and the error of the client's LoRA gradients (2.0% -> 0.8%).
A tensor ``name`` travels as ``name`` (and ``name.scale``, ``name.channel`` for int8) in
an ArrayRecord.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from strategies.codecs import get_codec

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord

ACTIVATION_CODECS = ("fp32", "fp16", "bf16", "int8")
SCALE, CHANNEL = ".scale", ".channel"


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
    channel = t.abs().reshape(-1, t.shape[-1]).amax(dim=0).clamp_min(1e-30)  # (d,)
    u = t / channel
    scale = u.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127.0  # (..., 1)
    record[name] = Array((u / scale).round_().clamp_(-127, 127).to(torch.int8).numpy())
    record[name + SCALE] = Array(scale.numpy())
    record[name + CHANNEL] = Array(channel.numpy())


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
        channel = record.get(name + CHANNEL)
        if channel is None or tuple(channel.shape) != tuple(arr.shape)[-1:] or np.dtype(channel.dtype) != np.float32:
            return f"'{name}' lacks its per-channel float32 scale of shape {tuple(arr.shape)[-1:]}"
        if not (np.isfinite(scale.numpy()).all() and np.isfinite(channel.numpy()).all()):
            return f"'{name}' has non-finite scales"
    return None


def decode_from(record: ArrayRecord, name: str, codec: str) -> torch.Tensor:
    """The fp32 tensor ``encode_into`` stored (check it with :func:`check_encoded` first)."""
    import torch

    if codec != "int8":
        return get_codec(codec).from_wire(record[name].numpy())
    codes = torch.from_numpy(np.asarray(record[name].numpy())).float()
    scale = torch.from_numpy(np.asarray(record[name + SCALE].numpy(), dtype=np.float32))
    return codes * scale * torch.from_numpy(np.asarray(record[name + CHANNEL].numpy(), dtype=np.float32))
