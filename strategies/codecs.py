"""Wire codecs: trainable state (``dict[str, Tensor]``) <-> Flower ``ArrayRecord``.

Every codec tags what it produced (``Codec.name`` travels in the ``"wire"`` record) and
decodes back to fp32 tensors. numpy has no bfloat16, so ``bf16`` ships the raw 16-bit
patterns as ``uint16`` and restores them with ``Tensor.view``. Nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from strategies.runconfig import check_choice


@dataclass(frozen=True)
class Codec:
    """A named pair of per-tensor encode/decode functions."""

    name: str
    to_wire: Callable[[torch.Tensor], np.ndarray]
    from_wire: Callable[[np.ndarray], torch.Tensor]

    def encode(self, state: Mapping[str, torch.Tensor]) -> ArrayRecord:
        """Encode tensors in key order into an ArrayRecord."""
        return ArrayRecord({k: Array(self.to_wire(v.detach().cpu())) for k, v in state.items()})

    def decode(self, record: ArrayRecord) -> dict[str, torch.Tensor]:
        """Decode an ArrayRecord produced by :meth:`encode` to fp32 tensors."""
        return {k: self.from_wire(a.numpy()) for k, a in record.items()}


def _bf16_to_wire(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.bfloat16).view(torch.uint16).numpy()  # same bits, numpy-representable


def _bf16_from_wire(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint16)).view(torch.bfloat16).float()


CODECS: dict[str, Codec] = {
    "fp32": Codec("fp32", lambda t: t.float().numpy(), lambda a: torch.from_numpy(np.array(a, dtype=np.float32))),
    "fp16": Codec("fp16", lambda t: t.half().numpy(), lambda a: torch.from_numpy(np.asarray(a)).float()),
    "bf16": Codec("bf16", _bf16_to_wire, _bf16_from_wire),
}


def get_codec(name: str) -> Codec:
    """Return the registered codec ``name`` or raise ConfigError listing the valid ones."""
    check_choice("codec", name, CODECS)
    return CODECS[name]
