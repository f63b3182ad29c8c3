"""Wire codecs: trainable state (``dict[str, Tensor]``) <-> Flower ``ArrayRecord``.

Every codec tags what it produced (``Codec.name`` travels in the ``"wire"`` record) and
decodes back to fp32 tensors. numpy has no bfloat16, so ``bf16`` ships the raw 16-bit
patterns as ``uint16`` and restores them with ``Tensor.view``. Nothing is pickled.
torch and Flower are imported on first use, so configs can name a codec cheaply.

``fp32``, ``fp16`` and ``bf16`` cast each tensor, both ways, and a reply is the trained
state itself. The compressing codecs (``int8``, ``nf4``, ``topk``;
:mod:`strategies.compress`) are ``relative``: a reply carries the update against the
downlink as its client decoded it (:meth:`Codec.encode_update`), packed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

from strategies.plugins import Registry, import_string
from strategies.runconfig import check

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord


@dataclass(frozen=True)
class CodecConfig:
    """A codec's settings; ``name`` is its registry key (fp32, fp16 and bf16 take no others)."""

    name: str = "fp32"


BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class Int8Config(CodecConfig):
    """blocksize: values per fp32 scale."""

    name: str = "int8"
    blocksize: int = 256

    def __post_init__(self) -> None:
        check(self.blocksize in BLOCKSIZES, "codec.blocksize", f"one of {BLOCKSIZES}", self.blocksize)


@dataclass(frozen=True)
class NF4Config(Int8Config):
    """blocksize: values per fp32 scale."""

    name: str = "nf4"
    blocksize: int = 64


@dataclass(frozen=True)
class TopKConfig(CodecConfig):
    """density: the fraction of each tensor's update values sent, in (0, 1]."""

    name: str = "topk"
    density: float = 0.01

    def __post_init__(self) -> None:
        check(0 < self.density <= 1, "codec.density", "a number in (0, 1]", self.density)


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

    relative: ClassVar[bool] = False  # replies carry the update against the downlink, not the state

    def layout_reason(self, record: ArrayRecord, expected: Mapping[str, tuple[int, ...]]) -> str | None:
        """Why ``record`` is not :meth:`encode` of a state of ``expected`` shapes (None: it is)."""
        got = set(record.keys())
        if got != set(expected):
            missing, extra = sorted(set(expected) - got), sorted(got - set(expected))
            return f"tensor names differ from the global state (missing {missing[:3]}, unexpected {extra[:3]})"
        for key, arr in record.items():
            if tuple(arr.shape) != tuple(expected[key]):
                return f"tensor '{key}' has shape {tuple(arr.shape)}, expected {tuple(expected[key])}"
            if np.dtype(arr.dtype) != self.wire_dtype:
                return f"tensor '{key}' has dtype {arr.dtype}, expected {self.wire_dtype} for codec {self.name}"
        return None

    def encode_update(self, state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                      residual: Mapping[str, np.ndarray] | None = None) -> tuple[ArrayRecord, dict | None]:
        """A client's reply record for its trained ``state`` (``reference``: the downlink
        as it decoded it; ``residual``: what earlier rounds left unsent) and the residual
        to keep for the next round (None: nothing to keep). Default: :meth:`encode`."""
        return self.encode(state), None

    def update_layout_reason(self, record: ArrayRecord, expected: Mapping[str, tuple[int, ...]]) -> str | None:
        """Why a reply record does not fit ``expected`` shapes (None: it does)."""
        return self.layout_reason(record, expected)

    def decode_update(self, record: ArrayRecord, reference: Mapping[str, np.ndarray],
                      expected: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """The trained state a reply record stands for. Default: :meth:`decode`."""
        return self.decode(record)


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
CODECS.add("int8", Int8Config, "strategies.compress:build")
CODECS.add("nf4", NF4Config, "strategies.compress:build")
CODECS.add("topk", TopKConfig, "strategies.compress:build")
LOSSLESS_CASTS = ("fp32", "fp16", "bf16")  # per-tensor casts: every update kind can use them
BNB_CODECS = ("int8", "nf4")  # quantize with bitsandbytes


def get_codec(spec: str | CodecConfig) -> Codec:
    """The codec a config (or a name, with that codec's default settings) gives; a
    ConfigError listing the valid names for an unknown one."""
    cfg = spec if isinstance(spec, CodecConfig) else CODECS[spec].config(name=spec)
    target = CODECS[cfg.name].target
    return target if isinstance(target, Codec) else _build(target, cfg)


@lru_cache(maxsize=32)
def _build(target: str, cfg: Any) -> Codec:
    return import_string(target)(cfg)
