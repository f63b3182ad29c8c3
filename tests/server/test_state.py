"""Checkpoints restore the whole server state; sampling is seeded and resumable."""

import json

import numpy as np

from server.metrics import MetricsLog
from server.sampling import ClientSampler, SampledGrid
from server.state import ServerState, load_checkpoint, save_checkpoint


def test_checkpoint_roundtrip_and_latest(tmp_path):
    s = ServerState(
        round=3,
        global_state={"a": np.arange(6, dtype=np.float32).reshape(2, 3)},
        strategy_state={"m_t/dict/a": np.ones((2, 3), np.float32)},
        sampler_state=ClientSampler(7).state(),
    )
    save_checkpoint(s, tmp_path)
    s.round = 4
    s.global_state = {"a": np.zeros((2, 3), np.float32)}
    save_checkpoint(s, tmp_path)
    assert json.loads((tmp_path / "latest.json").read_text())["round"] == 4
    back = load_checkpoint(tmp_path)
    assert back.round == 4 and back.sampler_state == ClientSampler(7).state()
    assert set(json.loads((tmp_path / "round-0004" / "state.json").read_text())) == {"round", "sampler_state"}
    np.testing.assert_array_equal(back.global_state["a"], np.zeros((2, 3)))
    np.testing.assert_array_equal(back.strategy_state["m_t/dict/a"], np.ones((2, 3)))
    assert (tmp_path / "round-0003" / "global.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_only_the_newest_checkpoints_are_kept_and_crash_leftovers_go(tmp_path):
    (tmp_path / ".round-0002-abc").mkdir(parents=True)  # a write interrupted by a crash
    for rnd in range(1, 6):
        save_checkpoint(ServerState(round=rnd, global_state={"a": np.full(2, rnd, np.float32)}), tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "round-0004", "round-0005"]
    assert load_checkpoint(tmp_path).global_state["a"][0] == 5
    save_checkpoint(ServerState(round=6, global_state={"a": np.zeros(2, np.float32)}), tmp_path, keep=0)
    assert (tmp_path / "round-0004").exists()  # keep=0 keeps all


def test_a_metrics_line_cut_short_by_a_crash_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0, "wall_s": 1.0}\n{"round": 1, "wall_s": 2.0}\n{"round": 2, "wa')
    assert [r["round"] for r in MetricsLog(path).rows] == [0, 1]
    path.write_text('{"round": 0}\n{"rou\n{"round": 2}\n')
    import pytest

    with pytest.raises(ValueError, match="line 2 is not JSON"):
        MetricsLog(path)


def test_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path) is None


def test_sampler_is_seeded_and_resumes_exactly():
    ids = list(range(100))
    a = ClientSampler(1)
    first = [a.sample(ids, 10) for _ in range(3)]
    b = ClientSampler(1)
    assert [b.sample(ids, 10) for _ in range(3)] == first
    state = a.state()
    nxt = a.sample(ids, 10)
    c = ClientSampler(999)
    c.set_state(json.loads(json.dumps(state)))  # survives the JSON checkpoint
    assert c.sample(ids, 10) == nxt
    assert all(len(set(s)) == 10 for s in first)
    assert ClientSampler(2).sample(ids, 10) != first[0]


def test_sampled_grid_shows_only_sampled_nodes():
    class G:
        def get_node_ids(self):
            return [1, 2, 3]

        def run(self):
            return "ok"

    g = SampledGrid(G(), [3, 1])
    assert g.get_node_ids() == [3, 1] and g.run() == "ok"


def test_metrics_log_truncates_on_resume(tmp_path):
    row = dict.fromkeys(
        ["train_loss", "eval_loss", "eval_accuracy", "client_peak_rss_mb"], None
    ) | {"bytes_up": 1, "bytes_down": 2, "clients": 1, "failures": 0, "exchanges": 1, "wall_s": 0.1}
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for r in range(4):
        log.append({**row, "round": r})
    log2 = MetricsLog(tmp_path / "metrics.jsonl")
    log2.truncate_after(2)
    assert [r["round"] for r in MetricsLog(tmp_path / "metrics.jsonl").rows] == [0, 1, 2]
    assert log2.summary()["total_bytes_up"] == 2  # rounds 1 and 2 (round 0 is evaluation only)
