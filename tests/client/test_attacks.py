"""Simulated adversaries (client/attacks.py, strategies/adversary.py): who attacks, what
they send, and that every malformed reply of ``attack=fuzz`` is rejected with a reason."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.attacks import craft_reply, craft_update, is_attacker
from client.methods.base import Update
from strategies import wire
from strategies.adversary import ATTACKS, FUZZ_CASES, AttackConfig
from strategies.codecs import get_codec
from strategies.kinds import RoundExchange
from strategies.kinds.delta import DeltaKind, state_content
from strategies.runconfig import ConfigError

START = {"a": torch.zeros(3), "b": torch.ones(2, 2)}
TRAINED = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.full((2, 2), 2.0)}


def cfg(name, **kw):
    return ATTACKS[name].config(name=name, **kw)


def test_attackers_are_a_seeded_fraction_of_the_population():
    c = cfg("signflip", fraction=0.25)
    assert len(c.attackers(100, seed=0)) == 25
    assert c.attackers(100, seed=0) == c.attackers(100, seed=0) != c.attackers(100, seed=1)
    assert cfg("none").attackers(100, 0) == set()
    assert sum(is_attacker(c, i, 100, 0) for i in range(100)) == 25


@pytest.mark.parametrize("name, want_a", [
    ("signflip", [-5.0, -10.0, -15.0]),  # -5 x d
    ("scale", [10.0, 20.0, 30.0]),  # 10 x d
    ("freerider", [0.0, 0.0, 0.0]),  # d = 0
    ("labelflip", [1.0, 2.0, 3.0]),  # the update itself is honest (its data is flipped)
])
def test_delta_attacks_rewrite_the_update_against_the_state_sent(name, want_a):
    out = craft_update(cfg(name), Update(state=dict(TRAINED), metrics={"train-loss": 0.3}), START, (0, 1, 7))
    np.testing.assert_allclose(out.state["a"].numpy(), want_a)
    assert out.metrics == {"train-loss": 0.3}


def test_noise_and_nan_attacks():
    noise = craft_update(cfg("noise", factor=2.0), Update(state=dict(TRAINED)), START, (0, 1, 7)).state["b"]
    again = craft_update(cfg("noise", factor=2.0), Update(state=dict(TRAINED)), START, (0, 1, 7)).state["b"]
    assert torch.equal(noise, again) and 0.5 < float((noise - 1).std()) < 5  # seeded, std ~ factor
    assert torch.isnan(craft_update(cfg("nonfinite"), Update(state=dict(TRAINED)), START, (0, 1, 7)).state["a"]).all()


def test_seed_attacks_rewrite_the_scalars():
    pairs = (np.arange(3), np.array([0.5, -1.0, 2.0], dtype=np.float32))
    flipped = craft_update(cfg("signflip"), Update(pairs=pairs), {}, (0, 1, 7)).pairs
    np.testing.assert_allclose(flipped[1], [-2.5, 5.0, -10.0])
    np.testing.assert_array_equal(flipped[0], pairs[0])
    assert not craft_update(cfg("freerider"), Update(pairs=pairs), {}, (0, 1, 7)).pairs[1].any()


def _honest_reply(rnd: int = 3) -> Message:
    down = Message(RecordDict({wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: rnd})}), dst_node_id=5, message_type="train")
    content = state_content({k: v + 0.1 for k, v in START.items()}, get_codec("fp16"), rnd)
    content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 0.5})
    return Message(content, reply_to=down)


def _screen(reply: Message, rnd: int = 3) -> tuple[str | None, RoundExchange]:
    ex = RoundExchange(rnd, object(), None, {k: v.numpy() for k, v in START.items()}, get_codec("fp16"))
    return DeltaKind().screen(ex, reply, 0), ex


def _case_key(case: str) -> tuple[int, int, int]:
    """A (seed, round, client) whose fuzz draw is ``case``."""
    for ident in range(10_000):
        rng = np.random.default_rng([0, 3, ident, 0xBAD])
        if FUZZ_CASES[int(rng.integers(len(FUZZ_CASES)))] == case:
            return 0, 3, ident
    raise AssertionError(case)


@pytest.mark.parametrize("case", FUZZ_CASES)
def test_every_fuzz_case_is_rejected_with_a_reason(case):
    from server.loop import payload_bytes
    from server.screening import ScreenConfig, norm_outliers, reply_limit_bytes, size_reason

    crafted = craft_reply(cfg("fuzz"), _honest_reply(), _case_key(case))
    size = payload_bytes(crafted)
    reason, ex = _screen(crafted)
    if case == "oversized":  # the loop's size limit, before the kind's screening
        reason = size_reason(size, reply_limit_bytes(ScreenConfig(), ex.global_state))
    if case == "huge":  # finite: accepted by the kind, then caught by the round's norm bound
        assert reason is None
        honest = [_screen(_honest_reply())[1].norms for _ in range(3)]
        norms = {i: next(iter(n.values())) for i, n in enumerate(honest)} | {99: next(iter(ex.norms.values()))}
        reason = norm_outliers(norms, 10.0).get(99)
    assert reason, case


def test_an_honest_reply_passes_and_its_norm_is_recorded():
    reason, ex = _screen(_honest_reply())
    assert reason is None and list(ex.norms.values())[0] == pytest.approx(np.sqrt(7 * 0.1**2), rel=5e-3)  # fp16 on the wire


def test_bad_attack_settings():
    with pytest.raises(ConfigError, match="attack.fraction"):
        AttackConfig(name="scale", fraction=1.0)
    with pytest.raises(ConfigError, match="valid choices"):
        ATTACKS["nan"]
