"""Validation of client replies before any aggregation.

A malformed or hostile update must never reach the aggregate: each reply is checked for
a Flower error, the expected record keys, the exact set of tensor names, their shapes
and wire dtype, finiteness and a positive example count. Rejections carry a reason that
the server logs with the client's id and counts in ``failures``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Message

from strategies import wire
from strategies.codecs import CODECS

_WIRE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}


def check_reply(
    msg: Message, expected: Mapping[str, tuple[int, ...]], max_examples: int = 10**9
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Validate a delta reply; return ``(decoded fp32 tensors, None)`` or ``(None, reason)``.

    Parameters
    ----------
    msg : Message
        A train reply.
    expected : Mapping[str, tuple[int, ...]]
        Tensor name -> shape of the global trainable state.
    max_examples : int
        Largest plausible ``num-examples`` (guards the weighting against inflation).

    The update is decoded once, here; the caller aggregates the returned tensors.
    """
    if msg.has_error():
        return None, f"client error: {msg.error.reason.strip().splitlines()[0] if msg.error.reason else msg.error.code}"
    content = msg.content
    for key, kind in ((wire.ARRAYS, "array_records"), (wire.METRICS, "metric_records")):
        if key not in getattr(content, kind):
            return None, f"reply has no '{key}' record"
    codec = content.config_records.get(wire.WIRE, {}).get("codec", "fp32")
    if codec not in CODECS:
        return None, f"unknown codec '{codec}'"
    n = content[wire.METRICS].get(wire.NUM_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= max_examples:
        return None, f"'{wire.NUM_EXAMPLES}' must be an integer in [1, {max_examples}], got {n!r}"
    arrays = content[wire.ARRAYS]
    got = set(arrays.keys())
    if got != set(expected):
        missing, extra = sorted(set(expected) - got), sorted(got - set(expected))
        return None, f"tensor names differ from the global state (missing {missing[:3]}, unexpected {extra[:3]})"
    want_dtype = np.dtype(_WIRE_DTYPES[codec])
    for key, arr in arrays.items():
        if tuple(arr.shape) != tuple(expected[key]):
            return None, f"tensor '{key}' has shape {tuple(arr.shape)}, expected {tuple(expected[key])}"
        if np.dtype(arr.dtype) != want_dtype:
            return None, f"tensor '{key}' has dtype {arr.dtype}, expected {want_dtype} for codec {codec}"
    decoded = CODECS[codec].decode(arrays)
    for key, t in decoded.items():
        if not bool(t.isfinite().all()):
            return None, f"tensor '{key}' has non-finite values"
    return decoded, None
