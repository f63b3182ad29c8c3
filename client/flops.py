"""Floating-point operations a client call actually ran, for simulated device time.

:class:`FlopCount` is a light ``TorchDispatchMode``: every aten op runs as usual, and
the ops that ``torch.utils.flop_counter`` knows (matrix products, convolutions,
attention) add their FLOPs, computed from the operands' shapes and cached per (op,
shapes). It counts what the call ran, forward and backward, whatever the method
(backprop, zeroth-order forwards, forward gradients, a split model's client part) and
the batch shapes. Element-wise ops are not counted (as in FLOP counts generally; they
are a few percent of a transformer's). It costs about 5% of a training step on this
machine (the full ``FlopCounterMode``, which also tracks modules: about 25%), and is
only entered when the run simulates devices (``device`` is not ``none``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def _key(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return tuple(_key(v) for v in x)
    return tuple(x.shape) if isinstance(x, torch.Tensor) else (x if isinstance(x, (int, float, bool, str, type(None))) else repr(x))


class FlopCount(TorchDispatchMode):
    """``with FlopCount() as fc: ...`` then ``fc.total``: the FLOPs of the ops run inside."""

    _cache: dict[tuple, int] = {}  # (op, operand shapes) -> FLOPs, shared by every count

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            key = (func, _key(args), _key(tuple(sorted(kwargs.items()))))
            flops = self._cache.get(key)
            if flops is None:
                flops = self._cache[key] = int(count(*args, **kwargs, out_val=out))
            self.total += flops
        return out

