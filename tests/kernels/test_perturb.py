"""Seeded perturbation kernels: the generator, the reference's properties, and every
backend against the reference (bitwise for rademacher, 1e-6 for gaussian)."""

import logging
import math

import pytest
import torch

import kernels
from kernels.perturb import dispatch
from kernels.perturb import reference as ref
from kernels.rng import MASK32, philox4x32_10

BACKENDS = ["torch", "numba"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DISTS = ["gaussian", "rademacher", "gaussian16"]
EXACT = ("rademacher", "gaussian16")  # bitwise on every backend


def _backend(name: str) -> str:
    if name == "numba":
        pytest.importorskip("numba")
    return name


def _params(sizes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(dtype) for n in sizes]


def _z(sizes, seed, dist, backend):
    """z(seed) as the backend applies it: perturb zeros with alpha=1 -> one flat tensor."""
    ps = [torch.zeros(n) for n in sizes]
    kernels.perturb_(ps, seed, 1.0, dist, backend=backend)
    return torch.cat(ps)


# --- the generator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Random123's kat_vectors for philox4x32_10
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((MASK32,) * 4, (MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_known_answers(counter, key, expected):
    assert philox4x32_10(counter, key) == expected


def test_reference_philox_int64_emulation_matches_scalar():
    c = torch.tensor([0, 1, 5, 2**31 + 3, 2**32 - 1, 2**32 + 7, 2**45 + 11])
    for stream, key in [(0, (0, 0)), (1, (MASK32, 0x7FFFFFFF)), (0, (123456789, 42))]:
        words = ref.philox(c, stream, key)  # (n, 4)
        for i, ci in enumerate(c.tolist()):
            assert tuple(words[i].tolist()) == philox4x32_10((ci & MASK32, ci >> 32, stream, 0), key)


# --- the reference's properties ----------------------------------------------------------


def test_reference_gaussian_moments():
    z = ref.draw(2024, 0, 1 << 17, "gaussian").double()
    assert abs(z.mean().item()) < 0.02 and abs(z.var().item() - 1) < 0.02
    assert z.abs().max().item() <= 6.77  # sqrt(-2 ln(2**-33))
    assert abs(((z > 0).double().mean() - 0.5).item()) < 0.01


def test_reference_rademacher_exact_and_balanced():
    z = ref.draw(7, 3, 100_003, "rademacher")
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(z.mean().item()) < 0.02


def test_reference_draw_matches_offsets():
    whole = ref.draw(5, 0, 1000, "gaussian")
    assert torch.equal(ref.draw(5, 123, 456, "gaussian"), whole[123:579])


# --- every backend ---------------------------------------------------------------------


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_z_other_seed_differs(backend, dist):
    b = _backend(backend)
    a1, a2, other = _z([5000], 11, dist, b), _z([5000], 11, dist, b), _z([5000], 12, dist, b)
    assert torch.equal(a1, a2)
    assert (a1 != other).float().mean() > 0.4


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_z_independent_of_split(backend, dist):
    b = _backend(backend)
    assert torch.equal(_z([10], 3, dist, b), _z([3, 7], 3, dist, b))
    assert torch.equal(_z([9000], 3, dist, b), _z([1, 4095, 130, 4774], 3, dist, b))


@pytest.mark.parametrize("dist", DISTS)
def test_numba_z_matches_reference(dist):
    b = _backend("numba")
    sizes = [1, 3, 4, 127, 129, 4097, 70_001]
    got, want = _z(sizes, 99, dist, b), ref.draw(99, 0, sum(sizes), dist)
    if dist in EXACT:
        assert torch.equal(got, want)
    else:
        assert (got - want).abs().max().item() <= 1e-6


def test_numba_gaussian_edge_words_match_fp64():
    """The numba log/sincos at the words that give the tails and the quadrant edges."""
    _backend("numba")
    import numpy as np
    from numba import njit

    from kernels.perturb.numba_scalar import cos_sin, radius

    @njit(error_model="numpy")
    def box_muller(x0, x1, out):  # (n,), (n,) int64 words -> (n, 2) fp64
        for i in range(x0.size):
            r = radius(x0[i])
            c, s = cos_sin(x1[i])
            out[i, 0], out[i, 1] = r * c, r * s

    edges = [0, 1, 2**23 - 1, 2**23, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
    quarters = [(k * 2**29 + d) % 2**32 for k in range(8) for d in (-1, 0, 1)]
    x0, x1 = torch.cartesian_prod(torch.tensor(edges), torch.tensor(edges + quarters)).T
    out = np.empty((x0.numel(), 2))
    box_muller(x0.numpy(), x1.numpy(), out)
    u0, u1 = (x0.double() + 0.5) * 2.0**-32, (x1.double() + 0.5) * 2.0**-32
    r, theta = torch.sqrt(-2 * torch.log(u0)), 2 * math.pi * u1
    want = torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=1)
    assert (torch.from_numpy(out) - want).abs().max().item() < 2e-8


def _fp32_ulp(x: torch.Tensor) -> torch.Tensor:
    return (torch.nextafter(x.abs(), torch.tensor(math.inf)) - x.abs()).double()


def test_numba_vector_gaussian_edge_words_match_fp64():
    """The vector path's log/sincos at the tails' and the quadrant edges' words, through
    gaussian_from_words: within one fp32 ulp (+2e-8, the error budget before rounding) of
    fl32 of the fp64 formula."""
    _backend("numba")
    import numpy as np
    from numba import njit

    from kernels.perturb.numba_kernels import LANES, gaussian_from_words

    @njit
    def transform(w, z):  # w (B, 4 * LANES) int64 -> z (B, 4 * LANES) fp32
        for i in range(w.shape[0]):
            gaussian_from_words(z[i], 0, w[i])

    edges = [0, 1, 2**23 - 1, 2**23, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
    quarters = [(k * 2**29 + d) % 2**32 for k in range(8) for d in (-1, 0, 1)]
    xr, xa = torch.cartesian_prod(torch.tensor(edges), torch.tensor(edges + quarters)).T  # (n,) radius, angle words
    pad = -xr.numel() % (2 * LANES)
    xr, xa = torch.cat([xr, xr[:pad]]), torch.cat([xa, xa[:pad]])
    pairs = torch.stack([xr, xa], 1).view(-1, LANES, 2, 2)  # (B, counter q, pair m, radius/angle)
    words = pairs.reshape(-1, LANES, 4).transpose(1, 2).contiguous()  # (B, word j, counter q): x_{2m}, x_{2m+1}
    z = np.zeros((words.shape[0], 4 * LANES), np.float32)  # the block adds 1 * z
    transform(words.view(-1, 4 * LANES).numpy(), z)
    u0, u1 = (xr.double() + 0.5) * 2.0**-32, (xa.double() + 0.5) * 2.0**-32
    r, theta = torch.sqrt(-2 * torch.log(u0)), 2 * math.pi * u1
    want = torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=1).float().view(-1)  # element 2n + {cos, sin}
    got = torch.from_numpy(z).view(-1)
    assert ((got.double() - want.double()).abs() <= _fp32_ulp(want) + 2e-8).all()


@pytest.mark.parametrize("dist", DISTS)
def test_numba_vector_path_matches_scalar_path(dist):
    """draw_tile (LLVM vectors) against draw_tile_scalar (one element at a time), on tiles
    whose counters pass 2**32: rademacher and gaussian16 bitwise, gaussian within one fp32
    ulp (+4e-8)."""
    _backend("numba")
    import numpy as np

    from kernels.perturb.numba_kernels import TILE, draw_tile
    from kernels.perturb.numba_scalar import draw_tile_scalar

    from kernels.perturb.gaussian16 import table
    from kernels.perturb.numba_kernels import KIND

    kind, gaussian = KIND[dist], dist == "gaussian"
    for seed in (0, 99, 2**40 + 3, 2**63 - 1):
        k0, k1 = seed & MASK32, seed >> 32
        for base in (0, 7 * TILE, 2**36, 2**45 + 13 * TILE):
            vec, sca = np.empty(TILE, np.float32), np.empty(TILE, np.float32)
            draw_tile(vec, base, k0, k1, kind, table())
            draw_tile_scalar(sca, base, k0, k1, kind, table())
            vec, sca = torch.from_numpy(vec), torch.from_numpy(sca)
            if gaussian:
                assert ((vec.double() - sca.double()).abs() <= _fp32_ulp(sca) + 4e-8).all()
                assert (vec != sca).float().mean().item() < 1e-3
            else:
                assert torch.equal(vec, sca)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_perturb_matches_reference(dtype, dist):
    b = _backend("numba")
    sizes = [1, 3, 4097, 70_001, 2, 300_000]
    got, want = _params(sizes, dtype), _params(sizes, dtype)
    kernels.perturb_(got, 1234, 0.5, dist, backend=b)
    kernels.perturb_(want, 1234, 0.5, dist, backend="torch")
    for g, w in zip(got, want):
        if dist in EXACT:
            assert torch.equal(g, w)
        else:  # a 1e-6 difference in z may flip the last bit of p
            torch.testing.assert_close(g, w, rtol=torch.finfo(dtype).eps, atol=0.5e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_fp64_and_accumulate_match_reference(backend):
    b = _backend(backend)
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float16, torch.float32]

    def make():
        return [p.to(d) for p, d in zip(_params([7, 5000, 301, 9, 4100]), dtypes)]

    got, want = make(), make()
    kernels.accumulate_(got, [4, 9], [0.25, -1.5], "rademacher", backend=b)
    ref.accumulate_(want, [4, 9], [0.25, -1.5], "rademacher")
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulate_equals_sum_of_perturbs(backend, dist):
    b = _backend(backend)
    seeds, coeffs = [3, 5, 7, 5], [0.1, -0.25, 0.5, 0.125]
    acc, seq = _params([4097, 33, 9000]), _params([4097, 33, 9000])
    kernels.accumulate_(acc, seeds, coeffs, dist, backend=b)
    for s, c in zip(seeds, coeffs):
        kernels.perturb_(seq, s, c, dist, backend=b)
    for x, y in zip(acc, seq):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulate_one_seed_is_perturb_bitwise(backend):
    b = _backend(backend)
    x, y = _params([5000, 17]), _params([5000, 17])
    kernels.accumulate_(x, [8], [0.3], backend=b)
    kernels.perturb_(y, 8, 0.3, backend=b)
    assert all(torch.equal(u, v) for u, v in zip(x, y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_plus_then_minus_alpha_restores(backend):
    b = _backend(backend)
    p, p0 = _params([6000, 5]), _params([6000, 5])
    kernels.perturb_(p, 77, 1e-3, backend=b)
    assert not torch.equal(p[0], p0[0])
    kernels.perturb_(p, 77, -1e-3, backend=b)
    for x, y in zip(p, p0):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_parameters_that_require_grad():
    w = torch.nn.Parameter(torch.zeros(3, 4))
    kernels.perturb_([w], 1, 0.1)
    assert w.requires_grad and w.grad is None and w.abs().sum() > 0


def test_numba_keeps_torch_threads():
    _backend("numba")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        kernels.perturb_([torch.zeros(100)], 1, 0.1, backend="numba")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --- dispatch and bad input ------------------------------------------------------------


def test_auto_falls_back_to_reference_and_logs_once(monkeypatch, caplog):
    monkeypatch.setitem(dispatch.BACKENDS, "numba", dispatch._Lazy("numba", "no_such_module:X", "numba"))
    monkeypatch.setattr(dispatch, "_logged", set())
    x, y = torch.zeros(50), torch.zeros(50)
    with caplog.at_level(logging.WARNING, logger="anther.kernels"):
        kernels.perturb_([x], 3, 1.0)
        kernels.perturb_([x], 3, -1.0)
    assert sum("using the torch reference" in r.message for r in caplog.records) == 1
    ref.perturb_([y], 3, 1.0, "gaussian")
    ref.perturb_([y], 3, -1.0, "gaussian")
    assert torch.equal(x, y)
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.perturb_([x], 3, 1.0, backend="numba")


def test_no_get_kernel_name():
    """bitsandbytes probes ``from kernels import get_kernel``; that must keep failing."""
    with pytest.raises(ImportError):
        from kernels import get_kernel  # noqa: F401


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: kernels.perturb_(p, 1, 0.1, dist="uniform"), "gaussian, rademacher"),
        (lambda p: kernels.perturb_(p, 1, 0.1, backend="cuda"), "auto, torch, numba"),
        (lambda p: kernels.perturb_(p, 1, float("nan")), "alpha must be finite"),
        (lambda p: kernels.perturb_(p, -1, 0.1), r"outside \[0, 2\*\*63\)"),
        (lambda p: kernels.perturb_(p, 2**63, 0.1), r"outside \[0, 2\*\*63\)"),
        (lambda p: kernels.perturb_([torch.zeros(4, 4).T], 1, 0.1), "not contiguous"),
        (lambda p: kernels.perturb_([torch.zeros(4, dtype=torch.int64)], 1, 0.1), "floating"),
        (lambda p: kernels.accumulate_(p, [1, 2], [0.1]), "differ in length"),
        (lambda p: kernels.accumulate_(p, [1], [math.inf]), r"coeffs\[0\] must be finite"),
        (lambda p: kernels.accumulate_(p, [1, -2], [0.1, 0.1]), r"seeds\[1\]"),
    ],
)
def test_bad_value_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call([torch.zeros(8)])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: kernels.perturb_(p, 1, "0.1"), "alpha must be a finite float"),
        (lambda p: kernels.perturb_(p, 1.5, 0.1), "seed must be an int"),
        (lambda p: kernels.perturb_(p, True, 0.1), "seed must be an int"),
        (lambda p: kernels.perturb_(p[0], 1, 0.1), "list of tensors"),
        (lambda p: kernels.perturb_([p[0], 3.0], 1, 0.1), r"params\[1\]"),
    ],
)
def test_bad_type_raises_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call([torch.zeros(8)])
