"""The round loop over a fake grid, once per update kind: the loop is written once, and
each kind's exchange (downlink, screening, follow-ups) plugs into it. Counted: rejected
and missing replies, bytes both ways (every message of the round), follow-up requests."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, Message, MetricRecord, RecordDict

from client.methods.base import Update
from server.config import ServerConfig
from server.screening import ScreenConfig
from server.loop import payload_bytes, run_server
from strategies import seeds as sd
from strategies import wire
from strategies.codecs import CodecConfig, get_codec
from strategies.config import FedAvgConfig, FwdLLMConfig
from strategies.kinds.delta import decode_state, state_content
from strategies.kinds.seeds import seed_reply
from strategies.registry import build_strategy

INIT = {"w": torch.zeros(8), "b": torch.zeros(2)}
NODES = {101: 0, 102: 1, 103: 2}  # node id -> partition id


class FakeGrid:
    """Answers queries like Anther's ClientApp and train messages with ``train(pid, msg)``
    (None: the node does not answer)."""

    def __init__(self, train: Callable[[int, Message], Message | None]) -> None:
        self.train = train
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.bytes_up = 0  # measured as sent: screening decodes replies in place

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            pid = NODES[msg.metadata.dst_node_id]
            if msg.metadata.message_type == "query":
                content = state_content(INIT, get_codec("fp32")) if msg.content["config"]["op"] == "init" else RecordDict()
                content[wire.METRICS] = MetricRecord({wire.PARTITION_ID: pid})
                out.append(Message(content, reply_to=msg))
                continue
            self.sent.append(msg)
            reply = self.train(pid, msg)
            if reply is not None:
                self.received.append(reply)
                self.bytes_up += payload_bytes(reply)
                out.append(reply)
        return out


def _run(tmp_path, strategy_cfg, grid: FakeGrid) -> list[dict]:
    cfg = ServerConfig(
        strategy=strategy_cfg, codec=CodecConfig("fp16"), num_clients=3, clients_per_round=3, rounds=1, eval_every=0,
        run_dir=str(tmp_path), evaluator="",
    )
    strategy = build_strategy(cfg.strategy, seed=cfg.seed, rounds=cfg.rounds, local_steps=cfg.local_steps)
    run_server(grid, cfg, strategy, None)
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_delta_round_counts_rejections_missing_replies_and_bytes(tmp_path):
    def train(pid: int, msg: Message) -> Message | None:
        assert msg.content[wire.WIRE][wire.CODEC_KEY] == "fp16"  # the loop encoded the downlink with the run's codec
        state = {k: v + 1.0 for k, v in decode_state(msg).items()}
        if pid == 1:
            state["w"][0] = float("nan")
        if pid == 2:
            return None
        content = state_content(state, get_codec("fp16"))
        content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 0.5})
        return Message(content, reply_to=msg)

    grid = FakeGrid(train)
    (row,) = _run(tmp_path, FedAvgConfig(), grid)
    assert row["clients"] == 3 and row["failures"] == 2  # a NaN update and a node that never answered
    assert row["bytes_down"] == sum(payload_bytes(m) for m in grid.sent) > 0
    assert row["bytes_up"] == grid.bytes_up > 0
    assert row["train_loss"] == 0.5 and row["examples"] == 10
    from safetensors.numpy import load_file

    final = load_file(str(tmp_path / "checkpoints" / "round-0001" / "global.safetensors"))
    np.testing.assert_array_equal(final["w"], np.ones(8, dtype=np.float32))  # the one valid client's state


def test_seed_round_with_follow_ups(tmp_path):
    """FwdLLM asks the clients of its last request again while the variance is above
    its threshold (0 here: always, up to max_asks=1)."""
    asked: list[tuple[int, int]] = []

    def train(pid: int, msg: Message) -> Message | None:
        rc = dict(msg.content[wire.CONFIG])
        ask, n = int(rc[sd.ASK]), int(rc[sd.PERTURBATIONS])
        asked.append((pid, ask))
        scalars = np.full(n, 0.1 * (pid + 1) * (ask + 1), dtype=np.float32)
        if pid == 2:
            scalars[0] = np.nan  # rejected: never asked again
        metrics = {wire.NUM_EXAMPLES: 5 + pid, wire.TRAIN_LOSS: 1.0}
        return seed_reply(msg, Update(pairs=(np.arange(n), scalars)), rc, metrics)

    grid = FakeGrid(train)
    cfg = FwdLLMConfig(num_seeds=64, perturbations=2, variance_threshold=0.0, max_asks=1, candidates=1, scalar_bits=32)
    (row,) = _run(tmp_path, cfg, grid)
    assert sorted(asked) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert row["clients"] == 3 and row["failures"] == 1 and row["requests"] == 2
    assert row["bytes_down"] == sum(payload_bytes(m) for m in grid.sent) > 0  # both requests
    assert row["bytes_up"] == grid.bytes_up > 0
    assert not any(wire.ARRAYS in m.content.array_records for m in grid.received)  # seeds only, no tensors up
    assert row["pairs"] == 8 and row["examples"] == 5 + 6 + 5 + 6  # two clients x two requests


def test_unnamed_nodes_are_sampled_by_node_id(tmp_path, caplog):
    """A node whose ClientApp does not answer Anther's hello query still takes part."""
    from server.loop import discover

    class Mute(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            return [Message(RecordDict(), reply_to=m) for m in messages]

    fed = discover(Mute(lambda pid, msg: None), ServerConfig(num_clients=3, clients_per_round=3))
    assert fed.identities == sorted(NODES)
    assert "not reproducible" in caplog.text


def test_the_devices_nodes_declare_in_their_hello_replies_are_kept_by_identity():
    from server.loop import discover

    class Declaring(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            out = []
            for m in messages:
                content = RecordDict({wire.METRICS: MetricRecord({wire.PARTITION_ID: NODES[m.metadata.dst_node_id]})})
                if NODES[m.metadata.dst_node_id] != 0:
                    content[wire.DEVICE] = ConfigRecord({wire.DEVICE_NAME: "rpi5", wire.DEVICE_GFLOPS: 46.0,
                                                         wire.DEVICE_MEMORY_MB: 3000.0})
                out.append(Message(content, reply_to=m))
            return out

    fed = discover(Declaring(lambda pid, msg: None), ServerConfig(num_clients=3, clients_per_round=3))
    assert sorted(fed.devices) == [1, 2] and fed.devices[1][wire.DEVICE_NAME] == "rpi5"


@pytest.mark.parametrize("kind", ["delta", "seeds"])
def test_every_kind_is_registered_with_its_strategies_and_methods(kind):
    from client.methods import METHODS
    from strategies.kinds import KINDS
    from strategies.registry import STRATEGIES, update_kind

    assert kind in KINDS and KINDS[kind].name == kind
    assert METHODS.names(kind) and STRATEGIES.names(kind)
    for name in STRATEGIES.names(kind):  # the registry's kind is the built strategy's
        cfg = STRATEGIES[name].config(name=name)
        assert update_kind(build_strategy(cfg)) == kind, name
    for name in METHODS.names(kind):
        assert METHODS[name].resolve().kind == kind


# -- screening beyond each kind's checks (server/screening.py) ------------------------------------
def _delta_reply(msg: Message, state: dict, examples: int = 10, codec: str = "fp32") -> Message:
    rnd = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
    content = state_content(state, get_codec(codec), rnd)
    content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: examples, wire.TRAIN_LOSS: 0.5})
    return Message(content, reply_to=msg)


def _screened_run(tmp_path, train, **cfg_kwargs) -> tuple[list[dict], dict]:
    from safetensors.numpy import load_file

    cfg = ServerConfig(**{"strategy": FedAvgConfig(), "num_clients": 3, "clients_per_round": 3, "rounds": 1,
                          "eval_every": 0, "run_dir": str(tmp_path), "evaluator": "", **cfg_kwargs})
    run_server(FakeGrid(train), cfg, build_strategy(cfg.strategy), None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return rows, load_file(str(tmp_path / "checkpoints" / f"round-{cfg.rounds:04d}" / "global.safetensors"))


def _honest(msg: Message, step: float = 1.0) -> dict:
    return {k: v + step for k, v in decode_state(msg).items()}


@pytest.mark.parametrize("case, reason", [
    ("huge", "exceeds 10 x the round's median"),
    ("stale", "answers round 0, not round 1"),
    ("kind", "reply is a 'seeds' update"),
    ("oversized", "exceeds the limit"),
    ("undecodable", "undecodable tensors"),
    ("examples", "'num-examples' must be an integer"),
])
def test_each_screening_reason_rejects_the_reply_and_the_rest_is_aggregated(tmp_path, caplog, case, reason):
    from flwr.app import ConfigRecord

    def train(pid: int, msg: Message) -> Message:
        if pid != 0:
            return _delta_reply(msg, _honest(msg, 1.0 + pid))
        if case == "huge":
            return _delta_reply(msg, {k: torch.full_like(v, 1e30) for k, v in decode_state(msg).items()})
        reply = _delta_reply(msg, _honest(msg), examples=10**12 if case == "examples" else 10)
        if case in ("stale", "kind"):
            key, value = (wire.ROUND_KEY, 0) if case == "stale" else (wire.KIND_KEY, wire.KIND_SEEDS)
            reply.content[wire.WIRE] = ConfigRecord({**dict(reply.content[wire.WIRE]), key: value})
        if case == "oversized":
            reply.content[wire.ARRAYS]["w"] = Array(np.zeros(1 << 19, dtype=np.float32))
        if case == "undecodable":
            a = reply.content[wire.ARRAYS]["w"]
            reply.content[wire.ARRAYS]["w"] = Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=a.data[:9])
        return reply

    (row,), final = _screened_run(tmp_path, train)
    assert row["failures"] == row["rejected"] == 1 and row["examples"] == 20
    assert reason in caplog.text and "rejected client 0" in caplog.text
    np.testing.assert_allclose(final["w"], np.full(8, 2.5, dtype=np.float32))  # mean of the two honest clients


def test_too_few_valid_replies_ask_further_clients(tmp_path, caplog):
    asked: list[int] = []

    def train(pid: int, msg: Message) -> Message:
        asked.append(pid)
        state = _honest(msg)
        if pid == 0:
            state["w"][0] = float("nan")
        return _delta_reply(msg, state)

    # two of three clients per round; one of the first two sends NaN, so a third is asked
    rows, final = _screened_run(tmp_path, train, clients_per_round=2, screen=ScreenConfig(min_valid_replies=2),
                                rounds=2)
    assert all(r["clients"] + r["resampled"] >= 2 for r in rows)
    for r in rows:
        assert r["examples"] == 20  # always two valid updates aggregated
        assert r["resampled"] == (1 if r["failures"] else 0)
    assert sorted(set(asked)) == [0, 1, 2] and "asking 1 more client" in caplog.text


def test_a_round_that_stays_short_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    from server.screening import RoundFailed

    def train(pid: int, msg: Message) -> Message:
        state = _honest(msg)
        if pid != 0:
            state["w"][0] = float("nan")
        return _delta_reply(msg, state)

    cfg = ServerConfig(strategy=FedAvgConfig(), num_clients=3, clients_per_round=3, rounds=1, eval_every=0,
                       run_dir=str(tmp_path), evaluator="", screen=ScreenConfig(min_valid_replies=2, max_resamples=2))
    with pytest.raises(RoundFailed, match="round 1: 1 valid update.*min_valid_replies=2"):
        run_server(FakeGrid(train), cfg, build_strategy(cfg.strategy), None)
    assert not (tmp_path / "checkpoints" / "round-0001").exists()


def test_a_reply_without_a_train_loss_does_not_break_the_row(tmp_path):
    def train(pid: int, msg: Message) -> Message:
        reply = _delta_reply(msg, _honest(msg))
        if pid == 1:
            reply.content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: float("nan")})
        if pid == 2:
            reply.content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: 10})
        return reply

    (row,), _ = _screened_run(tmp_path, train)
    assert row["train_loss"] == 0.5 and row["failures"] == 0


def test_seed_replies_get_a_wider_norm_bound(tmp_path, caplog):
    """Scalars 20x the median pass (gradient norms differ across clients); 1e30 does not."""
    from strategies.config import SeedConfig

    def train(pid: int, msg: Message) -> Message:
        rc = dict(msg.content[wire.CONFIG])
        n = 4
        scalars = np.full(n, 0.1, dtype=np.float32) * {0: 1.0, 1: 20.0, 2: 1e30}[pid]
        return seed_reply(msg, Update(pairs=(np.arange(n), scalars)), rc, {wire.NUM_EXAMPLES: 5, wire.TRAIN_LOSS: 1.0})

    (row,) = _run(tmp_path, SeedConfig(num_seeds=64, scalar_bits=32), FakeGrid(train))
    assert row["failures"] == row["rejected"] == 1 and row["examples"] == 10
    assert "rejected client 2: update norm" in caplog.text
