"""scripts/paired.py compares two finished runs: a charrnn run directory and a reference
script's JSON, the table's rows at charrnn's evaluations with the reference's loss at the
same wall time, and the plot of both curves."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import paired  # noqa: E402

OURS = [(100.0, 250, 1.80), (200.0, 500, 1.60), (300.0, 750, 1.50)]
THEIRS = [(90.0, 60, 1.90), (210.0, 140, 1.70), (330.0, 220, 1.55)]


def test_loss_at_is_linear_between_points_and_none_outside():
    assert paired.loss_at(THEIRS, 90.0) == pytest.approx(1.90)
    assert paired.loss_at(THEIRS, 150.0) == pytest.approx(1.80)
    assert paired.loss_at(THEIRS, 300.0) == pytest.approx(1.5875)
    assert paired.loss_at(THEIRS, 80.0) is None
    assert paired.loss_at(THEIRS, 331.0) is None


def test_table_pairs_each_evaluation_with_the_reference_at_that_time():
    rows = paired.table(OURS, THEIRS).splitlines()
    assert len(rows) == 2 + len(OURS) + 2
    assert rows[2] == "| 100 s | 250 | 1.8000 | 1.8833 | -0.0833 |"
    assert rows[3] == "| 200 s | 500 | 1.6000 | 1.7167 | -0.1167 |"
    assert rows[-2] == "| charrnn's end: 300 s, step 750 | | **1.5000** | | |"
    assert rows[-1] == "| the reference's end: 330 s, step 220 | | | **1.5500** | |"


def test_main_compares_finished_runs_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    with (run / "metrics.jsonl").open("w") as f:
        for seconds, step, loss in OURS:
            f.write(json.dumps({"step": step, "elapsed": seconds, "train_loss": 2.0}) + "\n")  # a train-only row
            f.write(json.dumps({"step": step, "elapsed": seconds, "val_loss": loss}) + "\n")
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps({"log": [{"wall_s": s, "steps": n, "val_loss": v} for s, n, v in THEIRS]}))
    paired.main(["--run", str(run), "--reference-json", str(reference), "--plot", str(tmp_path / "p.png")])
    assert paired.table(OURS, THEIRS) in capsys.readouterr().out
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("argv", [[], ["configs/tiny.toml", "--run", "x", "--reference-json", "r.json"],
                                  ["configs/tiny.toml"], ["configs/tiny.toml", "--reference", "a.py",
                                                          "--reference-json", "r.json"]])
def test_one_source_for_each_side(argv):
    with pytest.raises(SystemExit) as stopped:
        paired.parse_args(argv)
    assert stopped.value.code == 2


def test_an_existing_run_directory_stops_it_before_the_reference_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "paired" / "tiny" / "charrnn").mkdir(parents=True)
    with pytest.raises(SystemExit, match="runs/paired/tiny/charrnn already holds a run"):
        paired.main(["configs/tiny.toml", "--reference", str(tmp_path / "absent.py")])
