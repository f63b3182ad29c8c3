"""Device profiles and populations: numbers, seeded draws, bad input."""

import numpy as np
import pytest

from strategies.population import DeviceConfig, DeviceProfile
from strategies.runconfig import ConfigError

NUMBERS = dict(memory_mb=2000, flops_fp32=50, flops_quant=25, uplink_mbps=10, downlink_mbps=40, availability=0.5,
               dropout=0.1, joules_per_gflop=0.2, joules_per_mb=2.0)


def _mix(**shares):
    return DeviceConfig(name="mix", shares=shares, profiles={n: dict(NUMBERS) for n in shares})


def test_time_and_energy_by_hand():
    p = DeviceProfile.from_numbers("x", NUMBERS)
    assert p.compute_s(100e9) == pytest.approx(2.0)  # 100 GFLOP / 50 GFLOP/s
    assert p.compute_s(100e9, quantized=True) == pytest.approx(4.0)
    assert p.transfer_s(1_250_000, 5_000_000) == pytest.approx(1.0 + 1.0)  # 10 Mbit up at 10 Mbit/s, 40 Mbit down at 40
    assert p.energy_j(100e9, 1_000_000, 3_000_000) == pytest.approx(100 * 0.2 + 4 * 2.0)


def test_classes_have_exact_shares_and_repeat():
    pop = _mix(a=0.5, b=0.3, c=0.2).population
    classes = pop.classes(1000, seed=7)
    assert np.bincount(classes).tolist() == [500, 300, 200]
    assert np.array_equal(classes, pop.classes(1000, seed=7))
    assert not np.array_equal(classes, pop.classes(1000, seed=8))
    assert np.bincount(pop.classes(7, seed=0), minlength=3).tolist() == [4, 2, 1]  # largest remainders


def test_availability_and_dropouts_are_seeded_per_round():
    pop = _mix(a=1.0).population
    classes = pop.classes(4000, seed=1)
    r1, r1b, r2 = (pop.available(classes, r, 1) for r in (1, 1, 2))
    assert np.array_equal(r1, r1b) and not np.array_equal(r1, r2)
    assert abs(r1.mean() - 0.5) < 0.03
    drops = [pop.drops_out(i, 0, 3, 1) for i in range(4000)]
    assert drops == [pop.drops_out(i, 0, 3, 1) for i in range(4000)] and abs(np.mean(drops) - 0.1) < 0.02


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: _mix(a=0.5, b=0.4), "sum to 1"),
        (lambda: DeviceConfig(name="mix", shares={"a": 1.0}, profiles={}), "profiles among"),
        (lambda: DeviceProfile.from_numbers("x", {**NUMBERS, "uplink_mbps": -1}), "uplink_mbps"),
        (lambda: DeviceProfile.from_numbers("x", {**NUMBERS, "flops_fp32": 0}), "flops_fp32"),
        (lambda: DeviceProfile.from_numbers("x", {**NUMBERS, "availability": 1.5}), "availability"),
        (lambda: DeviceProfile.from_numbers("x", {**NUMBERS, "speed": 1}), "unknown key.*speed"),
        (lambda: DeviceProfile.from_numbers("x", {k: v for k, v in NUMBERS.items() if k != "dropout"}), "missing.*dropout"),
        (lambda: DeviceProfile.from_numbers("x", {**NUMBERS, "dropout": "often"}), "must be a number"),
    ],
)
def test_bad_profiles_and_shares(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_config_is_hashable_by_value():
    assert hash(_mix(a=0.5, b=0.5)) == hash(_mix(a=0.5, b=0.5))
