"""Codecs round-trip; reply validation rejects what it must."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from client.config import ClientConfig, ModelConfig
from server.config import ServerConfig
from strategies import wire
from strategies.codecs import LOSSLESS_CASTS, get_codec
from strategies.runconfig import ConfigError, flatten, unflatten
from strategies.kinds.delta import check_reply

STATE = {"a": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), "b": torch.tensor([1.5, -2.0])}


@pytest.mark.parametrize("name", LOSSLESS_CASTS)
def test_codec_roundtrip(name):
    codec = get_codec(name)
    out = codec.decode(codec.encode(STATE))
    tol = {"fp32": 0, "fp16": 1e-3, "bf16": 1e-2}[name]
    for k in STATE:
        assert out[k].dtype == torch.float32
        torch.testing.assert_close(out[k], STATE[k], atol=tol * 4, rtol=tol)
    if name == "fp32":
        assert all(torch.equal(out[k], STATE[k]) for k in STATE)


def test_unknown_codec():
    with pytest.raises(ConfigError, match="fp32"):
        get_codec("int3")


def _reply(arrays, n=5, codec="fp32", error=None):
    out = Message(RecordDict(), dst_node_id=1, message_type="train")
    if error:
        return Message(Error(code=1, reason=error), reply_to=out)
    content = RecordDict(
        {
            wire.ARRAYS: arrays,
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: n}),
            wire.WIRE: ConfigRecord({wire.CODEC_KEY: codec}),
        }
    )
    return Message(content, reply_to=out)


SHAPES = {"a": (3, 4), "b": (2,)}


def test_valid_reply_passes():
    decoded, reason = check_reply(_reply(get_codec("fp16").encode(STATE), codec="fp16"), SHAPES)
    assert reason is None and decoded.keys() == STATE.keys()


@pytest.mark.parametrize(
    "arrays, kwargs, match",
    [
        ({"a": np.zeros((3, 4), np.float32)}, {}, "missing"),
        ({"a": np.zeros((3, 3), np.float32), "b": np.zeros(2, np.float32)}, {}, "shape"),
        ({"a": np.zeros((3, 4), np.float64), "b": np.zeros(2, np.float32)}, {}, "dtype"),
        ({"a": np.full((3, 4), np.nan, np.float32), "b": np.zeros(2, np.float32)}, {}, "non-finite"),
        ({"a": np.zeros((3, 4), np.float32), "b": np.zeros(2, np.float32)}, {"n": 0}, "num-examples"),
        ({"a": np.zeros((3, 4), np.float32), "b": np.zeros(2, np.float32)}, {"codec": "zip"}, "codec"),
    ],
)
def test_bad_replies_rejected(arrays, kwargs, match):
    rec = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    assert match in check_reply(_reply(rec, **kwargs), SHAPES)[1]


def test_error_reply_rejected_with_reason():
    assert "boom" in check_reply(_reply(None, error="client 3: RuntimeError: boom\ntrace"), SHAPES)[1]


def test_runconfig_roundtrip():
    cfg = ClientConfig(model=ModelConfig(name="minilm", max_length=32), num_clients=7)
    flat = flatten(cfg)
    assert flat["model.name"] == "minilm" and flat["num_clients"] == 7
    assert flat["codec.name"] == "fp32" and flat["method.name"] == "lora" and flat["method.lora.r"] == 8
    assert unflatten(ClientConfig, flat) == cfg
    s = ServerConfig(num_clients=4, clients_per_round=2)
    assert unflatten(ServerConfig, flatten(s)) == s


def test_server_config_errors():
    with pytest.raises(ConfigError, match="clients_per_round"):
        ServerConfig(num_clients=3, clients_per_round=5)
