"""The reply frame: a 28-byte header and the scalars, fp32 or packed integer codes."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord

from strategies.seeds.keys import SCALAR_BITS

_HEADER = struct.Struct("<BBIiiHIff")  # version, bits, count, round, base, ask, examples, loss, scale
FRAME_VERSION = 1


def encode_scalars(scalar: np.ndarray, bits: int, rng: np.random.Generator) -> tuple[float, bytes]:
    """``(scale, payload)``: fp32 bytes for 32 bits, else symmetric integer codes
    ``c in [-q, q]`` (``q = 2**(bits-1) - 1``, ``scale = max|s| / q``) by stochastic rounding
    (``E[c * scale] = s``), stored as ``c + q`` little-endian (16, 8) or packed low bits first (4, 2)."""
    s = np.asarray(scalar, dtype=np.float64)
    if bits == 32:
        return 1.0, s.astype("<f4").tobytes()
    q = (1 << (bits - 1)) - 1
    amax = float(np.abs(s).max()) if len(s) else 0.0
    scale = float(np.float32(amax / q))
    if scale > 0:
        v = s / scale
        low = np.floor(v)
        codes = np.clip(low + (rng.random(len(v)) < v - low), -q, q).astype(np.int64)
    else:
        codes = np.zeros(len(s), dtype=np.int64)
    u = (codes + q).astype(np.uint16)
    if bits == 16:
        return scale, u.astype("<u2").tobytes()
    if bits == 8:
        return scale, u.astype(np.uint8).tobytes()
    per = 8 // bits
    u = np.concatenate([u, np.zeros(-len(u) % per, dtype=np.uint16)]).reshape(-1, per)
    packed = np.zeros(len(u), dtype=np.uint16)
    for i in range(per):
        packed |= u[:, i] << (bits * i)
    return scale, packed.astype(np.uint8).tobytes()


def decode_scalars(payload: bytes, count: int, bits: int, scale: float) -> np.ndarray:
    """Inverse of :func:`encode_scalars` (float64); ValueError if the payload does not fit."""
    if bits == 32:
        if len(payload) != 4 * count:
            raise ValueError(f"{len(payload)} payload bytes for {count} fp32 scalars")
        return np.frombuffer(payload, dtype="<f4").astype(np.float64)
    if bits not in SCALAR_BITS:
        raise ValueError(f"scalar width {bits} bits; expected one of {SCALAR_BITS}")
    q = (1 << (bits - 1)) - 1
    need = 2 * count if bits == 16 else -(-count * bits // 8)
    if len(payload) != need:
        raise ValueError(f"{len(payload)} payload bytes for {count} scalars of {bits} bits (expected {need})")
    if bits == 16:
        u = np.frombuffer(payload, dtype="<u2").astype(np.int64)
    elif bits == 8:
        u = np.frombuffer(payload, dtype=np.uint8).astype(np.int64)
    else:
        raw = np.frombuffer(payload, dtype=np.uint8).astype(np.int64)
        per, mask = 8 // bits, (1 << bits) - 1
        u = np.stack([(raw >> (bits * i)) & mask for i in range(per)], axis=1).reshape(-1)[:count]
    if (u > 2 * q).any():
        raise ValueError(f"scalar code above {2 * q}")
    return (u - q) * float(scale)


@dataclass
class ReplyFrame:
    """A seed reply on the wire: a 28-byte little-endian header (version, bits, count,
    round, base round, request, examples, mean train loss, scale) and the packed scalars.
    It names no seeds: its ``count`` scalars belong, in order, to the first ``count``
    pool indices the server assigned to this request (``zo-draw`` or ``zo-assigned``)."""

    round: int
    base: int
    ask: int
    num_examples: int
    loss: float
    scalar: np.ndarray  # float64, as the server decodes them
    bits: int = 32

    def to_bytes(self, rng: np.random.Generator) -> bytes:
        scale, payload = encode_scalars(self.scalar, self.bits, rng)
        head = _HEADER.pack(
            FRAME_VERSION, self.bits, len(self.scalar), self.round, self.base, self.ask, self.num_examples, self.loss, scale
        )
        return head + payload

    @classmethod
    def from_bytes(cls, raw: bytes) -> ReplyFrame:
        if not isinstance(raw, bytes) or len(raw) < _HEADER.size:
            raise ValueError(f"a frame needs at least {_HEADER.size} bytes")
        version, bits, count, rnd, base, ask, n, loss, scale = _HEADER.unpack_from(raw)
        if version != FRAME_VERSION:
            raise ValueError(f"frame version {version}, expected {FRAME_VERSION}")
        if not math.isfinite(scale):
            raise ValueError("non-finite scale")
        scalar = decode_scalars(raw[_HEADER.size :], count, bits, scale)
        return cls(rnd, base, ask, n, float(loss), scalar, bits)


def frame_record(frame: ReplyFrame, rng: np.random.Generator) -> ConfigRecord:
    return ConfigRecord({"f": frame.to_bytes(rng)})
