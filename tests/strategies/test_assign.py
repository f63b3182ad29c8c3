"""The assignment policy against hand-computed choices (strategies/assign.py)."""

import pytest

from strategies import wire
from strategies.assign import Assigner, AssignConfig
from strategies.population import DeviceConfig
from strategies.runconfig import ConfigError

NUMBERS = {"availability": 1.0, "dropout": 0.0, "joules_per_gflop": 0.1, "joules_per_mb": 0.1,
           "uplink_mbps": 8.0, "downlink_mbps": 8.0}  # 1 MB/s each way


def population(**memory_and_flops):
    profiles = {n: {**NUMBERS, "memory_mb": m, "flops_fp32": f, "flops_quant": f / 2} for n, (m, f) in memory_and_flops.items()}
    return DeviceConfig(name="mix", shares={n: 1 / len(profiles) for n in profiles}, profiles=profiles).population


# three options: 10 steps (1000 MiB, 100 GFLOP), 5 steps (1000 MiB, 50 GFLOP), batch 4 (600 MiB, 20 GFLOP); 2 MB a round
PLAN = dict(local_steps=(10, 5, 5), batch_size=(16, 16, 4), peak_mb=(1000.0, 1000.0, 600.0), flops=(100e9, 50e9, 20e9),
            bytes=(2e6, 2e6, 2e6))


def test_resource_aware_takes_the_first_option_that_fits_memory_and_deadline():
    pop = population(laptop=(8000, 100.0), pi=(3000, 10.0), phone=(800, 10.0), watch=(100, 1.0))
    a = Assigner(AssignConfig(name="resource_aware", **PLAN), pop, deadline_s=7.0)
    # laptop: 100 GFLOP / 100 GFLOP/s + 1 s + 1 s = 3 s; pi: 10 + 2 s > 7, 5 + 2 = 7 s fits;
    # phone: only 600 MiB fits memory, 2 + 2 = 4 s; watch: nothing fits
    assert a.choice == {"laptop": 0, "pi": 1, "phone": 2, "watch": None}
    assert a.seconds(1, pop.profiles["pi"]) == pytest.approx(7.0)
    assert a.overrides("pi") == {wire.ASSIGN_LOCAL_STEPS: 5, wire.ASSIGN_BATCH_SIZE: 16}
    assert a.overrides("watch") == {}


def test_without_a_deadline_in_time_the_fastest_option_that_fits():
    pop = population(pi=(3000, 1.0))
    assert Assigner(AssignConfig(name="resource_aware", **PLAN), pop, deadline_s=1.0).choice == {"pi": 2}
    assert Assigner(AssignConfig(name="resource_aware", **PLAN), pop, deadline_s=None).choice == {"pi": 0}


def test_fixed_trains_the_run_config_or_nothing():
    pop = population(laptop=(8000, 100.0), phone=(800, 10.0))
    plan = dict(peak_mb=(1000.0,), flops=(100e9,), bytes=(2e6,))
    a = Assigner(AssignConfig(**plan), pop, deadline_s=1.0)
    assert a.choice == {"laptop": 0, "phone": None} and a.overrides("laptop") == {}
    with pytest.raises(ConfigError, match="no device class can hold any configured option"):
        Assigner(AssignConfig(**plan), population(phone=(800, 10.0)), None).check_someone_fits()


def test_quantized_backbones_compute_at_the_quantized_rate():
    pop = population(pi=(3000, 10.0))  # quantized: 5 GFLOP/s
    a = Assigner(AssignConfig(name="resource_aware", quantized=True, **PLAN), pop, deadline_s=7.0)
    assert a.seconds(2, pop.profiles["pi"]) == pytest.approx(20 / 5 + 2)
    assert a.choice == {"pi": 2}


@pytest.mark.parametrize("kw, match", [
    (dict(name="random"), "assign"),
    (dict(name="resource_aware", local_steps=(4, 2), batch_size=(8,)), "as many values"),
    (dict(local_steps=(4,)), "empty with assign=fixed"),
    (dict(name="resource_aware", batch_size=(0,)), "integers >= 1"),
])
def test_bad_assign_configs(kw, match):
    with pytest.raises(ConfigError, match=match):
        AssignConfig(**kw)


def test_options_fill_the_run_values():
    assert AssignConfig(name="resource_aware", local_steps=(10, 2)).options(7, 16) == [(10, 16), (2, 16)]
    assert AssignConfig().options(7, 16) == [(7, 16)]
