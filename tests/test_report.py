"""`plainnet report`: statistics, Table I and the claims from hand-written run directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from plainnet.claims import claims
from plainnet.cli import main
from plainnet.errors import UserError
from plainnet.grid import cells as group_cells
from plainnet.grid import load_runs
from plainnet.report import table1_rows, write_report
from plainnet.stats import mean_std, welch

# Final test errors per (model, schedule), three seeds: means 28, 27.5, 26 / 26.5, 28, 26.
ERRORS = {
    ("plain11", "step"): [27.0, 28.0, 29.0],
    ("plain11", "clr"): [27.0, 27.5, 28.0],
    ("plain11", "sgdr"): [25.0, 26.0, 27.0],
    ("resnet110", "step"): [26.0, 26.5, 27.0],
    ("resnet110", "clr"): [27.0, 28.0, 29.0],
    ("resnet110", "sgdr"): [25.5, 26.0, 26.5],
}
SECONDS = {"plain11": 40.0, "resnet110": 170.0}


def write_run(
    root: Path,
    model: str,
    schedule: str,
    seed: int,
    error: float,
    *,
    status: str = "finished",
    epochs: int = 4,
    done: int = 4,
    scale: float = 1.0,
    dataset: str = "cifar100",
    options: dict | None = None,
    name: str | None = None,
) -> Path:
    """A run directory as `train` leaves it: config, per-epoch metrics (the last epoch's test
    error is ``error``) and summary."""
    path = root / (name or f"{model}-{schedule}-s{seed}")
    path.mkdir(parents=True)
    config = {
        "config": {"model": model, "schedule": schedule, "seed": seed, "scale": scale},
        "resolved": {"iters_per_epoch": 50, "dataset": dataset},
        "environment": {"plainnet": "0.1.0", "torch": "2.x", "device_name": "Test GPU"},
    }
    config["config"].update({"dataset": dataset, "batch_size": 100, "epochs": None})
    config["config"].update(options or {})
    (path / "config.json").write_text(json.dumps(config))
    rows = [
        {
            "epoch": e,
            "test_error": error + 10.0 * (done - e),
            "train_seconds": SECONDS.get(model, 10.0),
        }
        for e in range(1, done + 1)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "status": status,
        "model": model,
        "schedule": schedule,
        "seed": seed,
        "epochs": epochs,
        "epochs_done": done,
        "test_error": error,
        "best_test_error": error,
        "mean_train_seconds": SECONDS.get(model, 10.0) + seed,  # 40, 41, 42 / 170, 171, 172
        "parameters": 1000,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.fixture
def grid(tmp_path) -> Path:
    for (model, schedule), errors in ERRORS.items():
        for seed, error in enumerate(errors):
            write_run(tmp_path, model, schedule, seed, error)
    return tmp_path


def test_table_holds_means_and_stds(grid):
    runs, problems = load_runs(grid)
    assert not problems and len(runs) == 18
    rows = {(r["model"], r["schedule"]): r for r in table1_rows(group_cells(runs))}
    for key, errors in ERRORS.items():
        mean, std = mean_std(errors)
        assert rows[key]["test_error_mean"] == pytest.approx(mean)
        assert rows[key]["test_error_std"] == pytest.approx(std)
        assert rows[key]["seeds"] == 3
        assert rows[key]["seconds_per_epoch"] == pytest.approx(SECONDS[key[0]] + 1)
    assert rows["plain11", "step"]["error"] == "28.00 ± 1.00 (n=3)"
    assert rows["resnet110", "sgdr"]["paper_test_error"] == 25.98


def test_claims_verdicts_and_intervals(grid):
    runs, _ = load_runs(grid)
    by_text = {
        c.text.split(" for ")[-1] if "beats" in c.text else c.text[:20]: c
        for c in claims(group_cells(runs))
    }
    within = by_text["Plain-11 with SGDR c"]  # 26.0 - 26.0 = 0 <= 1.5
    assert within.measured == "+0.00 pt" and within.verdict == "holds"
    gain = by_text["SGDR improves Plain-"]  # (28 - 26) - (26.5 - 26) = +1.5
    assert gain.measured == "+1.50 pt" and gain.verdict == "holds"
    time = by_text["ResNet-110 takes abo"]
    assert time.verdict == "holds" and float(time.measured.split()[0]) == pytest.approx(
        171 / 41, rel=1e-3
    )
    assert by_text["Plain-11"].verdict == "holds"  # SGDR 26 vs CLR 27.5
    assert by_text["ResNet-110"].verdict == "holds"  # 26 vs 28
    assert "undecided" in by_text["ResNet-110"].note  # -2.00, but CI [-4.08, +0.08]
    assert "excludes" in time.note
    low, high = (float(x) for x in by_text["Plain-11"].interval.split("]")[0][1:].split(","))
    iv = welch([(1, ERRORS["plain11", "sgdr"]), (-1, ERRORS["plain11", "clr"])])
    assert (low, high) == (pytest.approx(iv.low, abs=0.01), pytest.approx(iv.high, abs=0.01))


def test_report_files_and_edge_cases(grid):
    # One seed of a new config still running, one broken, one never started, one failed.
    write_run(grid, "plain8", "sgdr", 0, 50.0, status="running", epochs=9, done=3)
    write_run(grid, "plain8", "sgdr", 1, 50.0, status="failed", done=2)
    bad = write_run(grid, "plain8", "sgdr", 2, 50.0)
    (bad / "summary.json").write_text("{ not json")
    (grid / "plain8-step-s0").mkdir()
    (grid / "plain11-sgdr-s0" / "evaluation.json").write_text(
        json.dumps({"test_error": 25.0, "ensemble_test_error": 24.0, "ensemble_snapshots": [12]})
    )
    (grid / "plain11-sgdr-s1" / "evaluation.json").write_text(
        json.dumps({"test_error": 26.0, "ensemble_test_error": 25.0, "ensemble_snapshots": [12]})
    )
    write_report(grid, log=lambda _m: None)
    text = (grid / "report.md").read_text()
    assert "Not the paper's setting" not in text
    assert "running (epoch 3/9)" in text
    assert "failed (epoch 2/4)" in text
    assert "plain8-sgdr-s2`: " in text and "corrupt" in text
    assert "plain8-step-s0`: no summary.json" in text
    assert "[plain11-sgdr-s0](plain11-sgdr-s0/)" in text
    assert "Test GPU" in text
    with open(grid / "table1.csv") as f:
        table = {(r["model"], r["schedule"]): r for r in csv.DictReader(f)}
    assert float(table["plain11", "sgdr"]["ensemble"]) == pytest.approx(24.5)
    assert float(table["resnet110", "clr"]["test_error_mean"]) == pytest.approx(28.0)
    assert table["plain8", "sgdr"]["seeds"] == "0"
    for name in ("lr_schedules.png", "test_error.png", "epoch_time.png"):
        assert (grid / "figures" / name).stat().st_size > 5000


def test_shortened_runs_are_flagged_and_few_seeds_warned(tmp_path):
    for (model, schedule), errors in ERRORS.items():
        write_run(tmp_path, model, schedule, 0, errors[0], scale=0.05, dataset="folder")
    write_report(tmp_path, log=lambda _m: None)
    text = (tmp_path / "report.md").read_text()
    assert "Not the paper's setting" in text and "data set folder" in text
    assert "too few seeds to decide (n=1" in text


def test_report_cli(grid, tmp_path, capsys):
    assert main(["report", str(grid)]) == 0
    assert "# Table I" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such directory" in err[0]


def test_load_runs_missing_dir(tmp_path):
    with pytest.raises(UserError):
        load_runs(tmp_path / "missing")


def test_runs_of_other_configurations_are_never_pooled(grid):
    """A second configuration of Plain-11 with SGDR (another length, and SGDR stepped per
    epoch) is its own row, its seeds pooled apart, and the report names what differs."""
    for seed, error in enumerate([40.0, 42.0]):
        write_run(grid, "plain11", "sgdr", seed, error, name=f"short-s{seed}",
                  options={"epochs": 18.0, "epochwise_sgdr": True})  # fmt: skip
    runs, _ = load_runs(grid)
    rows = [r for r in table1_rows(group_cells(runs)) if r["model"] == "plain11"]
    sgdr = [r for r in rows if r["schedule"] == "sgdr"]
    assert sorted(r["seeds"] for r in sgdr) == [2, 3]
    assert sorted(r["test_error_mean"] for r in sgdr) == [26.0, 41.0]
    short = next(r for r in sgdr if r["seeds"] == 2)
    assert short["differs"] == "epochs=18.0, epochwise_sgdr=True"
    assert short["variant"] == "SGDR (per epoch)"
    write_report(grid, log=lambda _m: None)
    text = (grid / "report.md").read_text()
    assert "differs in" in text and "epochs=18.0, epochwise_sgdr=True" in text
    assert "SGDR (per iteration)" in text  # the other row says how its SGDR stepped


def test_markdown_specials_are_escaped_and_the_csv_holds_plain_values(tmp_path):
    write_run(tmp_path, "plain8-8|16", "clr", 0, 87.99999952316284, name="plain8-8_16-clr-s0")
    write_report(tmp_path, log=lambda _m: None)
    text = (tmp_path / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| plain8-8"))
    assert "plain8-8\\|16" in row  # the | cannot split the row's cells
    assert row.count(" | ") == text.splitlines()[2].count(" | ")  # as many cells as the header
    with open(tmp_path / "table1.csv") as f:
        (entry,) = list(csv.DictReader(f))
    assert entry["model"] == "plain8-8|16" and entry["test_error_mean"] == "88.0"
    assert entry["runs"] == "plain8-8_16-clr-s0"  # a name, not a Markdown link
    assert entry["paper_test_error"] == "" and entry["test_error_std"] == ""  # unknown: empty


def test_a_run_of_the_wrong_shape_is_listed_and_the_report_goes_on(grid):
    bad = write_run(grid, "plain8", "step", 0, 50.0)
    (bad / "summary.json").write_text(json.dumps({"status": "finished", "test_error": "abc"}))
    listed = write_run(grid, "plain8", "clr", 0, 50.0)
    (listed / "config.json").write_text(json.dumps(["not", "an", "object"]))
    write_report(grid, log=lambda _m: None)
    text = (grid / "report.md").read_text()
    assert "plain8-step-s0`: " in text and "test_error" in text
    assert "plain8-clr-s0`: " in text
    assert "| Plain-11" in text  # the rest of the grid is reported


def test_the_closing_line_names_exactly_what_was_written(grid, tmp_path):
    """The figures a grid gives and no others: none without runs, none for a run that has
    neither a schedule to draw (no config.json) nor an epoch or a time to plot."""

    def closing_line(out: Path) -> str:
        lines = []
        write_report(out, log=lines.append)
        return lines[-1]

    figures = [
        grid / "figures" / n for n in ("lr_schedules.png", "test_error.png", "epoch_time.png")
    ]
    files = [grid / "report.md", grid / "table1.csv", *figures]
    assert closing_line(grid) == f"wrote {', '.join(map(str, files[:-1]))} and {files[-1]}"
    empty = tmp_path / "empty"
    (empty / "not-started").mkdir(parents=True)
    assert closing_line(empty) == f"wrote {empty / 'report.md'} and {empty / 'table1.csv'}"
    bare = tmp_path / "bare"
    run = write_run(bare, "plain11", "sgdr", 0, 50.0, status="failed", done=0)
    (run / "config.json").unlink()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "mean_train_seconds": None}))
    assert closing_line(bare) == f"wrote {bare / 'report.md'} and {bare / 'table1.csv'}"
    assert not (empty / "figures").exists() and not (bare / "figures").exists()
