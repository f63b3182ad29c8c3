"""Pure-torch reference backend: the specification of seeded perturbation.

Every backend must reproduce, for a seed ``s`` and the global element index ``i``
(tensor 0's elements first, then tensor 1's, ..., each tensor in row-major order):

**Words.** ``x_0..x_3 = Philox4x32-10(counter=(c mod 2**32, c >> 32, stream, 0),
key=(s mod 2**32, s >> 32))`` (Salmon et al. 2011, "Parallel random numbers: as easy
as 1, 2, 3"; :mod:`kernels.rng`), with ``c = i // 4, stream = 0`` for ``gaussian`` and
``c = i // 128, stream = 1`` for ``rademacher`` (``gaussian16``: below).

**gaussian** (Box-Muller, both outputs used). With ``u(x) = (x + 1/2) * 2**-32`` in
``(0, 1)`` (exact in fp64) and ``j = i mod 4``, ``m = j // 2``::

    r     = sqrt(-2 ln u(x_{2m}))
    theta = 2 pi u(x_{2m+1})
    z_i   = fl32(r cos theta)  if j is even,  fl32(r sin theta)  if j is odd

evaluated in fp64 and rounded once to fp32 (``fl32``). ``|z| <= 6.77``. Backends may
evaluate the fp64 formula with their own ``log``/``sin``/``cos``; they must agree with
this one within 1e-6 absolute (one fp32 ulp at the largest ``|z|`` is 4.8e-7).

**gaussian16** (a normal quantized to 65,536 levels, 64 elements from 8 counters; the
table ``T`` is :mod:`kernels.perturb.gaussian16`). Block ``b = i // 64`` uses counters
``c = 8 b + q``, ``q = 0..7``, stream 2; with ``r = i mod 64``, ``q = r mod 8``,
``j = r // 16``, ``h = (r // 8) mod 2``: ``z_i = T[(x_j(8 b + q) >> 16 h) & 0xFFFF]``
(the low half first). Bitwise the same on every backend.

**rademacher** (one bit per element, 128 elements per Philox call). With
``w = (i mod 128) // 32`` and ``b = i mod 32``: ``z_i = 1 - 2 * ((x_w >> b) & 1)``,
exactly +-1; backends agree bitwise.

**Update.** The compute dtype is fp64 for fp64 tensors and fp32 otherwise (fp16,
bf16, fp32); ``a = compute(alpha)``, ``z`` is cast to the compute dtype, and each
product is rounded before it is added (no fused multiply-add)::

    perturb_:     p <- dtype(compute(p) + fl(a * z(s)))
    accumulate_:  acc = 0;  acc <- acc + fl(c_k * z(s_k)) for k = 0, 1, ...
                  p <- dtype(compute(p) + acc)

so ``accumulate_`` with one seed is ``perturb_``, and a Rademacher update is bitwise the
same on every backend. Inputs are validated by :mod:`kernels.perturb.dispatch`; this
module runs on any device (int64 and fp64 ops; on MPS, which lacks fp64, ``z`` is drawn
on the CPU), in chunks of ``CHUNK`` elements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from kernels.rng import BLOCK_COUNTERS, BLOCK_ELEMENTS, M0, M1, MASK32, ROUNDS, STREAMS, W0, W1, split_seed

CHUNK = 1 << 18  # elements per step; bounds the int64/fp64 temporaries to ~20 MB
_TWO_POW_M32 = 2.0**-32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 tensors, fp32 for every other floating dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low uint32 words of ``a * m`` (``a`` int64 in [0, 2**32)), without
    overflowing int64: ``a*m = (a*m_hi + (a*m_lo >> 16)) * 2**16 + (a*m_lo mod 2**16)``."""
    t = a * (m & 0xFFFF)  # < 2**48
    s = a * (m >> 16) + (t >> 16)  # < 2**49
    return s >> 16, ((s & 0xFFFF) << 16) | (t & 0xFFFF)


def philox(c: torch.Tensor, stream: int, key: tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 words for block indices ``c`` (n,) int64 -> (n, 4) int64 in [0, 2**32)."""
    k0, k1 = key
    c0, c1 = c & MASK32, c >> 32
    c2, c3 = torch.full_like(c, stream), torch.zeros_like(c)
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return torch.stack((c0, c1, c2, c3), dim=1)


def _values(x: torch.Tensor, dist: str) -> torch.Tensor:
    """Words (n, 4) of whole blocks' counters -> the values of those blocks, fp32."""
    if dist == "gaussian16":
        halves = torch.stack((x & 0xFFFF, x >> 16), dim=2).view(-1, 8, 4, 2)  # (block, q, j, h)
        index = halves.permute(0, 2, 3, 1).reshape(-1)  # element 64 b + 16 j + 8 h + q
        return _table(x.device)[index]
    if dist == "gaussian":
        u = (x.double() + 0.5) * _TWO_POW_M32  # (n, 4), exact
        r = torch.sqrt(-2.0 * torch.log(u[:, 0::2]))  # (n, 2): from x0, x2
        theta = (2.0 * math.pi) * u[:, 1::2]  # (n, 2): from x1, x3
        z = torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=2)  # (n, 2, 2)
        return z.reshape(-1).float()  # element 4c + 2m + {0: cos, 1: sin}
    shifts = torch.arange(32, device=x.device)
    bits = (x.unsqueeze(2) >> shifts) & 1  # (n, 4, 32): element 128c + 32w + b
    return (1 - 2 * bits).reshape(-1).float()


@functools.cache
def _table(device: torch.device) -> torch.Tensor:
    """The gaussian16 table on ``device``: (65536,) fp32."""
    from kernels.perturb.gaussian16 import table

    return torch.from_numpy(table().copy()).to(device)


def draw(seed: int, start: int, numel: int, dist: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """``z(seed)`` at global element indices ``start .. start + numel - 1`` -> (numel,) fp32."""
    device = torch.device(device)
    if numel == 0:
        return torch.empty(0, device=device)
    work = torch.device("cpu") if device.type == "mps" else device  # MPS has no fp64
    per, counters = BLOCK_ELEMENTS[dist], BLOCK_COUNTERS[dist]
    first, last = start // per, (start + numel - 1) // per  # blocks
    c = torch.arange(first * counters, (last + 1) * counters, dtype=torch.int64, device=work)  # (n,)
    z = _values(philox(c, STREAMS[dist], split_seed(seed)), dist)  # (blocks * per,)
    lo = start - first * per
    return z[lo : lo + numel].to(device)


def _chunks(params: Sequence[torch.Tensor]):
    """(global offset, 1-D view) of each ``CHUNK``-element piece of the tensors, in order."""
    offset = 0
    for p in params:
        flat = p.view(-1)
        for s in range(0, flat.numel(), CHUNK):
            yield offset + s, flat[s : s + CHUNK]
        offset += flat.numel()


def _apply(view: torch.Tensor, delta: torch.Tensor) -> None:
    """``view <- dtype(compute(view) + delta)``; delta is in the compute dtype."""
    if view.dtype == delta.dtype:
        view.add_(delta)
    else:
        view.copy_(view.to(delta.dtype).add_(delta))


def _scalar(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (round to nearest even), as a Python float."""
    return torch.tensor(value, dtype=dtype).item()


def perturb_(params: Sequence[torch.Tensor], seed: int, alpha: float, dist: str) -> None:
    """``p += alpha * z(seed)`` in place; see the module docstring."""
    for offset, view in _chunks(params):
        cd = compute_dtype(view.dtype)
        z = draw(seed, offset, view.numel(), dist, view.device).to(cd)
        _apply(view, z.mul_(_scalar(alpha, cd)))


def accumulate_(params: Sequence[torch.Tensor], seeds: Sequence[int], coeffs: Sequence[float], dist: str) -> None:
    """``p += sum_k coeffs[k] * z(seeds[k])`` in place, one chunk at a time."""
    for offset, view in _chunks(params):
        cd = compute_dtype(view.dtype)
        acc = torch.zeros(view.numel(), dtype=cd, device=view.device)
        for seed, coeff in zip(seeds, coeffs):
            z = draw(seed, offset, view.numel(), dist, view.device).to(cd)
            acc.add_(z.mul_(_scalar(coeff, cd)))
        _apply(view, acc)
