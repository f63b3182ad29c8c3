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
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    ids = sorted(int(i) for i in ids)
    order = [ids[k] for k in np.random.default_rng(seed).permutation(len(ids))]  # node ids exceed int64: shuffle positions
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


# -- the run's settings and the server's strategy wrapper -----------------------------------------
@dataclass(frozen=True)
class SecAggConfig:
    """``secagg.name``: none, or secaggplus (delta updates summed under SecAgg+).

    threshold: the fraction of a round's clients that must stay to the end (at least 2);
    fewer and the round's sum cannot be recovered. degree: each client's neighbours
    (0: all others, the original SecAgg; else a Harary graph of that degree).
    clip_range, bits: the fixed-point encoding of each update coordinate.
    """

    name: str = "none"
    threshold: float = 0.5
    degree: int = 0
    clip_range: float = 1.0
    bits: int = 24

    def __post_init__(self) -> None:
        from strategies.runconfig import check

        check(0 < self.threshold <= 1, "secagg.threshold", "a fraction in (0, 1]", self.threshold)
        check(self.degree == 0 or self.degree >= 2, "secagg.degree", "0 (all) or an integer >= 2", self.degree)
        check(self.clip_range > 0, "secagg.clip_range", "a number > 0", self.clip_range)
        check(8 <= self.bits <= 32, "secagg.bits", "an integer in [8, 32]", self.bits)


def _registry() -> Any:
    from strategies.plugins import Registry

    reg = Registry("secagg", SecAggConfig)
    for name in ("none", "secaggplus"):
        reg.add(name, SecAggConfig, "strategies.secagg:SecAggStrategy")
    return reg


SECAGG = _registry()


@dataclass
class RoundSecAgg:
    """The server's view of one round's protocol."""

    ids: list[int]
    peers: dict[int, list[int]]
    threshold: int
    global_state: Mapping[str, np.ndarray]
    public: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    metrics: dict[int, Any] = field(default_factory=dict)
    first: dict[int, Any] = field(default_factory=dict)  # node -> its stage-0 reply
    routed: dict[int, dict[int, bytes]] = field(default_factory=dict)  # recipient -> sender -> ciphertext
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    shares: dict[int, dict[int, bytes]] = field(default_factory=dict)
    stage: int = 0


class SecAggStrategy:
    """A delta strategy (``inner``) fed the SecAgg+ sum of the round's updates as one
    reply; the round loop runs the ``secagg`` exchange (:mod:`strategies.kinds.secagg`)."""

    update_kind = "delta"  # what its clients' methods send
    exchange = "secagg"  # what the round loop runs

    def __init__(self, inner: Any, cfg: SecAggConfig, seed: int) -> None:
        self.inner, self.cfg, self.seed = inner, cfg, seed
        self.fixed = FixedPoint(cfg.clip_range, cfg.bits)
        self._rs: RoundSecAgg | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        return self.inner.aggregate_train(server_round, replies)

    def settings(self) -> dict[str, Any]:
        return {"secagg-clip-range": self.cfg.clip_range, "secagg-bits": self.cfg.bits, "secagg-seed": self.seed}

    def start_round(self, rnd: int, nodes: Sequence[int], global_state: Mapping[str, np.ndarray]) -> RoundSecAgg:
        n = len(nodes)
        degree = n - 1 if self.cfg.degree == 0 else min(self.cfg.degree, n - 1)
        threshold = max(2, math.ceil(self.cfg.threshold * n))
        self._rs = RoundSecAgg(sorted(nodes), neighbours(nodes, degree, self.seed + rnd), threshold, global_state)
        return self._rs

    # -- screening, per stage ----------------------------------------------------------------------
    def check_stage(self, rnd: int, reply: Any, stage: str, max_examples: int) -> str | None:
        from strategies import wire

        rs, node = self._rs, reply.metadata.src_node_id
        if reply.has_error():
            return wire.error_reason(reply)
        if rs is None or node not in rs.peers:
            return "a reply from a client not taking part in this round's secure aggregation"
        c = reply.content
        if stage == "keys":
            pub = c.config_records.get("secagg-public")
            if pub is None or not all(isinstance(pub.get(k), bytes) for k in ("c", "s")):
                return "stage 'keys': no public keys"
            n = c.metric_records.get(wire.METRICS, {}).get(wire.NUM_EXAMPLES)
            if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= max_examples:
                return f"'{wire.NUM_EXAMPLES}' must be an integer in [1, {max_examples}], got {n!r}"
            rs.public[node], rs.first[node] = (pub["c"], pub["s"]), reply
        elif stage == "shares":
            ciphers = c.config_records.get("secagg-ciphers")
            if ciphers is None or {int(k) for k in ciphers.keys()} - set(rs.peers[node]):
                return "stage 'shares': shares missing or addressed to clients that are not its neighbours"
            for j, blob in ciphers.items():
                rs.routed.setdefault(int(j), {})[node] = bytes(blob)
        elif stage == "masked":
            rec = c.array_records.get("secagg-masked")
            size = sum(int(np.prod(v.shape)) for v in rs.global_state.values()) + 1
            y = rec.get("y") if rec is not None else None
            if y is None or np.dtype(y.dtype) != np.dtype("<u8") or tuple(y.shape) != (size,):
                return f"stage 'masked': expected a uint64 vector of {size} values"
            rs.masked[node] = y.numpy()
        elif stage == "unmask":
            got = c.config_records.get("secagg-ciphers")
            if got is None:
                return "stage 'unmask': no shares"
            rs.shares[node] = {int(k): bytes(v) for k, v in got.items()}
        else:
            return f"a reply to an unknown stage ({stage})"
        return None

    def next_stage(self, rnd: int, latest: list[Any]) -> list[Any]:
        """The next stage's messages to the clients that answered the last one."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        from strategies import wire

        rs = self._rs
        rs.stage += 1
        alive = sorted(m.metadata.src_node_id for m in latest)
        if rs.stage >= 4 or len(alive) < rs.threshold:
            return []
        out = []
        for node in alive:
            config: dict[str, Any] = {wire.SERVER_ROUND: rnd, "secagg-stage": ("keys", "shares", "masked", "unmask")[rs.stage]}
            content = RecordDict()
            if rs.stage == 1:
                content["secagg-public"] = ConfigRecord({str(j): list(rs.public[j]) for j in rs.peers[node] if j in rs.public})
            elif rs.stage == 2:
                content["secagg-ciphers"] = ConfigRecord({str(j): b for j, b in rs.routed.get(node, {}).items() if j in alive})
            else:
                config["secagg-survivors"] = sorted(rs.masked)
                config["secagg-dropped"] = sorted({j for i in rs.masked for j in rs.routed.get(i, {})} - set(rs.masked))
            content[wire.CONFIG] = ConfigRecord(config)
            content[wire.WIRE] = ConfigRecord({wire.KIND_KEY: wire.KIND_SECAGG, wire.CODEC_KEY: "fp32"})
            out.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return out

    def sum_reply(self, rnd: int, valid: list[Any]) -> list[Any]:
        """The round's one reply for the inner strategy: ``global + mean update``, from
        the sum alone ([] when it cannot be recovered; logged)."""
        import logging

        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

        from strategies import wire

        rs = self._rs
        try:
            total = unmasked_sum(rs.masked, rs.public, rs.peers, rs.shares,
                                 {i: sorted(rs.routed.get(i, {})) for i in rs.masked}, rs.threshold)
        except (SecAggError, ValueError) as err:
            logging.getLogger("anther.server").warning("round %d: secure aggregation failed: %s", rnd, err)
            return []
        mean, weight = self.fixed.decode(total)
        arrays, pos = {}, 0
        for key in sorted(rs.global_state):
            g = np.asarray(rs.global_state[key], dtype=np.float64)
            arrays[key] = (g + mean[pos:pos + g.size].reshape(g.shape)).astype(np.float32)
            pos += g.size
        firsts = [rs.first[i] for i in sorted(rs.masked)]
        losses = [(float(m.content[wire.METRICS].get(wire.TRAIN_LOSS, np.nan)), int(m.content[wire.METRICS][wire.NUM_EXAMPLES]))
                  for m in firsts]
        metrics = {wire.NUM_EXAMPLES: weight}
        finite = [(v, k) for v, k in losses if np.isfinite(v)]
        if finite:
            metrics[wire.TRAIN_LOSS] = sum(v * k for v, k in finite) / sum(k for _, k in finite)
        content = RecordDict({wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              wire.METRICS: MetricRecord(metrics)})
        return [Message(content, reply_to=firsts[0])]

    def state_dict(self) -> dict[str, np.ndarray]:
        from strategies.state import get_strategy_state

        return get_strategy_state(self.inner)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        from strategies.state import set_strategy_state

        set_strategy_state(self.inner, state)


def wrap(strategy: Any, cfg: SecAggConfig, seed: int) -> Any:
    """``strategy`` fed by secure aggregation (as it is with ``secagg=none``)."""
    return strategy if cfg.name == "none" else SecAggStrategy(strategy, cfg, seed)
