"""Availability traces: parsing, bad rows, availability by window and period."""

import numpy as np
import pytest

from strategies.runconfig import ConfigError
from strategies.traces import read_trace


def _write(tmp_path, body):
    path = tmp_path / "trace.csv"
    path.write_text("client_id,profile,windows\n" + body)
    return path


def test_windows_decide_availability(tmp_path):
    trace = read_trace(_write(tmp_path, "0,phone-mid,0-100 200-300\n1,rpi5,\n2,laptop,50-250\n"), 3)
    assert trace.profiles == ("phone-mid", "rpi5", "laptop")
    assert trace.available(0).tolist() == [True, True, False]
    assert trace.available(150).tolist() == [False, True, True]
    assert trace.available(250).tolist() == [True, True, False]  # end is exclusive
    assert trace.available(1150, period_s=1000).tolist() == [False, True, True]
    assert trace.next_start_in(120) == 80 and trace.next_start_in(300) is None
    assert trace.next_start_in(1300, period_s=1000) == 700  # phase 300: the next day's 0-100 window


@pytest.mark.parametrize(
    "body, match",
    [
        ("0,rpi5,\n5,rpi5,\n", "client 5 is not in this population"),
        ("0,rpi5,\n0,rpi5,\n", "appears twice"),
        ("0,rpi5,0-100 50-150\n1,rpi5,\n", "overlap"),
        ("0,rpi5,100-50\n1,rpi5,\n", "start < end"),
        ("0,rpi5,morning\n1,rpi5,\n", "not START-END"),
        ("0,rpi5,\n", r"no row for client\(s\) \[1\]"),
        ("x,rpi5,\n1,rpi5,\n", "not an integer"),
    ],
)
def test_bad_traces(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        read_trace(_write(tmp_path, body), 2)


def test_wrong_columns_and_missing_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,device\n0,rpi5\n")
    with pytest.raises(ConfigError, match="columns client_id,profile,windows"):
        read_trace(path, 1)
    with pytest.raises(ConfigError, match="cannot read the trace"):
        read_trace(tmp_path / "none.csv", 1)


def test_large_trace_is_vectorised(tmp_path):
    n = 20_000
    rows = "".join(f"{i},rpi5,{i % 24 * 3600}-{i % 24 * 3600 + 3600}\n" for i in range(n))
    trace = read_trace(_write(tmp_path, rows), n)
    mask = trace.available(3600 * 5 + 10, period_s=86400)
    assert mask.sum() == len(range(5, n, 24)) and np.all(mask[5::24])
