"""The ``secagg`` exchange: delta updates summed under SecAgg+ (:mod:`strategies.secagg`).

Four round trips per round, each a request of the round loop (``exchanges`` = 4):

0. ``keys``: down the global state (the run's codec), the client's neighbours, the
   threshold; the client trains, encodes its update ``d = trained - downlink`` as
   weighted fixed point (its ``num-examples`` the weight), and replies with its two
   public keys and its metrics.
1. ``shares``: down its neighbours' public keys; up one encrypted share per neighbour.
2. ``masked``: down the shares addressed to it; up its masked vector.
3. ``unmask``: down who sent masked vectors and who did not; up the shares that
   remove the masks.

The server then holds only the sum, from which it forms one reply, ``global + mean d``
with the round's total examples, for the inner delta strategy (FedAvg, FedAdam, ...).
A client that fails a stage leaves the round (counted in ``failures``); the round needs
``threshold`` clients to the end. The client keeps its protocol state between stages in
its ``Context.state``. What the server still sees per client: its example count and
metrics (loss, times), and that it took part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import wire
from strategies.codecs import Codec
from strategies.kinds.base import ClientCall, RoundExchange, UpdateKind, wire_record
from strategies.kinds.delta import decode_state, state_content
from strategies.secagg import FixedPoint, SecAggClient, SecAggError

STAGE, PEERS, THRESHOLD = "secagg-stage", "secagg-peers", "secagg-threshold"
CLIP_RANGE, BITS, SEED = "secagg-clip-range", "secagg-bits", "secagg-seed"
KEYS, SHARES, MASKED, UNMASK = "keys", "shares", "masked", "unmask"
PUBLIC, CIPHERS, VECTOR, SURVIVORS, DROPPED = "secagg-public", "secagg-ciphers", "secagg-masked", "secagg-survivors", "secagg-dropped"
STATE = "anther-secagg"  # Context.state: the client's protocol state for the round
ORDER = (KEYS, SHARES, MASKED, UNMASK)


# -- client protocol state <-> records -----------------------------------------------------------
def _save(state: Any, sc: SecAggClient, rnd: int, x: np.ndarray | None = None) -> None:
    from flwr.supercore.primitives.asymmetric import private_key_to_bytes

    owners = sorted(sc._held)
    pubs = sorted(sc._public)
    state[STATE] = ConfigRecord({
        "round": rnd, "node": sc.node, "peers": list(sc.peers), "threshold": sc.threshold,
        "c": private_key_to_bytes(sc._c), "s": private_key_to_bytes(sc._s), "b": sc._b,
        "pub-ids": pubs, "pub-c": [sc._public[j][0] for j in pubs], "pub-s": [sc._public[j][1] for j in pubs],
        "held-ids": owners, "held": [sc._held[o] for o in owners],
    })
    if x is not None:
        state[STATE + "-x"] = ArrayRecord({"x": Array(x)})


def _load(state: Any, rnd: int) -> tuple[SecAggClient, np.ndarray | None]:
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key

    rec = state.config_records.get(STATE)
    if rec is None or int(rec["round"]) != rnd:
        raise SecAggError(f"no secure-aggregation state for round {rnd} (this client missed an earlier stage)")
    sc = SecAggClient(int(rec["node"]), [int(p) for p in rec["peers"]], int(rec["threshold"]))
    sc._c, sc._s, sc._b = bytes_to_private_key(rec["c"]), bytes_to_private_key(rec["s"]), bytes(rec["b"])
    sc._public = {int(j): (bytes(c), bytes(s)) for j, c, s in zip(rec["pub-ids"], rec["pub-c"], rec["pub-s"])}
    sc._held = {int(o): bytes(b) for o, b in zip(rec["held-ids"], rec["held"])}
    xrec = state.array_records.get(STATE + "-x")
    return sc, (xrec["x"].numpy() if xrec is not None else None)


def _bytes_map(record: Mapping[str, Any]) -> dict[int, bytes]:
    return {int(k): bytes(v) for k, v in record.items()}


# -- client half ---------------------------------------------------------------------------------
def serve_secagg(call: ClientCall) -> Message:
    """One stage of the client's side (see the module docstring)."""
    cfg, msg = call.round_cfg, call.msg
    rnd, stage, node = int(cfg[wire.SERVER_ROUND]), str(cfg[STAGE]), int(msg.metadata.dst_node_id)
    content = RecordDict({wire.WIRE: wire_record(wire.KIND_SECAGG, "fp32", rnd)})
    if stage == KEYS:
        reference = decode_state(msg, call.codec)
        call.method.load_trainable_state(reference)
        update = call.train(cfg)
        d = np.concatenate([(update.state[k].detach().double() - reference[k].double()).reshape(-1).numpy()
                            for k in sorted(update.state)])
        metrics = call.metrics(update.metrics)
        rng = np.random.default_rng([int(cfg[SEED]), rnd, node & 0xFFFFFFFF, 0x5EC])  # stochastic rounding
        x = FixedPoint(float(cfg[CLIP_RANGE]), int(cfg[BITS])).encode(d, int(metrics[wire.NUM_EXAMPLES]), rng)
        sc = SecAggClient(node, [int(p) for p in cfg[PEERS]], int(cfg[THRESHOLD]))
        pc, ps = sc.keys()
        _save(call.state, sc, rnd, x)
        content[PUBLIC] = ConfigRecord({"c": pc, "s": ps})
        content[wire.METRICS] = MetricRecord(metrics)
    elif stage == SHARES:
        sc, _ = _load(call.state, rnd)
        public = {int(j): (bytes(v[0]), bytes(v[1])) for j, v in msg.content[PUBLIC].items()}
        ciphers = sc.shares(public)
        _save(call.state, sc, rnd)
        content[CIPHERS] = ConfigRecord({str(j): c for j, c in ciphers.items()})
    elif stage == MASKED:
        sc, x = _load(call.state, rnd)
        y = sc.masked(x, _bytes_map(msg.content[CIPHERS]))
        _save(call.state, sc, rnd)
        content[VECTOR] = ArrayRecord({"y": Array(y)})
    elif stage == UNMASK:
        sc, _ = _load(call.state, rnd)
        shares = sc.unmask([int(i) for i in cfg[SURVIVORS]], [int(i) for i in cfg[DROPPED]])
        del call.state.config_records[STATE]
        content[CIPHERS] = ConfigRecord({str(o): s for o, s in shares.items()})
    else:
        raise SecAggError(f"unknown secure-aggregation stage '{stage}'")
    return Message(content, reply_to=msg)


# -- server half ---------------------------------------------------------------------------------
class SecAggKind(UpdateKind):
    """Delta updates, summed under SecAgg+; paired with ``secagg=secaggplus``."""

    name = wire.KIND_SECAGG
    carries = wire.KIND_DELTA  # what the methods it serves send
    resamplable = False  # a round's clients share keys with one another

    def complete_downlink(self, ex: RoundExchange, messages: list[Message]) -> None:
        """Each client its own downlink: the global state, its neighbours, the settings."""
        if ex.codec.relative:
            raise SecAggError(f"codec={ex.codec.name} does not compose with secure aggregation; use fp32|fp16|bf16")
        state = state_content({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ex.global_state.items()}, ex.codec)
        rs = ex.strategy.start_round(ex.round, [m.metadata.dst_node_id for m in messages], ex.global_state)
        for pos, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            config = {**dict(msg.content[wire.CONFIG]), STAGE: KEYS, PEERS: rs.peers[node], THRESHOLD: rs.threshold,
                      **ex.strategy.settings()}
            content = RecordDict({wire.ARRAYS: state[wire.ARRAYS], wire.WIRE: wire_record(self.name, ex.codec.name),
                                  wire.CONFIG: ConfigRecord(config)})
            messages[pos] = Message(content, dst_node_id=node, message_type=msg.metadata.message_type)

    def screen(self, ex: RoundExchange, reply: Message, ask: int) -> str | None:
        return ex.strategy.check_stage(ex.round, reply, ORDER[ask] if ask < len(ORDER) else "?", ex.max_examples)

    def followups(self, ex: RoundExchange, valid: list[Message], latest: list[Message]) -> list[Message]:
        return ex.strategy.next_stage(ex.round, latest)

    def to_aggregate(self, ex: RoundExchange, valid: list[Message]) -> list[Message]:
        return ex.strategy.sum_reply(ex.round, valid)

    def serve(self, call: ClientCall) -> Message:
        return serve_secagg(call)

    def prepare(self, method: Any, initial_state: Callable[[], dict], msg: Message, round_cfg: dict) -> dict:
        raise NotImplementedError("the secagg kind serves its stages in serve()")

    def reply(self, msg: Message, update: Any, round_cfg: Mapping[str, Any], metrics: dict[str, Any], codec: Codec) -> Message:
        raise NotImplementedError("the secagg kind serves its stages in serve()")
