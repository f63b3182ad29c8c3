"""Compressing wire codecs: ``int8`` and ``nf4`` blockwise quantization (bitsandbytes'
functional quantizers) and ``topk`` sparsification with error feedback.

Downlink: the global state, each tensor ``k`` self-described by ``k`` (codes),
``k#absmax`` (one fp32 scale per block) and ``k#shape``; ``topk`` sends the state in
fp32 (a sparse *state* is meaningless, and clients keep no copy to patch).

Uplink (``relative``): the client's update ``d = trained - reference``, where the
reference is the downlink exactly as the client decoded it; the server adds ``decoded(d)``
to the exact state it sent (its own fp32 global state, or the client's own view of it),
so the downlink's rounding never enters the global model (the client trains from the
rounded state; its update says where training took it from there), and only the
uplink's own quantization error remains. (Until 2026-12-04 the server added ``d`` to the
rounded downlink, so the global model was re-rounded every round: nf4 lost 1.4 points
on AG News that way, docs/results.md.) All tensors travel packed in sorted-name order, their sizes
known from the expected shapes, so an update costs one codes array and one scale (or
index) array, not one per tensor:

- int8: ``#codes`` uint8 (one per value; bitsandbytes' dynamic 8-bit map) and
  ``#absmax`` fp32 (one per ``blocksize`` values of each tensor): about 3.9x fewer bytes
  than fp32 at blocksize 256.
- nf4: ``#codes`` uint8 (two values per byte; the NF4 map) and ``#absmax`` fp32 (one per
  ``blocksize`` values): about 7x fewer at blocksize 64.
- topk: ``#index`` int32 and ``#value`` fp32, ``ceil(density * n)`` per tensor of ``n``
  values, the largest by magnitude of ``d + residual``; what is not sent stays in the
  residual, kept in the client's ``Context.state`` across rounds (error feedback, Stich
  et al. 2018; Karimireddy et al. 2019). A client's first round, or a change of shapes,
  starts from a zero residual.

Decoding checks the layout exactly (names, dtypes, lengths; indices in range and
distinct within a tensor; finite scales and values) and says what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from strategies.codecs import Codec, _fp32_from_wire, _fp32_to_wire

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord

CODES, ABSMAX, SHAPE, INDEX, VALUE = "#codes", "#absmax", "#shape", "#index", "#value"


def _sizes(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    return [(k, int(np.prod(shapes[k], dtype=np.int64))) for k in sorted(shapes)]


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _layout(record: ArrayRecord, want: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> str | None:
    got = set(record.keys())
    if got != set(want):
        return f"arrays {sorted(got)[:4]} do not match the codec's layout {sorted(want)[:4]}"
    for key, (dtype, shape) in want.items():
        arr = record[key]
        if np.dtype(arr.dtype) != dtype or tuple(arr.shape) != shape:
            return f"'{key}' is {arr.dtype}{tuple(arr.shape)}, expected {dtype}{shape}"
    return None


@dataclass(frozen=True)
class BlockCodec(Codec):
    """int8 / nf4 blockwise quantization (see the module docstring)."""

    blocksize: int = 256
    four_bit: bool = False
    relative = True

    # -- one flat fp32 vector <-> (codes, absmax) ---------------------------------------
    def _quantize(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        import bitsandbytes.functional as bnbf

        x = x.detach().reshape(-1).float().contiguous()
        if self.four_bit:
            codes, state = bnbf.quantize_4bit(x, blocksize=self.blocksize, quant_type="nf4")
        else:
            codes, state = bnbf.quantize_blockwise(x, blocksize=self.blocksize)
        return codes.reshape(-1).numpy(), state.absmax.float().numpy()

    def _dequantize(self, codes: np.ndarray, absmax: np.ndarray, n: int) -> torch.Tensor:
        import bitsandbytes.functional as bnbf
        import torch

        c, a = torch.from_numpy(np.ascontiguousarray(codes)), torch.from_numpy(np.ascontiguousarray(absmax, np.float32))
        if self.four_bit:
            state = bnbf.QuantState(absmax=a, shape=torch.Size([n]), code=_nf4_code(), blocksize=self.blocksize,
                                    quant_type="nf4", dtype=torch.float32)
            return bnbf.dequantize_4bit(c.reshape(-1, 1), state).reshape(-1)
        return bnbf.dequantize_blockwise(c, absmax=a, code=_dynamic_code(), blocksize=self.blocksize).reshape(-1)

    def _code_len(self, n: int) -> int:
        return (n + 1) // 2 if self.four_bit else n

    def _blocks(self, n: int) -> int:
        return math.ceil(n / self.blocksize)

    # -- downlink: per tensor, self-described ------------------------------------------
    def encode(self, state: Mapping[str, torch.Tensor]) -> ArrayRecord:
        out: dict[str, np.ndarray] = {}
        for key, t in state.items():
            out[key], out[key + ABSMAX] = self._quantize(t)
            out[key + SHAPE] = np.asarray(tuple(t.shape), dtype=np.int64)
        return _record(out)

    def decode(self, record: ArrayRecord) -> dict[str, torch.Tensor]:
        out = {}
        for key in [k for k in record.keys() if not k.endswith((ABSMAX, SHAPE))]:
            shape = tuple(int(s) for s in record[key + SHAPE].numpy())
            out[key] = self._dequantize(record[key].numpy(), record[key + ABSMAX].numpy(), int(np.prod(shape))).reshape(shape)
        return out

    def layout_reason(self, record: ArrayRecord, expected: Mapping[str, tuple[int, ...]]) -> str | None:
        want = {}
        for key, n in _sizes(expected):
            want[key] = (np.dtype(np.uint8), (self._code_len(n),))
            want[key + ABSMAX] = (np.dtype(np.float32), (self._blocks(n),))
            want[key + SHAPE] = (np.dtype(np.int64), (len(expected[key]),))
        reason = _layout(record, want)
        if reason is None:
            bad = [k for k in expected if tuple(record[k + SHAPE].numpy()) != tuple(expected[k])]
            reason = f"'{bad[0]}{SHAPE}' does not match the tensor's shape {tuple(expected[bad[0]])}" if bad else None
        return reason

    # -- uplink: the update, packed ----------------------------------------------------
    def encode_update(self, state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                      residual: Mapping[str, np.ndarray] | None = None) -> tuple[ArrayRecord, dict | None]:
        codes, scales = [], []
        for key in sorted(state):
            c, a = self._quantize(state[key].float() - _leading(reference[key], state[key].shape))
            codes.append(c)
            scales.append(a)
        return _record({CODES: np.concatenate(codes), ABSMAX: np.concatenate(scales).astype(np.float32)}), None

    def update_layout_reason(self, record: ArrayRecord, expected: Mapping[str, tuple[int, ...]]) -> str | None:
        sizes = _sizes(expected)
        want = {CODES: (np.dtype(np.uint8), (sum(self._code_len(n) for _, n in sizes),)),
                ABSMAX: (np.dtype(np.float32), (sum(self._blocks(n) for _, n in sizes),))}
        reason = _layout(record, want)
        if reason is None and not np.isfinite(record[ABSMAX].numpy()).all():
            reason = f"'{ABSMAX}' has non-finite scales"
        return reason

    def decode_update(self, record: ArrayRecord, reference: Mapping[str, np.ndarray],
                      expected: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        import torch

        codes, scales = record[CODES].numpy(), record[ABSMAX].numpy()
        out, c0, a0 = {}, 0, 0
        for key, n in _sizes(expected):
            c1, a1 = c0 + self._code_len(n), a0 + self._blocks(n)
            d = self._dequantize(codes[c0:c1], scales[a0:a1], n).reshape(expected[key])
            ref = torch.from_numpy(np.asarray(reference[key], dtype=np.float32)[tuple(slice(0, s) for s in expected[key])])
            out[key] = ref + d
            c0, a0 = c1, a1
        return out


@dataclass(frozen=True)
class TopKCodec(Codec):
    """top-k sparsified updates with error feedback (see the module docstring)."""

    density: float = 0.01
    relative = True

    def _k(self, n: int) -> int:
        return max(1, min(n, math.ceil(self.density * n)))

    def update_layout_reason(self, record: ArrayRecord, expected: Mapping[str, tuple[int, ...]]) -> str | None:
        sizes = _sizes(expected)
        m = sum(self._k(n) for _, n in sizes)
        reason = _layout(record, {INDEX: (np.dtype(np.int32), (m,)), VALUE: (np.dtype(np.float32), (m,))})
        if reason is not None:
            return reason
        index, value = record[INDEX].numpy(), record[VALUE].numpy()
        if not np.isfinite(value).all():
            return f"'{VALUE}' has non-finite values"
        i0 = 0
        for key, n in sizes:
            part = index[i0:i0 + self._k(n)]
            if part.size and (part.min() < 0 or part.max() >= n or np.unique(part).size != part.size):
                return f"'{INDEX}' of tensor '{key}' is out of range [0, {n}) or repeats an index"
            i0 += self._k(n)
        return None

    def encode_update(self, state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                      residual: Mapping[str, np.ndarray] | None = None) -> tuple[ArrayRecord, dict[str, np.ndarray]]:
        index, value, left = [], [], {}
        for key in sorted(state):
            d = (state[key].detach().float() - _leading(reference[key], state[key].shape)).reshape(-1).numpy()
            if residual is not None and key in residual and residual[key].shape == d.shape:
                d = d + residual[key]
            k = self._k(d.size)
            top = np.argpartition(np.abs(d), d.size - k)[d.size - k:] if k < d.size else np.arange(d.size)
            top = np.sort(top).astype(np.int32)
            index.append(top)
            value.append(d[top])
            rest = d.copy()
            rest[top] = 0.0
            left[key] = rest
        return _record({INDEX: np.concatenate(index), VALUE: np.concatenate(value).astype(np.float32)}), left

    def decode_update(self, record: ArrayRecord, reference: Mapping[str, np.ndarray],
                      expected: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        import torch

        index, value = record[INDEX].numpy(), record[VALUE].numpy()
        out, i0 = {}, 0
        for key, n in _sizes(expected):
            k = self._k(n)
            ref = np.array(np.asarray(reference[key], dtype=np.float32)[tuple(slice(0, s) for s in expected[key])])
            flat = ref.reshape(-1)
            flat[index[i0:i0 + k]] += value[i0:i0 + k]
            out[key] = torch.from_numpy(flat.reshape(expected[key]))
            i0 += k
        return out


def _leading(reference: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The reference's leading block of ``shape`` (a self-pruned LoRA rank replies smaller)."""
    return reference.float()[tuple(slice(0, s) for s in shape)]


def _dynamic_code() -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    return bnbf.create_dynamic_map().float()


def _nf4_code() -> torch.Tensor:
    import torch

    from bitsandbytes.functional import get_4bit_type

    return get_4bit_type("nf4", device=torch.device("cpu"))


def build(cfg: Any) -> Codec:
    """The codec ``cfg`` configures (int8 / nf4 / topk)."""
    f32 = np.dtype(np.float32)
    if cfg.name == "topk":
        return TopKCodec("topk", _fp32_to_wire, _fp32_from_wire, f32, density=cfg.density)
    return BlockCodec(cfg.name, _fp32_to_wire, _fp32_from_wire, np.dtype(np.uint8), blocksize=cfg.blocksize,
                      four_bit=cfg.name == "nf4")
