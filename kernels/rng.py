"""The counter-based generator every perturbation backend shares: Philox4x32-10.

Salmon, Moraes, Dror & Shaw (2011), "Parallel random numbers: as easy as 1, 2, 3"
(SC'11). One call maps a 128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key
``(k0, k1)`` (all uint32 words) to four uint32 words through 10 rounds of::

    hi0, lo0 = mulhilo32(M0, c0)        hi1, lo1 = mulhilo32(M1, c2)
    (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    (k0, k1) <- (k0 + W0, k1 + W1) mod 2**32

with ``M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85``; this is
Random123's ``philox4x32_R(10, ...)`` and Triton's ``tl.philox`` (tested against
Random123's known-answer vectors).

How Anther keys and counts (the layout every backend must reproduce):

- key ``(k0, k1) = (seed mod 2**32, seed >> 32)`` for a seed in ``[0, 2**63)``;
- counter ``(c mod 2**32, c >> 32, STREAMS[dist], 0)``; the third word separates the
  distributions' streams. Elements come in blocks of ``BLOCK_ELEMENTS[dist]`` made from
  ``BLOCK_COUNTERS[dist]`` consecutive counters: block ``b = i // BLOCK_ELEMENTS[dist]``
  of the global element index ``i`` uses counters ``b * BLOCK_COUNTERS[dist] + 0, 1, ...``
  (``gaussian``: 4 elements per counter; ``rademacher``: 128; ``gaussian16``: 64 elements
  from 8 counters, laid out so that 8-lane SIMD writes them without a transpose).

How the words become values is in :mod:`kernels.perturb.reference` (the specification).
This module is the scalar, pure-Python statement of the generator: slow, exact, and
what the vectorised backends are tested against.
"""

from __future__ import annotations

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
MASK32 = 0xFFFFFFFF
SEED_LIMIT = 1 << 63  # seeds are in [0, SEED_LIMIT): one int64 on every platform

DISTS = ("gaussian", "rademacher", "gaussian16")
STREAMS = {"gaussian": 0, "rademacher": 1, "gaussian16": 2}  # counter word c2
BLOCK_COUNTERS = {"gaussian": 1, "rademacher": 1, "gaussian16": 8}
BLOCK_ELEMENTS = {"gaussian": 4, "rademacher": 128, "gaussian16": 64}  # 4 words; 128 bits; 8 x 8 halves


def split_seed(seed: int) -> tuple[int, int]:
    """The Philox key ``(seed mod 2**32, seed >> 32)`` of a seed in ``[0, 2**63)``."""
    return seed & MASK32, seed >> 32


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """One Philox4x32-10 call on Python ints (uint32 words); the scalar specification."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(ROUNDS):
        p0, p1 = M0 * c0, M1 * c2  # exact 64-bit products
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return c0, c1, c2, c3
