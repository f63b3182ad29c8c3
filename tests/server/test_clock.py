"""The round clock: simulated time and energy from known FLOPs and bytes; deadlines,
dropouts and over-selection."""

import pytest

from server.clock import ClientWork, RoundClock
from strategies.population import DeviceConfig

FAST = dict(memory_mb=8000, flops_fp32=100, flops_quant=50, uplink_mbps=8, downlink_mbps=80, availability=1.0,
            dropout=0.0, joules_per_gflop=0.1, joules_per_mb=1.0)
SLOW = {**FAST, "flops_fp32": 10}


def _clock(deadline=None, over=0.0, dropout=0.0, n=4):
    cfg = DeviceConfig(name="mix", shares={"fast": 0.5, "slow": 0.5}, over_select=over,
                       profiles={"fast": {**FAST, "dropout": dropout}, "slow": {**SLOW, "dropout": dropout}})
    return RoundClock(cfg, n, seed=0, deadline_s=deadline)


def _work(clock):  # every client: 100 GFLOP, 1 MB up, 10 MB down
    return {i: ClientWork(flops=100e9, bytes_up=1_000_000, bytes_down=10_000_000) for i in range(clock.num_clients)}


def test_seconds_by_hand():
    clock = _clock()
    fast = next(i for i in range(4) if clock.population.names[clock._class(i)] == "fast")
    slow = next(i for i in range(4) if clock.population.names[clock._class(i)] == "slow")
    w = ClientWork(flops=100e9, bytes_up=1_000_000, bytes_down=10_000_000)
    assert clock.seconds(fast, w) == pytest.approx(1.0 + 1.0 + 1.0)  # 100/100 GFLOP/s; 8 Mbit at 8; 80 Mbit at 80
    assert clock.seconds(slow, w) == pytest.approx(10.0 + 2.0)
    assert clock.seconds(fast, ClientWork(flops=100e9, quantized=True)) == pytest.approx(2.0)


def test_no_deadline_round_lasts_until_the_slowest():
    clock = _clock()
    out = clock.settle(1, list(range(4)), lambda m: m, _work(clock), k=4, unavailable=0)
    assert sorted(out.kept) == [0, 1, 2, 3]
    assert out.row["sim_time_s"] == pytest.approx(12.0) and out.row["dropped"] == 0
    assert out.row["sim_energy_j"] == pytest.approx(4 * (100 * 0.1 + 11 * 1.0))
    assert out.row["clients_fast"] == 2 and out.row["clients_slow"] == 2


def test_deadline_drops_stragglers_and_waits_for_it():
    clock = _clock(deadline=5.0)
    out = clock.settle(1, list(range(4)), lambda m: m, _work(clock), k=4, unavailable=3)
    assert all(clock.population.names[clock._class(i)] == "fast" for i in out.kept) and len(out.kept) == 2
    assert out.row["dropped"] == 2 and out.row["clients_slow"] == 0 and out.row["unavailable"] == 3
    assert out.row["sim_time_s"] == 5.0  # it waited for the stragglers until the deadline
    assert out.row["sim_energy_j"] == pytest.approx(4 * 21.0)  # the stragglers spent theirs
    out2 = clock.settle(2, list(range(4)), lambda m: m, _work(clock), k=4, unavailable=0)
    assert out2.row["sim_elapsed_s"] == pytest.approx(10.0)


def test_over_selection_keeps_the_fastest():
    clock = _clock(over=1.0)
    assert clock.sample_size(2, available=4) == 4 and clock.sample_size(2, available=3) == 3
    out = clock.settle(1, list(range(4)), lambda m: m, _work(clock), k=2, unavailable=0)
    assert len(out.kept) == 2 and out.row["unused"] == 2 and out.row["clients_fast"] == 2
    assert out.row["sim_time_s"] == pytest.approx(3.0)


def test_dropouts_are_dropped_and_replies_without_a_client_are_kept():
    clock = _clock(dropout=1.0)
    out = clock.settle(1, ["sum", *range(4)], lambda m: None if m == "sum" else m, _work(clock), k=4, unavailable=0)
    assert out.kept == ["sum"] and out.row["dropped"] == 4


def test_a_round_with_nobody_available_waits_for_the_next_window(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("client_id,profile,windows\n0,fast,100-200\n1,slow,500-600\n")
    cfg = DeviceConfig(name="trace", path=str(trace), shares={"fast": 0.5, "slow": 0.5},
                       profiles={"fast": FAST, "slow": SLOW})
    clock = RoundClock(cfg, 2, seed=0, deadline_s=None)
    assert clock.available([0, 1], 1) == []
    out = clock.settle(1, [], lambda m: m, {}, k=2, unavailable=2)
    assert out.row["sim_time_s"] == 100 and clock.available([0, 1], 2) == [0]
