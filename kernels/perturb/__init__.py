"""Seeded perturbation: ``p += alpha * z(seed)`` and multi-seed accumulation.

``reference`` (pure torch) is the specification; ``numba_cpu`` is the fast CPU backend;
``dispatch`` declares the ops once and picks the backend.
"""

from kernels.perturb.dispatch import BACKENDS, accumulate_, perturb_

__all__ = ["BACKENDS", "accumulate_", "perturb_"]
