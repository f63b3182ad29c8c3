"""forward_grad (FwdLLM clients): exact directional derivatives, an unbiased gradient
estimate, parameters left alone, discriminative sampling, and its failure modes."""

import numpy as np
import pytest
import torch

from client.backbones import load_backbone
from client.batches import batch_iterator, encode, forward_loss
from client.config import ClientConfig, ModelConfig, QuantConfig
from client.methods import build_method
from client.methods.forward_grad import ForwardGradConfig
from kernels import accumulate_, perturb_
from strategies import seeds as sd
from strategies import wire
from strategies.runconfig import ConfigError

TEXTS = ["the match ended in a draw", "new chip doubles speed", "stocks fell sharply", "talks resume in geneva"] * 4
LABELS = [0, 1, 2, 3] * 4
NAMES = ("sports", "science", "business", "world")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(mode="jvp", **method):
    cfg = ClientConfig(
        model=ModelConfig(name="tiny-bert", max_length=48),
        method=ForwardGradConfig(fg_mode=mode, zo_eps=1e-2, **{"r": 4, **method}),
        batch_size=4,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = load_backbone(cfg.model, QuantConfig(), num_labels=len(NAMES))
    m = build_method("forward_grad", backbone, cfg)
    with torch.no_grad():  # LoRA B starts at 0; make every trainable tensor's gradient non-trivial
        for _, p in m.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    data = encode(backbone.task, backbone.tokenizer, TEXTS, LABELS, NAMES, cfg.model.max_length)
    return cfg, m, data


def _batches(data, n=1):
    it = batch_iterator(data, 4, torch.Generator().manual_seed(0))
    return [next(it) for _ in range(n)]


def _autograd(m, batches):
    named = m.trainable_parameters()
    loss = sum(forward_loss(m.model, b)[0] for b in batches) / len(batches)
    grads = torch.autograd.grad(loss, [p for _, p in named])
    return [g.detach() for g in grads]


@pytest.mark.parametrize("method", [{}, {"lora_layers": 1}, {"zo_params": "head"}])
def test_jvp_and_fd_agree_with_autograd(method):
    _, m, data = _setup(**method)
    batches = _batches(data, 2)
    rs = m.settings({}, 2)
    seeds = [int(s) for s in rs.pool[:6]]
    d_jvp, loss_jvp = m.directional_derivatives(seeds, batches, rs)
    m.mode = "fd"
    d_fd, loss_fd = m.directional_derivatives(seeds, batches, rs)
    if method:  # every perturbed weight is above the frozen layers: they ran once per batch
        assert m.prefix.enabled
    grads = _autograd(m, batches)
    d_ref = []
    for s in seeds:
        z = [torch.zeros_like(g) for g in grads]
        perturb_(z, s, 1.0, rs.dist)
        d_ref.append(sum(float((a * b).sum()) for a, b in zip(z, grads)))
    scale = np.abs(d_ref).max()
    np.testing.assert_allclose(d_jvp, d_ref, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(d_fd, d_jvp, rtol=1e-2, atol=1e-3 * scale)
    assert loss_jvp == pytest.approx(loss_fd, rel=1e-3)


@pytest.mark.slow  # 8,000 forward passes: minutes on 2 cores; run with -m slow
def test_estimate_is_unbiased():
    """The mean of N single-perturbation estimates d_j z_j tends to grad L (E[z z^T] = I)."""
    _, m, data = _setup(r=1, target_modules=("query",))
    batches = _batches(data)
    params = m.seed_params()
    assert sum(p.numel() for p in params) < 600
    rs = m.settings({sd.POOL_SIZE: 4000}, 1)
    seeds = [int(s) for s in rs.pool]
    d, _ = m.directional_derivatives(seeds, batches, rs)
    est = [torch.zeros_like(p) for p in params]
    accumulate_(est, seeds, list(d / len(seeds)), rs.dist)
    g = torch.cat([t.flatten() for t in _autograd(m, batches)])
    e = torch.cat([t.flatten() for t in est])
    assert float(torch.nn.functional.cosine_similarity(e, g, dim=0)) > 0.9
    assert float(e.norm() / g.norm()) == pytest.approx(1.0, abs=0.25)


@pytest.mark.parametrize("mode", ["jvp", "fd"])
def test_local_train_replies_pairs_and_keeps_parameters(mode):
    _, m, data = _setup(mode)
    before = m.trainable_state()
    rc = {sd.PERTURBATIONS: 5, sd.POOL_SIZE: 64, sd.MAX_PAIRS: 5}
    with torch.random.fork_rng():
        torch.manual_seed(3)
        update = m.local_train(batch_iterator(data, 4, torch.Generator().manual_seed(0)), 2, rc)
    assert all(torch.equal(before[k], v) for k, v in m.trainable_state().items())
    index, scalar = update.pairs
    assert m.kind == wire.KIND_SEEDS and not update.state
    assert len(index) == 5 and len(set(index.tolist())) == 5 and "skipped" not in update.metrics
    assert index.dtype == np.int64 and scalar.dtype == np.float32 and (index < 64).all()
    # scalar_j = d_j / n for the same seeds on the same batches
    rs = m.settings(rc, 2)
    d, loss = m.directional_derivatives([int(rs.pool[k]) for k in index], _batches(data, 2), rs)
    np.testing.assert_allclose(scalar * 5, d, rtol=1e-4, atol=1e-7)
    assert update.metrics[wire.TRAIN_LOSS] == pytest.approx(loss, rel=1e-3)


def test_pairs_capped_by_budget():
    _, m, data = _setup()
    update = m.local_train(iter(_batches(data)), 1, {sd.PERTURBATIONS: 8, sd.MAX_PAIRS: 3})
    assert len(update.pairs[0]) == 3


def test_uses_the_assigned_indices_in_order():
    _, m, data = _setup()
    update = m.local_train(iter(_batches(data)), 1, {sd.PERTURBATIONS: 3, sd.POOL_SIZE: 64, sd.ASSIGNED: [9, 2, 40, 7]})
    assert update.pairs[0].tolist() == [9, 2, 40]
    rc = {sd.PERTURBATIONS: 3, sd.POOL_SIZE: 64, sd.DRAW: 77}
    update = m.local_train(iter(_batches(data)), 1, rc)
    assert update.pairs[0].tolist() == sd.draw_indices(77, 3, 64).tolist()  # what the server regenerates


def test_non_finite_losses_are_skipped_then_fatal(monkeypatch):
    _, m, data = _setup("fd")
    calls = iter(range(10**6))
    real = m.loss
    monkeypatch.setattr(m, "loss", lambda b: float("nan") if next(calls) < 2 else real(b))
    update = m.local_train(iter(_batches(data)), 1, {sd.PERTURBATIONS: 3})
    index, scalar = update.pairs
    assert len(index) == 3 and update.metrics["skipped"] == 1  # the skipped one is sent as 0
    assert scalar[0] == 0 and (scalar[1:] != 0).all()
    monkeypatch.setattr(m, "loss", lambda b: float("nan"))
    with pytest.raises(FloatingPointError):
        m.local_train(iter(_batches(data)), 1, {sd.PERTURBATIONS: 3})


def test_jvp_on_quantized_backbone_is_a_config_error():
    cfg = ClientConfig(quant=QuantConfig(mode="nf4"), method=ForwardGradConfig(fg_mode="jvp"))
    with pytest.raises(ConfigError, match="fg_mode=fd"):
        build_method("forward_grad", None, cfg)


def test_jvp_falls_back_to_fd_when_unsupported(monkeypatch, caplog):
    _, m, data = _setup()

    def broken(*a, **k):
        raise NotImplementedError("no forward AD for this op")

    monkeypatch.setattr(torch.func, "jvp", broken)
    update = m.local_train(iter(_batches(data)), 1, {sd.PERTURBATIONS: 2})
    assert m.mode == "fd" and len(update.pairs[0]) == 2
    assert "using fd" in caplog.text
