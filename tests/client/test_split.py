"""Split training on tiny models: the parts hold only their tensors; one split step gives
the unsplit model's gradients (vanilla and U-shaped, encoder and decoders); the message
protocol (the activations kind's client half and the SplitFed strategies) reproduces the
in-process reference exactly; the activation codecs."""

import dataclasses
import itertools
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client.backbones import load_backbone
from client.batches import batch_iterator, encode, forward_loss
from client.config import ClientConfig, DataConfig, ModelConfig
from client.methods import METHODS, build_method
from client.methods.split import SERVER
from client.split_server import ServerPart
from strategies import activation_codec as ac
from strategies import wire
from strategies.codecs import get_codec
from strategies.kinds import ClientCall, RoundExchange, get_kind
from strategies.kinds import activations as sk
from strategies.registry import RunInfo
from strategies.runconfig import ConfigError, flatten

TEXTS = ["the match ended in a draw", "new chip doubles speed", "stocks fell sharply", "talks resume in geneva"] * 4
LABELS = [0, 1, 2, 3] * 4
NAMES = ("sports", "science", "business", "world")
CASES = [("tiny-bert", "auto"), ("tiny-llama", "auto"), ("tiny-llama", "classification")]


def _cfg(model="tiny-bert", task="auto", u=False, **method):
    return ClientConfig(
        model=ModelConfig(name=model, task=task, max_length=64 if model == "tiny-bert" else 160, layers=4),
        data=DataConfig(label_names=NAMES),
        method=METHODS["split"].config(r=4, cut=1, u_shaped=u, tail=1, **method),
        batch_size=4, lr=0.1,
    )


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _client(cfg):
    backbone = load_backbone(cfg.model, cfg.quant, len(NAMES), cfg.method.prune())
    return backbone, build_method("split", backbone, cfg)


def _batches(backbone, cfg, seed=0):
    data = encode(backbone.task, backbone.tokenizer, TEXTS, LABELS, NAMES, cfg.model.max_length)
    return batch_iterator(data, cfg.batch_size, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("u", [False, True], ids=["vanilla", "u_shaped"])
@pytest.mark.parametrize("model, task", CASES)
def test_one_split_step_gives_the_unsplit_gradients(model, task, u):
    cfg = _cfg(model, task, u, optimizer="sgd", grad_clip=0.0)
    backbone, client = _client(cfg)
    server = ServerPart(flatten(cfg))
    full_cfg = dataclasses.replace(cfg, method=cfg.method.evaluation_method())
    full = build_method("lora", load_backbone(full_cfg.model, full_cfg.quant, len(NAMES)), full_cfg)
    for m in (client.model, server.model, full.model):
        _no_dropout(m)
    start = {**client.trainable_state(), **server.state()}
    assert start.keys() == full.trainable_state().keys()  # the parts compose into the unsplit LoRA model
    full.load_trainable_state(start)
    batch = next(_batches(backbone, cfg))
    loss, _ = forward_loss(full.model, batch)
    loss.backward()
    want = {n: p.grad for n, p in full.trainable_parameters()}

    update = client.local_train(iter([batch]), 1, {SERVER: server})  # SGD, lr 0.1: grad = (before - after) / lr
    after = {**update.state, **server._default.values}
    assert update.metrics[wire.TRAIN_LOSS] == pytest.approx(float(loss), rel=1e-6)
    for k, g in want.items():
        got = (start[k] - after[k]) / cfg.lr
        assert float((got - g).norm()) <= 1e-5 * float(g.norm()) + 1e-7, k


def test_each_side_loads_only_its_part():
    cfg = _cfg(u=True)
    backbone, client = _client(cfg)
    held = {n for n, p in backbone.model.named_parameters() if not p.is_meta}
    assert any(n.startswith("bert.embeddings") for n in held) and any("classifier" in n for n in held)
    assert all("encoder.layer.1." not in n and "encoder.layer.2." not in n for n in held)  # the server's blocks
    server = ServerPart(flatten(cfg))
    on_server = {n for n, p in server.model.named_parameters() if not p.is_meta and not p.requires_grad}
    assert all(".layer.1." in n or ".layer.2." in n for n in on_server)
    assert not set(client.trainable_state()) & set(server.keys)


def test_cut_outside_the_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"method.cut: expected an integer in \[1, 3\] \(the model has 4 blocks\)"):
        _client(dataclasses.replace(_cfg(), method=METHODS["split"].config(cut=4)))
    with pytest.raises(ConfigError, match="leave the server at least one"):
        _client(dataclasses.replace(_cfg(), method=METHODS["split"].config(cut=2, u_shaped=True, tail=2)))
    with pytest.raises(ConfigError, match="method.activation_codec"):
        METHODS["split"].config(activation_codec="int4")


# fp16 keeps 11 significant bits down to 6.1e-5; below that (subnormals) its spacing is 2**-24,
# so a value there is off by up to 2**-25 whatever its size.
@pytest.mark.parametrize(
    "codec, tol, floor", [("fp32", 0.0, 0.0), ("fp16", 1e-3, 2**-25), ("bf16", 8e-3, 0.0), ("int8", 1 / 254, 0.0)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_activation_codecs_round_trip(codec, tol, floor, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 16, generator=generator) * torch.logspace(-3, 2, 16)  # rows of very different scales
    record = ArrayRecord()
    ac.encode_into(record, "h", x, codec)
    assert ac.check_encoded(record, "h", codec, (3, 5, 16)) is None
    y = ac.decode_from(record, "h", codec)
    if codec == "int8":  # half a code step of the channel-then-row scale (strategies/activation_codec.py)
        channel = x.abs().amax(dim=(0, 1))
        scale = (x / channel).abs().amax(-1, keepdim=True) * channel
    else:
        scale = x.abs()
    assert bool(((y - x).abs() <= tol * scale * (1 + 1e-6) + floor + 1e-12).all())
    assert "shape" in ac.check_encoded(record, "h", codec, (3, 5, 8))
    assert "unknown activation codec" in ac.check_encoded(record, "h", "fp8")
    if codec == "int8":
        del record["h.channel"]
        assert "per-channel" in ac.check_encoded(record, "h", codec)
        del record["h.scale"]
        assert "scale" in ac.check_encoded(record, "h", codec)


# -- the message protocol, without Flower: client half <-> strategy ------------------------------
class FakeGrid:
    def __init__(self, nodes):
        self.identity_of = {n: n - 100 for n in nodes}

    def get_node_ids(self):
        return list(self.identity_of)


class FakeClient:
    """One node: its Context.state and the ClientCall the ClientApp would build."""

    def __init__(self, method, batches):
        self.method, self.state, self.batches = method, RecordDict(), batches

    def __call__(self, msg: Message) -> Message:
        @contextmanager
        def seeded(rnd, k):
            with torch.random.fork_rng():
                torch.manual_seed(k)
                yield

        call = ClientCall(msg=msg, method=self.method, round_cfg=dict(msg.content[wire.CONFIG]), state=self.state,
                          codec=get_codec("fp32"), steps=len(self.batches), initial_state=dict, train=None,
                          batch=lambda rnd, k: self.batches[k], seeded=seeded,
                          metrics=lambda m: {wire.NUM_EXAMPLES: 16, **m})
        return get_kind("activations").serve(call)


def _converse(strategy, clients, state):
    """One round of exchanges the way the server loop runs them; returns the new state and exchanges."""
    kind = get_kind("activations")
    grid = FakeGrid(list(clients))
    ex = RoundExchange(1, strategy, grid, state, get_codec("fp32"))
    messages = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in state.items()}), ConfigRecord(), grid))
    kind.complete_downlink(ex, messages)
    valid, exchanges = [], 0
    while messages:
        replies = [clients[m.metadata.dst_node_id](m) for m in messages]
        got = [r for r in replies if kind.screen(ex, r, exchanges) is None]
        assert len(got) == len(replies)
        valid += got
        messages = kind.followups(ex, valid, got)
        exchanges += 1
    arrays, _ = strategy.aggregate_train(1, kind.to_aggregate(ex, valid))
    return {k: a.numpy() for k, a in arrays.items()}, exchanges


@pytest.mark.parametrize("u", [False, True], ids=["vanilla", "u_shaped"])
@pytest.mark.parametrize("name", ["sfl_v1", "sfl_v2"])
def test_messages_reproduce_the_in_process_reference(name, u):
    from strategies.registry import STRATEGIES

    cfg = _cfg("tiny-llama", "classification", u)
    backbone, method = _client(cfg)
    _, ref = _client(cfg)
    batches = list(itertools.islice(_batches(backbone, cfg), 3))
    run = RunInfo(seed=0, rounds=1, local_steps=3, run_config=tuple(sorted(flatten(cfg).items())))
    strategy = STRATEGIES[name].target(STRATEGIES[name].config(name=name), run)
    server = ServerPart(flatten(cfg))
    for m in (method.model, ref.model, server.model, strategy.part.model):
        _no_dropout(m)  # the reference draws no per-step dropout seeds
    start = strategy.compose_initial_state({k: v.numpy() for k, v in method.trainable_state().items()})

    new, exchanges = _converse(strategy, {100: FakeClient(method, batches)}, start)
    assert exchanges == (2 * 3 + 1 if u else 3 + 1)
    update = ref.local_train(iter(batches), 3, {SERVER: server})  # the same three steps in one process
    for k, v in {**update.state, **server._default.values}.items():
        np.testing.assert_allclose(new[k], v.numpy(), rtol=1e-5, atol=1e-7, err_msg=k)


# -- screening: every bad reply is rejected with its reason, and its client leaves the round ------
def _round_with_one_client(u=False):
    from strategies.registry import STRATEGIES

    cfg = _cfg("tiny-bert", "auto", u)
    backbone, method = _client(cfg)
    run = RunInfo(seed=0, rounds=1, local_steps=3, run_config=tuple(sorted(flatten(cfg).items())))
    strategy = STRATEGIES["sfl_v1"].target(STRATEGIES["sfl_v1"].config(name="sfl_v1"), run)
    state = strategy.compose_initial_state({k: v.numpy() for k, v in method.trainable_state().items()})
    grid = FakeGrid([100])
    ex = RoundExchange(1, strategy, grid, state, get_codec("fp32"))
    (start,) = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in state.items()}), ConfigRecord(), grid)
    get_kind("activations").complete_downlink(ex, [start])
    client = FakeClient(method, list(itertools.islice(_batches(backbone, cfg), 3)))
    return strategy, client, start


def _tampered(reply, **change):
    tensors = reply.content[sk.SPLIT]
    if "hidden" in change:
        tensors[sk.HIDDEN] = Array(change["hidden"](tensors[sk.HIDDEN].numpy()))
    if "labels" in change:
        tensors[sk.LABELS] = Array(change["labels"])
    if change.get("drop"):
        del tensors[change["drop"]]
    for key in ("step", "round"):
        if key in change:
            reply.content[sk.ECHO][key] = change[key]
    if "codec" in change:
        reply.content[wire.WIRE][wire.CODEC_KEY] = change["codec"]
    return reply


@pytest.mark.parametrize("change, reason", [
    ({"hidden": lambda h: h[..., :8]}, "activations have shape"),
    ({"hidden": lambda h: h[:1].repeat(9, 0)}, "exceed batch_size=4"),
    ({"hidden": lambda h: h.astype(np.float64)}, "has dtype float64, expected float32"),
    ({"hidden": lambda h: np.full_like(h, np.inf)}, "'hidden' has non-finite values"),
    ({"labels": np.array([0, 1, 2, 9])}, "labels must be 4 class ids in [0, 4)"),
    ({"labels": np.array([0, 1, 2, 3], dtype=np.int32)}, "labels have dtype torch.int32"),
    ({"drop": sk.MASK}, "without their 'attention-mask'"),
    ({"drop": sk.LABELS}, "no labels"),
    ({"step": 2}, "stale or unexpected reply: 'acts' for step 2"),
    ({"round": 0}, "of round 0, expected"),
    ({"codec": "fp8"}, "unknown activation codec 'fp8'"),
], ids=["shape", "batch", "dtype", "inf", "label-range", "label-dtype", "no-mask", "no-labels", "step", "round", "codec"])
def test_bad_activations_are_rejected_with_their_reason(change, reason):
    strategy, client, start = _round_with_one_client()
    reply = _tampered(client(start), **change)
    got = strategy.check_reply(1, reply, 0)
    assert got is not None and reason in got, got
    assert strategy.configure_followup(1, [], None) == []  # the client left the round
    assert "not taking part" in strategy.check_reply(1, client(start), 0)


def test_a_replayed_reply_and_a_stale_downlink_are_refused():
    strategy, client, start = _round_with_one_client()
    first = client(start)
    assert strategy.check_reply(1, first, 0) is None
    (grad,) = strategy.configure_followup(1, [first], None)
    assert "stale or unexpected" in strategy.check_reply(1, first, 1)  # the step-0 activations again
    with pytest.raises(sk.StaleMessage, match="expects 'grad' for step 1"):
        client(_with_step(grad, 3))
    bad = _with_gradient(grad, lambda g: np.full_like(g, np.nan))
    with pytest.raises(ValueError, match="bad gradient from the server for this step: non-finite values"):
        client(bad)


def _with_step(msg, step):
    msg.content[wire.CONFIG][sk.STEP] = step
    return msg


def _with_gradient(msg, fn):
    msg.content[wire.CONFIG][sk.STEP] = 1
    tensors = msg.content[sk.SPLIT]
    tensors[sk.GRADIENT] = Array(fn(tensors[sk.GRADIENT].numpy()))
    return msg
