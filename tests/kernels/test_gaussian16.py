"""dist="gaussian16": the shipped table, its statistics, and the layout of its values."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

import kernels
from kernels.perturb import gaussian16
from kernels.perturb import reference as ref
from kernels.rng import STREAMS, philox4x32_10


def test_shipped_table_is_the_computed_one():
    np.testing.assert_array_equal(gaussian16.table(), gaussian16.build())


def test_table_is_a_unit_normal_quantized_to_16_bits():
    t = gaussian16.table()
    assert t.dtype == np.float32 and t.shape == (1 << 16,) and not t.flags.writeable
    assert np.array_equal(t[::-1], -t) and np.all(np.diff(t) > 0)  # antisymmetric, strictly increasing
    x = t.astype(np.float64)
    assert x.mean() == 0 and abs(x.var() - 1) < 1e-8
    assert abs((x**4).mean() - 3) < 1e-3 and 4.32 < x.max() < 4.33
    cdf = np.array([NormalDist().cdf(v) for v in x[::257]])  # Kolmogorov distance, sampled
    steps = np.arange(0, 1 << 16, 257)
    assert np.max(np.maximum(np.abs(cdf - steps / 65536), np.abs(cdf - (steps + 1) / 65536))) < 1 / 65536


def test_damaged_table_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "gaussian16.f32"
    bad.write_bytes(gaussian16.PATH.read_bytes()[:-4] + b"\0\0\0\0")
    monkeypatch.setattr(gaussian16, "PATH", bad)
    gaussian16.table.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="damaged.*python -m kernels.perturb.gaussian16"):
            gaussian16.table()
    finally:
        monkeypatch.undo()
        gaussian16.table.cache_clear()


def test_absent_file_is_computed_to_the_same_bytes(tmp_path, monkeypatch):
    """A Flower App package (FAB) carries source files only: the table is then computed."""
    shipped = gaussian16.table().copy()
    monkeypatch.setattr(gaussian16, "PATH", tmp_path / "absent.f32")
    gaussian16.table.cache_clear()
    try:
        np.testing.assert_array_equal(gaussian16.table(), shipped)
    finally:
        monkeypatch.undo()
        gaussian16.table.cache_clear()


def test_reference_layout_from_the_scalar_generator():
    """Element 64 b + 16 j + 8 h + q is half h of word j of counter 8 b + q."""
    seed, t = 2**40 + 7, gaussian16.table()
    z = ref.draw(seed, 0, 3 * 64, "gaussian16")
    for i in (0, 1, 7, 8, 15, 16, 63, 64, 100, 191):
        b, r = divmod(i, 64)
        q, j, h = r % 8, r // 16, (r // 8) % 2
        words = philox4x32_10((8 * b + q, 0, STREAMS["gaussian16"], 0), (seed & 0xFFFFFFFF, seed >> 32))
        assert z[i].item() == t[(words[j] >> (16 * h)) & 0xFFFF]


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_moments_and_independence_from_gaussian(backend):
    if backend == "numba":
        pytest.importorskip("numba")
    p = torch.zeros(1 << 18)
    kernels.perturb_([p], 2024, 1.0, "gaussian16", backend=backend)
    z = p.double()
    assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1) < 0.01
    assert abs(((z**4).mean() - 3).item()) < 0.1
    g = ref.draw(2024, 0, z.numel(), "gaussian").double()  # another stream: uncorrelated
    assert abs((z * g).mean().item()) < 0.01
    assert math.isclose(z.abs().max().item(), 4.32, abs_tol=0.6)
