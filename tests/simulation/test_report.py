"""report.png and the run comparison work from metrics.jsonl alone."""

import json

from simulation.compare import main as compare_main
from simulation.compare import to_target
from simulation.report import write_report


def fake_run(path, accs):
    path.mkdir()
    rows = [
        {"round": r, "train_loss": None if r == 0 else 1.0 / (r + 1), "eval_loss": 1.0, "eval_accuracy": a,
         "bytes_up": 0 if r == 0 else 1000, "bytes_down": 0 if r == 0 else 1000, "clients": 2, "failures": 0,
         "wall_s": 1.0, "client_peak_rss_mb": 100.0}
        for r, a in enumerate(accs)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"strategy": path.name}))
    return path, rows


def test_report_and_compare(tmp_path, capsys):
    a, rows = fake_run(tmp_path / "fedavg", [0.2, 0.5, 0.9])
    b, _ = fake_run(tmp_path / "fedprox", [0.2, 0.4, 0.6])
    assert write_report(a).stat().st_size > 10_000
    assert to_target(rows, 0.85) == {"round": 2, "bytes_up": 2000, "wall_s": 2.0}  # wall from round 1
    out = tmp_path / "cmp.png"
    compare_main([str(a), str(b), "-o", str(out), "--target", "0.85", "--markdown"])
    text = capsys.readouterr().out
    assert out.exists() and "| fedavg | 2 | 0.9000 |" in text and "not reached" in text
