"""SecAgg+ (Bell et al., CCS 2020) protocol core: the server learns only the sum of the
clients' integer vectors, even when up to ``n - threshold`` clients drop after masking.

Built on Flower's primitives (``flwr.common.secure_aggregation``: ECDH key agreement
with HKDF, Fernet authenticated encryption, Shamir secret sharing), not on its legacy
workflow. This module is transport-free: each stage takes and returns plain bytes and
arrays, so the round loop can carry them in Flower messages.

Stages of one round, over the round's clients ``ids`` (each client's neighbours: a
``degree``-regular circulant graph over a seeded shuffle of ``ids``, i.e. a Harary graph
as in SecAgg+; ``degree >= n - 1`` is the complete graph of the original SecAgg):

0. ``keys``: each client makes two EC key pairs, ``c`` (to encrypt shares) and ``s``
   (to agree on pairwise masks), and sends both public keys.
1. ``shares``: each client draws a self-mask seed ``b`` and Shamir-splits ``b`` and its
   ``s`` private key ``threshold``-of-``degree + 1`` among itself and its neighbours;
   the share for ``j`` is encrypted with the key it agrees with ``j`` on ``c``.
2. ``masked``: each client adds to its vector ``x`` (uint64, all arithmetic mod 2**64)
   ``PRG(b)`` and, for every neighbour ``j`` still present, ``+PRG(s_ij)`` if its id is
   below ``j``'s and ``-PRG(s_ij)`` otherwise, and sends the result ``y``.
3. ``unmask``: the server names who sent ``y`` (survivors) and who did not (dropped);
   every survivor decrypts the shares it holds and returns its neighbours' ``b`` shares
   for survivors and ``s`` private-key shares for the dropped. With ``threshold`` shares
   of each, the server removes every survivor's ``PRG(b)`` and the pairwise masks
   survivors hold with dropped clients; the rest cancel in pairs.

PRG: AES-256 in counter mode keyed by SHA-256 of the seed (64-bit words). A client that
drops before ``masked`` simply does not count; below ``threshold`` survivors (or shares)
the round's aggregate cannot be recovered and :class:`SecAggError` says so.

What it protects: an honest-but-curious server (and up to ``threshold - 1`` colluding
clients with it) learns nothing about one client's vector beyond the sum. What it does
not: a malicious server that lies about who dropped in stage 3 (SecAgg+'s consistency
checks are not implemented), a client that sends a harmful but well-formed vector (the
server cannot screen or bound what it cannot see; only the fixed-point clipping range
limits each coordinate), or the sum itself (add DP for that).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

WORD = np.dtype("<u8")


class SecAggError(RuntimeError):
    """The round's sum cannot be recovered (too few survivors or shares)."""


def prg(seed: bytes, n: int) -> np.ndarray:
    """``n`` pseudo-random uint64 words from ``seed`` (AES-256-CTR, key = SHA-256(seed))."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = hashlib.sha256(seed).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    return np.frombuffer(enc.update(b"\0" * (8 * n)) + enc.finalize(), dtype=WORD).copy()


def neighbours(ids: Sequence[int], degree: int, seed: int) -> dict[int, list[int]]:
    """Each id's neighbours: a ``degree``-regular circulant graph over a seeded shuffle
    of ``ids`` (complete when ``degree >= len(ids) - 1``)."""
    order = [int(i) for i in np.random.default_rng(seed).permutation(sorted(ids))]
    n = len(order)
    if degree >= n - 1:
        return {i: [j for j in order if j != i] for i in order}
    half = max(1, degree // 2)
    out = {}
    for pos, i in enumerate(order):
        near = {order[(pos + d) % n] for d in range(1, half + 1)} | {order[(pos - d) % n] for d in range(1, half + 1)}
        out[i] = sorted(near)
    return out


def _ecdh() -> tuple[object, bytes]:
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

    sk, pk = generate_key_pairs()
    return sk, public_key_to_bytes(pk)


def _agree(sk: object, pk: bytes) -> bytes:
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key

    return generate_shared_key(sk, bytes_to_public_key(pk))


def _pack(owner: int, b_share: bytes, s_share: bytes) -> bytes:
    return owner.to_bytes(8, "little") + len(b_share).to_bytes(4, "little") + b_share + s_share


def _unpack(blob: bytes) -> tuple[int, bytes, bytes]:
    owner, k = int.from_bytes(blob[:8], "little"), int.from_bytes(blob[8:12], "little")
    return owner, blob[12:12 + k], blob[12 + k:]


@dataclass
class SecAggClient:
    """One client's side of one round (keep it between the round's stages)."""

    node: int
    peers: list[int]  # its neighbours
    threshold: int
    _c: object = None
    _s: object = None
    _b: bytes = b""
    _public: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    _held: dict[int, bytes] = field(default_factory=dict)  # owner -> the encrypted share this client holds

    def keys(self) -> tuple[bytes, bytes]:
        """Stage 0: the ``c`` and ``s`` public keys."""
        self._c, pc = _ecdh()
        self._s, ps = _ecdh()
        return pc, ps

    def shares(self, public: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Stage 1: given its neighbours' public keys, the encrypted share for each."""
        from flwr.common.secure_aggregation.crypto.shamir import create_shares
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt
        from flwr.supercore.primitives.asymmetric import private_key_to_bytes

        self._public = {j: tuple(public[j]) for j in self.peers if j in public}
        if len(self._public) + 1 < self.threshold:
            raise SecAggError(f"client {self.node}: {len(self._public)} neighbours left, below threshold {self.threshold}")
        self._b = secrets.token_bytes(32)
        holders = [self.node, *sorted(self._public)]
        b_sh = create_shares(self._b, self.threshold, len(holders))
        s_sh = create_shares(private_key_to_bytes(self._s), self.threshold, len(holders))
        out = {}
        for holder, bs, ss in zip(holders, b_sh, s_sh):
            blob = _pack(self.node, bs, ss)
            if holder == self.node:
                self._held[self.node] = blob
            else:
                out[holder] = encrypt(_agree(self._c, self._public[holder][0]), blob)
        return out

    def masked(self, x: np.ndarray, received: Mapping[int, bytes]) -> np.ndarray:
        """Stage 2: ``x`` (uint64) masked; ``received``: the shares its neighbours sent it
        (their senders are the neighbours still present)."""
        self._held.update({j: c for j, c in received.items() if j in self._public})
        y = np.asarray(x, dtype=WORD) + prg(self._b, x.size).reshape(x.shape)
        for j in sorted(set(received) & set(self._public)):
            mask = prg(_agree(self._s, self._public[j][1]), x.size).reshape(x.shape)
            y = y + mask if self.node < j else y - mask
        return y

    def unmask(self, survivors: Sequence[int], dropped: Sequence[int]) -> dict[int, bytes]:
        """Stage 3: owner -> its ``b`` share (survivors) or ``s`` key share (dropped)."""
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt

        out = {}
        alive, gone = set(survivors), set(dropped)
        for owner, blob in self._held.items():
            if owner not in alive | gone:
                continue
            plain = blob if owner == self.node else decrypt(_agree(self._c, self._public[owner][0]), blob)
            got_owner, b_share, s_share = _unpack(plain)
            if got_owner != owner:
                raise SecAggError(f"client {self.node}: a share claims owner {got_owner}, sent by {owner}")
            out[owner] = b_share if owner in alive else s_share
        return out


def unmasked_sum(masked: Mapping[int, np.ndarray], public: Mapping[int, tuple[bytes, bytes]],
                 peers: Mapping[int, Sequence[int]], shares: Mapping[int, Mapping[int, bytes]],
                 shared_with: Mapping[int, Sequence[int]], threshold: int) -> np.ndarray:
    """The server's stage 3: the sum (mod 2**64) of the survivors' vectors.

    masked: survivor -> ``y``. public: client -> its public keys. peers: the graph.
    shares: responder -> (owner -> share) from :meth:`SecAggClient.unmask`.
    shared_with: client -> the neighbours that received its shares in stage 1 (those a
    dropped client's pairwise masks were applied against).
    """
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key

    survivors = sorted(masked)
    if len(survivors) < threshold:
        raise SecAggError(f"{len(survivors)} clients sent masked vectors, below the threshold {threshold}")
    by_owner: dict[int, list[bytes]] = {}
    for got in shares.values():
        for owner, share in got.items():
            by_owner.setdefault(owner, []).append(share)
    dropped = sorted({j for i in survivors for j in shared_with.get(i, ())} - set(survivors))
    shape = next(iter(masked.values())).shape
    total = np.zeros(shape, dtype=WORD)
    for i in survivors:
        total = total + masked[i]
    for owner in [*survivors, *dropped]:
        if len(by_owner.get(owner, [])) < threshold:
            raise SecAggError(f"{len(by_owner.get(owner, []))} shares of client {owner}'s secret, below the "
                              f"threshold {threshold}")
    n = int(np.prod(shape))
    for i in survivors:
        total = total - prg(combine_shares(by_owner[i][:threshold]), n).reshape(shape)
    for j in dropped:
        s_j = bytes_to_private_key(combine_shares(by_owner[j][:threshold]))
        for i in survivors:
            if j in shared_with.get(i, ()) and i in peers.get(j, ()):
                mask = prg(_agree(s_j, public[i][1]), n).reshape(shape)
                total = total - mask if i < j else total + mask  # undo what survivor i added for the pair (i, j)
    return total


@dataclass(frozen=True)
class FixedPoint:
    """Weighted fixed-point encoding of float updates for secure summation.

    Each coordinate is clipped to [-clip_range, clip_range] and stochastically rounded to
    ``bits`` bits; a client sends ``weight * q`` and its weight, so the sum gives the
    weighted mean. ``bits`` and the weights must keep the sum below 2**64.
    """

    clip_range: float = 1.0
    bits: int = 24

    @property
    def scale(self) -> float:
        return (2**self.bits - 1) / (2 * self.clip_range)

    def encode(self, x: np.ndarray, weight: int, rng: np.random.Generator) -> np.ndarray:
        v = (np.clip(np.asarray(x, dtype=np.float64), -self.clip_range, self.clip_range) + self.clip_range) * self.scale
        q = np.floor(v + rng.random(v.shape)).astype(WORD)  # unbiased stochastic rounding
        return np.concatenate([q.reshape(-1) * WORD.type(weight), np.asarray([weight], dtype=WORD)])

    def decode(self, total: np.ndarray) -> tuple[np.ndarray, int]:
        """(the weighted mean, the total weight) from a sum of :meth:`encode` outputs."""
        weight = int(total[-1])
        if weight <= 0:
            raise SecAggError("the secure sum carries no weight")
        return total[:-1].astype(np.float64) / weight / self.scale - self.clip_range, weight
