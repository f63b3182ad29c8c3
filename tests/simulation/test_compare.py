"""``python -m simulation.compare`` on fake run directories (no Flower run)."""

import csv
import io
import json
import re

import pytest
import yaml
from rich.console import Console

from simulation.compare import (
    HEADERS,
    assign_labels,
    find_runs,
    load_runs,
    main,
    print_tables,
    run_stats,
    to_target,
)


def row(r, acc, wall=1.0, up=1000):
    return {"round": r, "train_loss": None if r == 0 else 1.0 / (r + 1), "eval_loss": 1.0, "eval_accuracy": acc,
            "bytes_up": 0 if r == 0 else up, "bytes_down": 0 if r == 0 else 2 * up, "clients": 2, "failures": 0,
            "wall_s": wall, "client_peak_rss_mb": 100.0 + r}


def config(strategy="fedavg", alpha=0.5, lr=0.002, **top):
    strat = {"name": strategy, "_target_": None, "kwargs": {}}
    if strategy == "fedprox":
        strat["proximal_mu"] = 0.1
    cfg = {"model": {"name": "minilm", "path": None}, "quant": {"mode": "none"},
           "partition": {"name": "dirichlet", "alpha": alpha}, "method": {"name": "lora", "r": 8, "lora_alpha": 16},
           "strategy": strat, "num_clients": 4, "rounds": 3, "lr": lr, "seed": 0}
    cfg.update(top)
    return cfg


def fake_run(path, accs, cfg=None, walls=None, up=1000):
    path.mkdir(parents=True)
    walls = walls or [1.0] * len(accs)
    rows = [row(r, a, w, up) for r, (a, w) in enumerate(zip(accs, walls))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (path / "summary.json").write_text(json.dumps({"rounds": len(accs) - 1}))
    if cfg is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sweep(root):
    """A Hydra multirun root: 0/..3/ (strategy x alpha), multirun.yaml, .hydra/."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    (root / ".hydra").mkdir()
    (root / ".hydra" / "config.yaml").write_text("rounds: 3\n")
    combos = [("fedavg", 0.1), ("fedavg", 1.0), ("fedprox", 0.1), ("fedprox", 1.0)]
    for i, (s, a) in enumerate(combos):
        fake_run(root / str(i), [0.25, 0.4 + i / 10, 0.5 + i / 10, 0.6 + i / 10],
                 config(s, a) | {"run_dir": f"multirun/2026-12-02/10-00-00/{i}", "logger": ["tensorboard"] * (i % 2)})
    return root


def test_sweep_root_labels_by_differing_keys(tmp_path, capsys):
    root = sweep(tmp_path / "multirun" / "2026-12-02" / "10-00-00")
    out = tmp_path / "cmp.png"
    main([str(root), "-o", str(out), "--markdown"])
    cap = capsys.readouterr()
    assert out.stat().st_size > 10_000
    assert "Traceback" not in cap.err and "multirun.yaml" not in cap.err  # not a path given: found nothing to ignore
    lines = [line for line in cap.out.splitlines() if line.startswith("| strategy=")]
    assert [line.split(" | ")[0] for line in lines] == [
        "| strategy=fedavg alpha=0.1", "| strategy=fedavg alpha=1.0",
        "| strategy=fedprox alpha=0.1", "| strategy=fedprox alpha=1.0",
    ]  # run_dir and the implied strategy.proximal_mu stay out of the labels
    assert "| strategy=fedprox alpha=1.0 | 3 | 0.9000 | 0.9000 |" in cap.out


def test_sweep_with_ten_jobs_sorts_numerically(tmp_path):
    root = tmp_path / "sweep"
    for i in range(11):
        fake_run(root / str(i), [0.1, 0.2], config(lr=0.001 * (i + 1)))
    assert [p.name for p in find_runs([str(root)], print)] == [str(i) for i in range(11)]


def test_glob_skips_non_runs_with_a_note(tmp_path, capsys, monkeypatch):
    sweep(tmp_path / "mr")
    (tmp_path / "mr" / "empty_dir").mkdir()
    monkeypatch.chdir(tmp_path)
    main(["mr/*", "mr/.hydra", "missing_dir", "-o", "c.png", "--markdown"])  # quoted glob: expanded here
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    notes = cap.err.strip().splitlines()
    assert "ignored mr/multirun.yaml: not a run directory" in notes
    assert any(n.startswith("ignored mr/empty_dir: not a run directory") for n in notes)
    assert any(n.startswith("ignored mr/.hydra: not a run directory") for n in notes)
    assert "ignored missing_dir: no such file or directory" in notes
    assert len(notes) == 4
    assert cap.out.count("| strategy=") == 4


def test_shell_expanded_paths_and_duplicates(tmp_path, capsys):
    root = sweep(tmp_path / "mr")
    shell_glob = sorted(str(p) for p in root.iterdir() if not p.name.startswith("."))  # what `mr/*` gives
    paths = [*shell_glob, str(root / "0")]  # and a duplicate
    main([*paths, "-o", str(tmp_path / "c.png"), "--markdown"])
    cap = capsys.readouterr()
    assert cap.err.strip() == f"ignored {root / 'multirun.yaml'}: not a run directory"
    assert cap.out.count("| strategy=") == 4


def test_corrupt_and_empty_metrics_are_skipped(tmp_path, capsys):
    good = fake_run(tmp_path / "good", [0.1, 0.5])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("\n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"round": 0, "eval_acc')
    main([str(good), str(tmp_path / "empty"), str(tmp_path / "bad"), "-o", str(tmp_path / "c.png"), "--markdown"])
    cap = capsys.readouterr()
    assert f"skipped {tmp_path / 'empty'}: metrics.jsonl is empty" in cap.err
    assert f"skipped {tmp_path / 'bad'}: metrics.jsonl line 1 is not JSON" in cap.err
    assert "| good | 1 | 0.5000 |" in cap.out


def test_no_runs_exits_2(tmp_path, capsys):
    (tmp_path / "multirun.yaml").write_text("x: 1\n")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "multirun.yaml"), str(tmp_path / "nothing"), str(tmp_path / "*.none")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no runs to compare" in err and "Traceback" not in err
    assert not (tmp_path / "compare.png").exists()


def test_target_ignores_round_zero(tmp_path, capsys):
    rows = [row(0, 0.9, wall=50.0), row(1, 0.3), row(2, 0.4)]
    assert to_target(rows, 0.85) is None  # the untrained model's evaluation is no hit
    a = fake_run(tmp_path / "a", [0.9, 0.3, 0.4], walls=[50.0, 1.0, 1.0])
    b = fake_run(tmp_path / "b", [0.2, 0.5, 0.9, 0.95], walls=[50.0, 2.0, 3.0, 4.0])
    assert to_target([row(0, 0.2, 50.0), row(1, 0.5, 2.0), row(2, 0.9, 3.0)], 0.85) == {
        "round": 2, "bytes_up": 2000, "wall_s": 5.0}  # wall from round 1, round 0's evaluation excluded
    main([str(a), str(b), "-o", str(tmp_path / "c.png"), "--target", "0.85", "--markdown"])
    out = capsys.readouterr().out
    assert "| a | 2 | 0.4000 | 0.9000 | 0.3500 | 0.00191 | 0.00381 | 2.0 | 102 | not reached | - | - |" in out
    assert "| b | 3 | 0.9500 | 0.9500 | 0.7833 | 0.00286 | 0.00572 | 9.0 | 103 | 2 | 0.00191 | 5.0 |" in out
    stats = run_stats([row(0, 0.9, wall=50.0), row(1, 0.3)])
    assert stats["wall_s"] == 1.0 and stats["bytes_up"] == 1000  # the table's wall s: rounds >= 1 only


def test_labels_fallback_and_unique(tmp_path):
    same = [fake_run(tmp_path / "x" / "10-00-00", [0.1, 0.2], config()),
            fake_run(tmp_path / "y" / "10-00-00", [0.1, 0.3], config())]
    runs = load_runs(same, print)
    assign_labels(runs)
    assert [r.label for r in runs] == ["x/10-00-00", "y/10-00-00"]  # nothing differs: shortest telling folder
    twins = [fake_run(tmp_path / "t" / str(i), [0.1, 0.2], config("fedprox" if i == 2 else "fedavg", run_dir=str(i)))
             for i in range(3)]
    runs = load_runs(twins, print)
    differing, shorts = assign_labels(runs)
    labels = [r.label for r in runs]
    assert labels == ["strategy=fedavg (0)", "strategy=fedavg (1)", "strategy=fedprox"]
    assert "run_dir" not in differing and shorts == {"strategy.name": "strategy"}
    noconf = [fake_run(tmp_path / "n" / "fedavg", [0.1, 0.2]), fake_run(tmp_path / "n" / "fedprox", [0.1, 0.2])]
    runs = load_runs(noconf, print)
    assign_labels(runs)
    assert [r.label for r in runs] == ["fedavg", "fedprox"]


def test_ambiguous_leaf_keeps_full_key(tmp_path):
    dirs = [fake_run(tmp_path / str(i), [0.1, 0.2], config(seed=i, data={"seed": i})) for i in range(2)]
    runs = load_runs(dirs, print)
    assign_labels(runs)
    assert [r.label for r in runs] == ["seed=0 data.seed=0", "seed=1 data.seed=1"]


def render(runs, target=None, width=80):
    buf = io.StringIO()
    print_tables(runs, Console(width=width, file=buf), title="t", target=target, caption="curves in c.png")
    return buf.getvalue()


@pytest.mark.parametrize("long_labels", [False, True])
def test_table_readable_at_80_columns(tmp_path, long_labels):
    dirs = []
    for i in range(12):
        extra = {"method": {"name": "lora", "r": 8 * (i + 1), "lora_alpha": 16 * (i + 1),
                            "target_modules": ["query", "value"] if i % 2 else ["query"]}} if long_labels else {}
        strategy = "fedprox" if long_labels and i % 2 else "fedavg"
        cfg = config(strategy, alpha=round(0.1 * (i + 1), 1)) | extra
        dirs.append(fake_run(tmp_path / str(i), [0.25, 0.5, 0.8 + i / 100], cfg, walls=[1.0, 1234.5, 4321.0],
                             up=123_456_789))
    runs = load_runs(dirs, print)
    assign_labels(runs)
    for r in runs:
        r.stats = run_stats(r.rows, 0.805)
    text = render(runs, target=0.805)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    header_lines = [line for line in lines if "rnds" in line]
    assert len(header_lines) == 1
    for word in " ".join(HEADERS).split():
        assert word in header_lines[0].split()  # no header word split across lines
    assert "round" in text.split() and "not reached" in text
    for r in runs:
        s = r.stats
        row_line = " ".join(str(x) for x in [s["rounds"], f"{s['final_acc']:.4f}", f"{s['best_acc']:.4f}",
                                             f"{s['last3_acc']:.4f}", "235", "471", "5556", "102"])
        assert re.search(r"\s+".join(map(re.escape, row_line.split())), text), row_line
    if long_labels:
        for i, r in enumerate(runs, 1):
            assert f"{i:>2}  {r.label}" in text  # numbered key, each label whole on its line
    else:
        for r in runs:
            assert r.label in text


def test_csv_has_full_columns(tmp_path, capsys):
    root = sweep(tmp_path / "mr")
    out = tmp_path / "runs.csv"
    main([str(root), "-o", str(tmp_path / "c.png"), "--csv", str(out), "--target", "0.75"])
    capsys.readouterr()
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["label", "run_dir", "partition.alpha", "strategy.name", "strategy.proximal_mu",
                             "rounds", "final_acc", "best_acc", "last3_acc", "bytes_up", "bytes_down", "wall_s", "peak_rss_mb",
                             "target", "target_round", "target_bytes_up", "target_wall_s"]
    assert [r["label"] for r in rows] == ["strategy=fedavg alpha=0.1", "strategy=fedavg alpha=1.0",
                                          "strategy=fedprox alpha=0.1", "strategy=fedprox alpha=1.0"]
    first, last = rows[0], rows[3]
    assert first["run_dir"] == str(root / "0") and first["strategy.proximal_mu"] == ""
    assert last["strategy.proximal_mu"] == "0.1" and last["partition.alpha"] == "1.0"
    assert (first["rounds"], first["bytes_up"], first["bytes_down"], first["wall_s"]) == ("3", "3000", "6000", "3.0")
    assert float(first["final_acc"]) == pytest.approx(0.6) and first["peak_rss_mb"] == "103.0"
    assert first["target_round"] == "" and first["target"] == "0.75"
    assert (last["target_round"], last["target_bytes_up"], last["target_wall_s"]) == ("2", "2000", "2.0")


def test_help_has_description_example_and_option_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Compare finished runs" in out and "examples:" in out and "python -m simulation.compare multirun/" in out
    from simulation.compare import parser

    for action in parser()._actions:
        assert action.help, action.dest


def test_over_seed_gives_each_setting_mean_and_sd(tmp_path, capsys):
    runs = {("fedavg", 0): [0.2, 0.5, 0.80], ("fedavg", 1): [0.2, 0.6, 0.90],
            ("fedprox", 0): [0.2, 0.4, 0.60], ("fedprox", 1): [0.2, 0.3, 0.70]}
    paths = [str(fake_run(tmp_path / f"{s}_{seed}", accs, config(strategy=s, seed=seed)))
             for (s, seed), accs in runs.items()]
    main([*paths, "-o", str(tmp_path / "c.png"), "--markdown", "--over", "seed", "--target", "0.75"])
    out = capsys.readouterr().out
    assert "| setting | seed | final | best | last3 | MiB up | round to 75% |" in out
    # fedavg: finals 0.8, 0.9 -> 0.85 ± 0.0707; last3 (0.65, 0.75) -> 0.70; both reach 75% at round 2
    assert "| strategy=fedavg | 0,1 | 0.8500±0.0707 | 0.8500±0.0707 | 0.7000±0.0707 | 0.00191 | 2.0±0.0 2/2 |" in out
    assert "| strategy=fedprox | 0,1 | 0.6500±0.0707 | 0.6500±0.0707 | 0.5000±0.0000 | 0.00191 | never 0/2 |" in out
    main([*paths, "-o", str(tmp_path / "c.png"), "--over", "seed"], console=Console(width=80, file=io.StringIO()))
    with pytest.raises(SystemExit) as exc:
        main([*paths, "-o", str(tmp_path / "c.png"), "--over", "seeds"])
    assert exc.value.code == 2 and "--over seeds: no run's config has that key" in capsys.readouterr().err
