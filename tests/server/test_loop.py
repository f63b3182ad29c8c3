"""The round loop over a fake grid, once per update kind: the loop is written once, and
each kind's exchange (downlink, screening, follow-ups) plugs into it. Counted: rejected
and missing replies, bytes both ways (every message of the round), follow-up requests."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from client.methods.base import Update
from server.config import ServerConfig
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
