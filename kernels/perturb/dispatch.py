"""The public perturbation ops, declared once: validation, backend registry, dispatch.

A backend implements ``supports(params) -> bool``, ``perturb_(params, seed, alpha,
dist)`` and ``accumulate_(params, seeds, coeffs, dist)`` on validated inputs and must
match :mod:`kernels.perturb.reference` (bitwise for ``rademacher`` and ``gaussian16``,
within 1e-6 for ``gaussian``). ``backend="auto"`` takes the first fast backend that imports and
supports the tensors' device, else the reference, and logs that fallback once.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
from collections.abc import Sequence
from typing import Protocol

import torch

from kernels.perturb.reference import accumulate_ as _ref_accumulate
from kernels.perturb.reference import perturb_ as _ref_perturb
from kernels.rng import DISTS, SEED_LIMIT

log = logging.getLogger("anther.kernels")


class Backend(Protocol):
    name: str

    def supports(self, params: Sequence[torch.Tensor]) -> bool: ...
    def perturb_(self, params: Sequence[torch.Tensor], seed: int, alpha: float, dist: str) -> None: ...
    def accumulate_(
        self, params: Sequence[torch.Tensor], seeds: Sequence[int], coeffs: Sequence[float], dist: str
    ) -> None: ...


class TorchBackend:
    """The pure-torch reference: the specification; any device."""

    name = "torch"

    def supports(self, params: Sequence[torch.Tensor]) -> bool:
        return True

    def perturb_(self, params, seed, alpha, dist) -> None:
        _ref_perturb(params, seed, alpha, dist)

    def accumulate_(self, params, seeds, coeffs, dist) -> None:
        _ref_accumulate(params, seeds, coeffs, dist)


class _Lazy:
    """A backend imported on first use: ``module:Class``; ``error`` says why it is unusable."""

    def __init__(self, name: str, target: str, requirement: str):
        self.name, self._target, self._requirement = name, target, requirement
        self._impl: Backend | None = None
        self.error: str | None = None

    def load(self) -> Backend | None:
        if self._impl is None and self.error is None:
            module, cls = self._target.split(":")
            try:
                self._impl = getattr(importlib.import_module(module), cls)()
            except (ImportError, OSError) as e:  # not installed, or a broken native library
                self.error = f"{e} (install {self._requirement})"
        return self._impl

    def __getattr__(self, attr: str):  # BACKENDS["numba"].perturb_(...) works once importable
        impl = self.load()
        if impl is None:
            raise RuntimeError(f"backend {self.name!r} is unavailable: {self.error}")
        return getattr(impl, attr)


BACKENDS: dict[str, TorchBackend | _Lazy] = {
    "torch": TorchBackend(),
    "numba": _Lazy("numba", "kernels.perturb.numba_cpu:NumbaBackend", "numba"),
}
_FAST = ("numba",)  # auto's preference order
_logged: set[str] = set()


def _log_once(msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        log.warning(msg)


def resolve(backend: str, params: Sequence[torch.Tensor]) -> Backend:
    """The backend object ``backend`` names, or auto's choice for ``params``."""
    if backend == "auto":
        devices = sorted({p.device.type for p in params}) or ["cpu"]
        for name in _FAST:
            impl = BACKENDS[name].load()
            if impl is not None and impl.supports(params):
                return impl
        reasons = "; ".join(
            f"{n}: {BACKENDS[n].error or 'does not support device ' + ','.join(devices)}" for n in _FAST
        )
        _log_once(f"kernels: no fast backend for {','.join(devices)} tensors ({reasons}); using the torch reference")
        return BACKENDS["torch"]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(['auto', *BACKENDS])}")
    entry = BACKENDS[backend]
    impl = entry.load() if isinstance(entry, _Lazy) else entry
    if impl is None:
        raise RuntimeError(f"backend {backend!r} is unavailable: {entry.error}")
    if not impl.supports(params):
        devices = sorted({p.device.type for p in params})
        raise ValueError(f"backend {backend!r} does not support devices {devices}; use backend='auto' or 'torch'")
    return impl


def _check_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
        raise TypeError(f"params must be a list of tensors, got {type(params).__name__}")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] is a {type(p).__name__}, not a torch.Tensor")
        if not p.is_floating_point():
            raise ValueError(f"params[{i}] has dtype {p.dtype}; expected a floating dtype")
        if not p.is_contiguous():
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) is not contiguous; pass p.contiguous()")
    return list(params)


def _check_seed(seed, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{what} must be an int in [0, 2**63), got {seed!r}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{what}={seed} is outside [0, 2**63)")
    return int(seed)


def _check_scalar(value, what: str) -> float:
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        v = float(value)  # also numpy scalars and one-element tensors
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a finite float, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {v}")
    return v


def _check_dist(dist: str) -> str:
    if dist not in DISTS:
        raise ValueError(f"unknown dist {dist!r}; valid: {', '.join(DISTS)}")
    return dist


def perturb_(
    params: list[torch.Tensor], seed: int, alpha: float, dist: str = "gaussian16", backend: str = "auto"
) -> None:
    """In place, ``p += alpha * z(seed)`` over the tensors in order.

    ``z`` is indexed by the global element index across the list and drawn from the
    counter-based generator (Philox4x32-10, Salmon et al. 2011) in fp32, so one seed
    gives the same ``z`` on every device, OS, dtype and backend; the exact formula is
    in :mod:`kernels.perturb.reference`.

    Parameters
    ----------
    params : list of contiguous floating tensors (any shapes, one device).
    seed : int in ``[0, 2**63)``.
    alpha : finite float.
    dist : ``"gaussian16"`` (the default: N(0, 1) quantized to
        65,536 levels by a table of 16-bit uniforms: bitwise on every backend and the
        fastest Gaussian; :mod:`kernels.perturb.gaussian16`), ``"gaussian"`` (N(0, 1), fp64
        Box-Muller) or ``"rademacher"`` (+-1).
    backend : ``"auto"``, or a name in :data:`BACKENDS` (``"torch"``, ``"numba"``).

    Raises
    ------
    ValueError : unknown dist or backend (the message lists the valid ones), non-finite
        alpha, seed outside ``[0, 2**63)``, a non-floating or non-contiguous tensor, a
        backend that does not support the tensors' device.
    TypeError : params not a list of tensors, a seed that is not an int, alpha not a number.
    RuntimeError : a named backend that cannot be imported (e.g. numba not installed).
    """
    params, seed = _check_params(params), _check_seed(seed)
    alpha, dist = _check_scalar(alpha, "alpha"), _check_dist(dist)
    impl = resolve(backend, params)
    with torch.no_grad():
        impl.perturb_(params, seed, alpha, dist)


def accumulate_(
    params: list[torch.Tensor],
    seeds: Sequence[int],
    coeffs: Sequence[float],
    dist: str = "gaussian16",
    backend: str = "auto",
) -> None:
    """In place, ``p += sum_k coeffs[k] * z(seeds[k])`` in one tiled pass over ``p``.

    Each tile of ``p`` is read and written once: all seeds' ``coeffs[k] * z(seeds[k])``
    are summed (in order ``k``, in the compute dtype) into a tile buffer first. With one
    seed this is :func:`perturb_`. Parameters as in :func:`perturb_`; ``seeds`` and
    ``coeffs`` have the same length (duplicated seeds are allowed and add up).
    """
    params, dist = _check_params(params), _check_dist(dist)
    seeds = [_check_seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]
    coeffs = [_check_scalar(c, f"coeffs[{i}]") for i, c in enumerate(coeffs)]
    if len(seeds) != len(coeffs):
        raise ValueError(f"seeds and coeffs differ in length: {len(seeds)} vs {len(coeffs)}")
    impl = resolve(backend, params)
    if seeds:
        with torch.no_grad():
            impl.accumulate_(params, seeds, coeffs, dist)
