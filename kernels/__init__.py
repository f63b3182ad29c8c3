"""Hot numeric primitives: a pure-torch reference per op plus faster backends.

- :func:`perturb_` ``(params, seed, alpha, dist="gaussian16", backend="auto")``: in place,
  ``p += alpha * z(seed)``, ``z`` from a counter-based generator (Philox4x32-10) keyed
  by (seed, global element index), the same on every device, dtype and backend.
- :func:`accumulate_` ``(params, seeds, coeffs, dist="gaussian16", backend="auto")``:
  ``p += sum_k coeffs[k] * z(seeds[k])`` in one tiled pass over ``p``.
- :data:`BACKENDS`: ``"torch"`` (the reference, :mod:`kernels.perturb.reference`) and
  ``"numba"`` (fast CPU); ``"auto"`` picks numba for CPU tensors when it imports.

Note: Hugging Face's optional ``kernels`` package shares this import name, and
bitsandbytes probes ``from kernels import get_kernel`` (on CPUs with AVX512-BF16),
falling back to its own kernels when that fails. Never define ``get_kernel`` here.
"""

from kernels.perturb import BACKENDS, accumulate_, perturb_
from kernels.rng import DISTS

__all__ = ["BACKENDS", "DISTS", "accumulate_", "perturb_"]
