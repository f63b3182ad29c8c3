"""Compressing codecs (strategies/compress.py): round trips within their documented
error, packed updates against the downlink, error feedback, bytes, and layout checks."""


import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import wire
from strategies.codecs import Int8Config, NF4Config, TopKConfig, get_codec
from strategies.kinds.delta import check_reply
from strategies.runconfig import ConfigError

G = torch.Generator().manual_seed(0)
STATE = {"lora_A": torch.randn(8, 96, generator=G) * 0.05, "lora_B": torch.randn(96, 8, generator=G) * 0.01,
         "head.bias": torch.randn(4, generator=G)}
SHAPES = {k: tuple(v.shape) for k, v in STATE.items()}
HALF_GAP = {"int8": 0.0071, "nf4": 0.152}  # the largest rounding error, in units of the block's absmax


def _block_bound(x: torch.Tensor, blocksize: int, unit: float) -> torch.Tensor:
    flat = x.reshape(-1)
    absmax = torch.stack([flat[i:i + blocksize].abs().max() for i in range(0, flat.numel(), blocksize)])
    return (absmax.repeat_interleave(blocksize)[: flat.numel()] * unit).reshape(x.shape)


@pytest.mark.parametrize("cfg", [Int8Config(), NF4Config(), Int8Config(blocksize=64)])
def test_state_round_trip_within_half_a_level_of_each_block(cfg):
    codec = get_codec(cfg)
    out = codec.decode(codec.encode(STATE))
    assert codec.layout_reason(codec.encode(STATE), SHAPES) is None
    for k, v in STATE.items():
        assert out[k].shape == v.shape and out[k].dtype == torch.float32
        assert bool(((out[k] - v).abs() <= _block_bound(v, cfg.blocksize, HALF_GAP[cfg.name]) + 1e-7).all()), k


def _update(state, scale=1e-3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}


@pytest.mark.parametrize("cfg", [Int8Config(), NF4Config()])
def test_quantized_updates_are_rebuilt_on_the_downlink_the_client_decoded(cfg):
    codec = get_codec(cfg)
    sent = codec.decode(codec.encode(STATE))  # what the client trains from (the server decodes the same)
    trained = _update(sent)
    record, left = codec.encode_update(trained, sent)
    assert left is None and codec.update_layout_reason(record, SHAPES) is None
    back = codec.decode_update(record, {k: v.numpy() for k, v in sent.items()}, SHAPES)
    for k in STATE:
        d = trained[k] - sent[k]
        assert bool(((back[k] - trained[k]).abs() <= _block_bound(d, cfg.blocksize, HALF_GAP[cfg.name]) + 1e-7).all())


def test_packed_update_bytes_against_fp32():
    from server.loop import payload_bytes

    big = {f"layer{i}.lora_{ab}": torch.randn(8, 384) for i in range(12) for ab in "AB"}
    shapes = {k: tuple(v.shape) for k, v in big.items()}

    def size(record):
        return payload_bytes(Message(RecordDict({wire.ARRAYS: record}), dst_node_id=1, message_type="train"))

    fp32 = size(get_codec("fp32").encode(big))
    ref = {k: torch.zeros_like(v) for k, v in big.items()}
    ratios = {name: fp32 / size(get_codec(name).encode_update(big, ref)[0]) for name in ("int8", "nf4", "topk")}
    assert ratios["int8"] >= 3.9 and ratios["nf4"] >= 7.0 and ratios["topk"] >= 12.0, ratios
    assert get_codec("topk").update_layout_reason(get_codec("topk").encode_update(big, ref)[0], shapes) is None


def test_topk_sends_the_largest_and_error_feedback_keeps_the_rest():
    codec = get_codec(TopKConfig(density=0.25))
    ref = {"w": torch.zeros(8)}
    trained = {"w": torch.tensor([0.1, -5.0, 0.2, 3.0, 0.0, 0.3, -0.4, 0.05])}
    record, left = codec.encode_update(trained, ref)
    np.testing.assert_array_equal(record["#index"].numpy(), [1, 3])
    back = codec.decode_update(record, {"w": np.zeros(8, np.float32)}, {"w": (8,)})["w"]
    np.testing.assert_allclose(back.numpy(), [0, -5.0, 0, 3.0, 0, 0, 0, 0])
    np.testing.assert_allclose(left["w"], [0.1, 0, 0.2, 0, 0, 0.3, -0.4, 0.05], rtol=1e-6)
    # next round: a small update, but the residual's largest entries now win
    record, left2 = codec.encode_update({"w": torch.full((8,), 0.01)}, ref, left)
    np.testing.assert_array_equal(record["#index"].numpy(), [5, 6])
    sent_total = 0.0
    for r, rest in ((record, left2),):
        sent_total += float(r["#value"].numpy().sum()) + float(rest["w"].sum())
    assert sent_total == pytest.approx(float(left["w"].sum()) + 0.08, rel=1e-5)  # nothing lost: sent + kept


@pytest.mark.parametrize("name, corrupt, match", [
    ("int8", lambda r: r.__setitem__("#codes", Array(np.zeros(3, np.uint8))), "expected uint8"),
    ("int8", lambda r: r.__setitem__("#absmax", Array(np.full(r["#absmax"].shape, np.inf, np.float32))), "non-finite"),
    ("nf4", lambda r: r.__setitem__("extra", Array(np.zeros(1, np.float32))), "do not match the codec's layout"),
    ("topk", lambda r: r.__setitem__("#index", Array(np.full(r["#index"].shape, 10**6, np.int32))), "out of range"),
    ("topk", lambda r: r.__setitem__("#index", Array(np.zeros(r["#index"].shape, np.int32))), "repeats an index"),
    ("topk", lambda r: r.__setitem__("#value", Array(np.full(r["#value"].shape, np.nan, np.float32))), "non-finite"),
])
def test_malformed_packed_updates_are_rejected(name, corrupt, match):
    codec = get_codec(name)
    ref = {k: torch.zeros_like(v) for k, v in STATE.items()}
    record, _ = codec.encode_update(STATE, ref)
    corrupt(record)
    out = Message(RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=1, message_type="train")
    content = RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 5}),
                          wire.WIRE: ConfigRecord({wire.CODEC_KEY: name})})
    decoded, reason = check_reply(Message(content, reply_to=out), SHAPES, run_codec=codec,
                                  reference={k: v.numpy() for k, v in ref.items()})
    assert decoded is None and match in reason


def test_a_relative_reply_needs_the_downlink():
    codec = get_codec("int8")
    record, _ = codec.encode_update(STATE, {k: torch.zeros_like(v) for k, v in STATE.items()})
    out = Message(RecordDict(), dst_node_id=1, message_type="train")
    content = RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 5}),
                          wire.WIRE: ConfigRecord({wire.CODEC_KEY: "int8"})})
    assert "against the downlink" in check_reply(Message(content, reply_to=out), SHAPES)[1]


@pytest.mark.parametrize("make, match", [
    (lambda: Int8Config(blocksize=100), "codec.blocksize"),
    (lambda: TopKConfig(density=0.0), "codec.density"),
])
def test_bad_codec_settings(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize("cfg", [Int8Config(), NF4Config()])
def test_the_server_applies_an_update_to_the_exact_state_it_sent_not_to_the_rounded_downlink(cfg):
    from strategies.kinds import RoundExchange
    from strategies.kinds.delta import DeltaKind

    codec = get_codec(cfg)
    exact = {k: v.numpy() for k, v in STATE.items()}
    ex = RoundExchange(1, object(), None, exact, codec)
    msg = Message(RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=1, message_type="train")
    DeltaKind().complete_downlink(ex, [msg])
    sent = codec.decode(msg.content[wire.ARRAYS])  # the client trains from the rounded state
    trained = _update(sent)
    record, _ = codec.encode_update(trained, sent)
    content = RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 5}),
                          wire.WIRE: ConfigRecord({wire.CODEC_KEY: cfg.name})})
    decoded, reason = check_reply(Message(content, reply_to=msg), SHAPES, run_codec=codec, reference=ex.sent(1))
    assert reason is None and ex.sent(1) is exact
    for k in STATE:
        d = trained[k] - sent[k]
        err = decoded[k] - (STATE[k] + d)  # only the uplink's own rounding, none of the downlink's
        assert bool((err.abs() <= _block_bound(d, cfg.blocksize, HALF_GAP[cfg.name]) + 1e-6).all()), k
