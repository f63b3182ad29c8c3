"""Wire codecs: trainable state (``dict[str, Tensor]``) <-> Flower ``ArrayRecord``.

Every codec tags what it produced (``Codec.name`` travels in the ``"wire"`` record) and
decodes back to fp32 tensors. numpy has no bfloat16, so ``bf16`` ships the raw 16-bit
patterns as ``uint16`` and restores them with ``Tensor.view``. Nothing is pickled.
torch and Flower are imported on first use, so configs can name a codec cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from strategies.plugins import Registry

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord


@dataclass(frozen=True)
class CodecConfig:
    """A codec's settings; ``name`` is its registry key (fp32, fp16 and bf16 take no others)."""

    name: str = "fp32"


@dataclass(frozen=True)
class Codec:
    """A named pair of per-tensor encode/decode functions and the numpy dtype on the wire."""

    name: str
    to_wire: Callable[[torch.Tensor], np.ndarray]
    from_wire: Callable[[np.ndarray], torch.Tensor]
    wire_dtype: np.dtype

    def encode(self, state: Mapping[str, torch.Tensor]) -> ArrayRecord:
        """Encode tensors in key order into an ArrayRecord."""
        from flwr.app import Array, ArrayRecord

        return ArrayRecord({k: Array(self.to_wire(v.detach().cpu())) for k, v in state.items()})

    def decode(self, record: ArrayRecord) -> dict[str, torch.Tensor]:
        """Decode an ArrayRecord produced by :meth:`encode` to fp32 tensors."""
        return {k: self.from_wire(a.numpy()) for k, a in record.items()}


def _fp32_to_wire(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy()


def _fp32_from_wire(a: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.array(a, dtype=np.float32))


def _fp16_to_wire(t: torch.Tensor) -> np.ndarray:
    return t.half().numpy()


def _fp16_from_wire(a: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.asarray(a)).float()


def _bf16_to_wire(t: torch.Tensor) -> np.ndarray:
    import torch

    return t.to(torch.bfloat16).view(torch.uint16).numpy()  # same bits, numpy-representable


def _bf16_from_wire(a: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint16)).view(torch.bfloat16).float()


CODECS = Registry("codec", CodecConfig)
for _codec in (
    Codec("fp32", _fp32_to_wire, _fp32_from_wire, np.dtype(np.float32)),
    Codec("fp16", _fp16_to_wire, _fp16_from_wire, np.dtype(np.float16)),
    Codec("bf16", _bf16_to_wire, _bf16_from_wire, np.dtype(np.uint16)),
):
    CODECS.add(_codec.name, CodecConfig, _codec)


def get_codec(name: str) -> Codec:
    """Return the registered codec ``name`` or raise ConfigError listing the valid ones."""
    return CODECS[name].target
