"""`plainnet report`: Table I, its files and its rows from hand-written run directories (the
claims: test_claims.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from plainnet.cli import main
from plainnet.errors import UserError
from plainnet.grid import cells as group_cells
from plainnet.grid import load_runs
from plainnet.report import table1_rows, write_report
from plainnet.stats import mean_std
from rundirs import SECONDS, write_grid, write_run

# Final test errors per (model, schedule), three seeds: means 28, 27.5, 26 / 26.5, 28, 26.
ERRORS = {
    ("plain11", "step"): [27.0, 28.0, 29.0],
    ("plain11", "clr"): [27.0, 27.5, 28.0],
    ("plain11", "sgdr"): [25.0, 26.0, 27.0],
    ("resnet110", "step"): [26.0, 26.5, 27.0],
    ("resnet110", "clr"): [27.0, 28.0, 29.0],
    ("resnet110", "sgdr"): [25.5, 26.0, 26.5],
}


@pytest.fixture
def grid(tmp_path) -> Path:
    write_grid(tmp_path, ERRORS)
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


def test_shortened_runs_are_flagged(tmp_path):
    for (model, schedule), errors in ERRORS.items():
        write_run(tmp_path, model, schedule, 0, errors[0], scale=0.05, dataset="folder")
    write_report(tmp_path, log=lambda _m: None)
    text = (tmp_path / "report.md").read_text()
    assert "Not the paper's setting" in text and "data set folder" in text
    assert "Verdicts on shortened or non-CIFAR-100 runs do not test the paper's" in text


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


def test_runs_are_pooled_only_within_one_resolved_precision(tmp_path):
    """Rows hold the precision a run trained in, not the one asked for: ``--amp auto`` that
    resolved to bf16 pools with ``--amp bf16``, never with fp32 (resolved "off"), and TF32
    where a run recorded it is part of the row too."""
    sgdr = {"epochwise_sgdr": True}
    write_run(tmp_path, "plain11", "sgdr", 0, 30.0, options={**sgdr, "amp": "auto"})
    write_run(tmp_path, "plain11", "sgdr", 1, 31.0, options={**sgdr, "amp": "auto"},
              resolved={"amp": "bf16"})  # fmt: skip
    write_run(tmp_path, "plain11", "sgdr", 2, 32.0, options={**sgdr, "amp": "bf16"},
              resolved={"amp": "bf16"})  # fmt: skip
    write_run(tmp_path, "plain11", "sgdr", 3, 33.0, options={**sgdr, "amp": "bf16"},
              resolved={"amp": "bf16", "tf32": True})  # fmt: skip
    runs, _ = load_runs(tmp_path)
    rows = {r["variant"]: r for r in table1_rows(group_cells(runs))}
    assert sorted(rows) == ["SGDR (per epoch)", "SGDR (per epoch, bf16)",
                            "SGDR (per epoch, bf16, TF32)"]  # fmt: skip
    assert rows["SGDR (per epoch)"]["runs"] == ["plain11-sgdr-s0"]
    assert rows["SGDR (per epoch, bf16)"]["runs"] == ["plain11-sgdr-s1", "plain11-sgdr-s2"]
    assert rows["SGDR (per epoch, bf16)"]["test_error_mean"] == pytest.approx(31.5)
    assert "amp='bf16'" in rows["SGDR (per epoch, bf16)"]["differs"]
    assert "amp='off'" in rows["SGDR (per epoch)"]["differs"]
    assert "tf32=True" in rows["SGDR (per epoch, bf16, TF32)"]["differs"]
    write_report(tmp_path, log=lambda _m: None)
    text = (tmp_path / "report.md").read_text()
    assert "differs in" in text and "amp='off'" in text and "amp='bf16'" in text


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


def test_the_report_says_at_its_top_how_many_runs_failed_and_why(tmp_path):
    write_run(tmp_path, "plain11", "sgdr", 0, 30.0)
    for seed, why in ((1, "RuntimeError: out of memory"), (2, None)):
        path = write_run(tmp_path, "plain11", "sgdr", seed, 30.0, status="failed", done=0)
        summary = json.loads((path / "summary.json").read_text())
        (path / "summary.json").write_text(json.dumps({**summary, "error": why}))
    write_report(tmp_path, log=lambda _m: None)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[2] == (
        "> **2 of 3 runs failed**: `plain11-sgdr-s1`: RuntimeError: out of memory; "
        "`plain11-sgdr-s2`: no reason recorded (see Runs)."
    )
    write_run(tmp_path / "fine", "plain11", "sgdr", 0, 30.0)
    write_report(tmp_path / "fine", log=lambda _m: None)
    assert "failed**" not in (tmp_path / "fine" / "report.md").read_text()


def test_the_report_draws_each_schedule_as_training_built_it(tmp_path):
    """`schedule_of` is `plainnet.recipe.schedule_for` of the stored configuration: the length,
    the bounds, SGDR's stepping and --scale-batch's factor; a damaged record draws nothing."""
    from plainnet.config import TrainConfig
    from plainnet.grid import load_runs
    from plainnet.recipe import schedule_for
    from plainnet.report import schedule_of

    options = {"epochs": 18, "epochwise_sgdr": True, "scale_batch": True, "lr_max": 0.05}
    write_run(tmp_path, "plain11", "sgdr", 0, 30.0, options=options,
              resolved={"world_size": 2})  # fmt: skip
    write_run(tmp_path, "plain11", "clr", 0, 30.0, options={"scale": "not a number"})
    runs = {r.schedule: r for r in load_runs(tmp_path)[0]}
    drawn = schedule_of(runs["sgdr"])
    built = schedule_for(TrainConfig(schedule="sgdr", **options), 50, world_size=2)
    assert drawn.lr_scale == 2.0 and drawn.epochs == 18
    assert [drawn(t) for t in range(0, 900, 37)] == [built(t) for t in range(0, 900, 37)]
    assert schedule_of(runs["clr"]) is None
    write_report(tmp_path, log=lambda _m: None)  # and the report is written all the same
