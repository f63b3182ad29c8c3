"""The table of ``dist="gaussian16"``: a standard normal quantized to 65,536 levels.

A 16-bit uniform index ``k`` (half of a Philox word) maps to::

    T[k] = fl32(Phi^-1((k + 1/2) / 65536) / sigma),   k = 0 .. 65535

the midpoint quantiles of the normal distribution, scaled by ``sigma`` (the root mean
square of the 65,536 unscaled quantiles, 0.99999) so the distribution has mean 0 and
variance 1 up to the fp32 rounding (1 - 6e-10); ``T[65535 - k] = -T[k]`` bitwise. Its
largest value is 4.3250; the Kolmogorov distance to N(0, 1) is 1.0e-5 (< 1/65536); the
excess kurtosis is -0.0008. For zeroth-order and forward-gradient estimators, which need
``E[z z^T] = I`` and light tails, it is as good as an exact normal, and it costs one 16-bit
lookup instead of a logarithm, a square root and a sine per value: each Philox call
gives 8 values instead of Box-Muller's 4.

Values are data, not arithmetic: every backend reads the same bytes, so ``gaussian16``
is bitwise identical on every CPU, GPU, OS and backend (like ``rademacher``). The bytes
ship with the package (``gaussian16.f32``, little-endian fp32, 256 KiB; computed on first
use where the file is absent) and are checked against their SHA-256 on load; ``python -m kernels.perturb.gaussian16`` regenerates them
(Wichura's AS241 through :class:`statistics.NormalDist`, in fp64) and says whether they
changed.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
from pathlib import Path

import numpy as np

LEVELS = 1 << 16
PATH = Path(__file__).with_name("gaussian16.f32")
SHA256 = "8babbcaf96568f10165a1eab530c0e5c92d04de96761b6dbb3dadfa94baba37f"


def build() -> np.ndarray:
    """The table computed from scratch: (65536,) fp32, antisymmetric by construction."""
    from statistics import NormalDist

    inv = NormalDist().inv_cdf
    upper = [inv((k + 0.5) / LEVELS) for k in range(LEVELS // 2, LEVELS)]  # > 0
    sigma = math.sqrt(math.fsum(x * x for x in upper) / len(upper))  # both halves alike
    half = np.array([x / sigma for x in upper], dtype=np.float64).astype(np.float32)
    return np.concatenate([-half[::-1], half])


@functools.cache
def table() -> np.ndarray:
    """The shipped table, read-only, after its checksum. Where the file is absent (a Flower
    App package carries source files only) it is computed (about 0.1 s) and must match the
    same checksum."""
    data = PATH.read_bytes() if PATH.exists() else build().astype("<f4").tobytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(
            f"{PATH} is damaged (sha256 {digest}, expected {SHA256}); reinstall anther or run "
            "python -m kernels.perturb.gaussian16"
        )
    t = np.frombuffer(data, dtype="<f4").astype(np.float32)
    t.flags.writeable = False
    return t


def main() -> int:
    """Regenerate the file; print its SHA-256 and whether it matched the shipped one."""
    t = build()
    data = t.astype("<f4").tobytes()
    digest = hashlib.sha256(data).hexdigest()
    old = PATH.read_bytes() if PATH.exists() else b""
    PATH.write_bytes(data)
    print(f"{PATH}: {len(t)} values, max {t.max():.6f}, sha256 {digest}", "(unchanged)" if old == data else "(new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
