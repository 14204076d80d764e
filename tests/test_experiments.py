"""`plainnet reproduce` / `sweep`: the grid runner on tiny networks and tiny CIFAR-10 files.

Each run trains in a child process for real (plain8, plain8|16 and resnet8, 100 training images,
batch 20: 5 iterations an epoch, 9 epochs at scale 0.05).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest

from plainnet.cli import main
from plainnet.errors import UserError
from plainnet.experiments import (
    RunnerOptions,
    RunSpec,
    SlurmOptions,
    make_executor,
    paper_grid,
    parse_shard,
    plain_model,
    plain_units,
    run_grid,
    shard,
    sweep_grid,
    to_run,
)
from plainnet.models import build_model, trainable_layers
from plainnet.train import TrainConfig, train

GRID = ["--models", "plain8|16", "resnet8", "plain8", "--schedules", "sgdr", "--seeds", "0"]


def tiny_options(data_dir: Path) -> list[str]:
    return ["--dataset", "cifar10", "--data-dir", str(data_dir), "--scale", "0.05"]


def tiny_config(data_dir: Path, spec: RunSpec) -> TrainConfig:
    """The exact configuration `reproduce` with `tiny_options` gives the run ``spec``."""
    base = TrainConfig(dataset="cifar10", data_dir=str(data_dir), scale=0.05, batch_size=20)
    return dataclasses.replace(base, **spec.overrides())


def interrupt_after_first_epoch(msg: str) -> None:
    # SIGINT as Ctrl-C would send it: train checkpoints within the next step and stops.
    if msg.startswith("epoch   1/"):
        os.kill(os.getpid(), signal.SIGINT)


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


@pytest.mark.slow
def test_grid_end_to_end_resume_fail_and_skip(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "grid"
    options = [*GRID, *tiny_options(tiny_cifar10), "--batch-size", "20", "--out", str(out)]
    # Before the grid: one run interrupted after its first epoch, one whose checkpoint is broken
    # (its process will crash on resume: a "failed" run).
    interrupted = RunSpec("plain8|16", "sgdr", 0)
    broken = RunSpec("resnet8", "sgdr", 0)
    for spec in (interrupted, broken):
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(tiny_cifar10, spec), out / spec.name, log=interrupt_after_first_epoch)
        assert summary(out / spec.name)["status"] == "interrupted"
    (out / broken.name / "checkpoint.pt").write_bytes(b"not a checkpoint")

    assert main(["reproduce", *options]) == 0
    first = capsys.readouterr().out
    assert "3 runs, 0 done" in first
    assert (out / "plain8_16-sgdr-s0").is_dir()  # '|' is not in directory names
    resumed = summary(out / interrupted.name)
    assert resumed["status"] == "finished" and resumed["epochs_done"] == resumed["epochs"] == 9
    assert "resuming" in (out / "logs" / f"{interrupted.name}.log").read_text()
    failed = summary(out / broken.name)
    assert failed["status"] == "failed" and "unreadable checkpoint" in failed["error"]
    assert summary(out / "plain8-sgdr-s0")["status"] == "finished"  # a fresh run
    report = (out / "report.md").read_text()
    assert "failed" in report and "unreadable checkpoint" in report
    assert "Grid commands run in this directory" in report  # the command behind the numbers
    assert (out / "table1.csv").exists() and (out / "figures" / "test_error.png").exists()

    # Rerun: the finished runs are left alone, the failed one is tried again (and fails again).
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")}
    assert main(["reproduce", *options]) == 0
    assert "3 runs, 2 done (finished or diverged), 1 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")} == stamps
    assert summary(out / broken.name)["status"] == "failed"


def test_which_runs_are_run_again(tmp_path):
    specs = paper_grid(["plain11"], ["step", "clr", "sgdr"], [0, 1])
    statuses = ["finished", "diverged", "failed", "interrupted", "running", None]
    for spec, status in zip(specs, statuses, strict=True):
        if status:
            (tmp_path / spec.name).mkdir()
            (tmp_path / spec.name / "summary.json").write_text(json.dumps({"status": status}))
    names = [s.name for s in to_run(specs, tmp_path)]
    assert names == [s.name for s in specs[2:]]  # not finished, not diverged
    retry = [s.name for s in to_run(specs, tmp_path, retry_failed=True)]
    assert retry == [s.name for s in specs[1:]]


def test_shards_split_the_full_grid_stably():
    specs = paper_grid()
    assert [s.name for s in specs[:2]] == ["plain11-step-s0", "plain11-step-s1"]
    parts = [shard(specs, i, 4) for i in range(1, 5)]
    assert sorted(s.name for p in parts for s in p) == sorted(s.name for s in specs)
    assert [len(p) for p in parts] == [5, 5, 4, 4]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "a/b", "3"):
        with pytest.raises(UserError):
            parse_shard(bad)


def test_cli_mistakes_are_one_line(tmp_path, capsys):
    base = ["reproduce", "--out", str(tmp_path / "g"), "--device", "cpu"]
    for extra, message in (
        (["--shard", "0/3"], "1 <= i <= n"),
        (["--models", "plain11", "bogus7"], "unknown model"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
        assert not any((tmp_path / "g").glob("*/summary.json"))


def test_launcher_mistakes(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(UserError, match="no sbatch on PATH"):
        make_executor("slurm", tmp_path, SlurmOptions(), cpu=True)
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)
    with pytest.raises(UserError, match="pip install submitit"):
        make_executor("local", tmp_path, SlurmOptions(), cpu=True)


def test_submitit_local_launcher_runs_and_skips(tiny_cifar10, tmp_path):
    pytest.importorskip("submitit")
    base = dataclasses.asdict(tiny_config(tiny_cifar10, RunSpec("plain8|16", "clr", 0)))
    base["device"] = "cpu"
    specs = paper_grid(["plain8|16"], ["clr"], [0])
    logs = []
    status = run_grid(specs, base, tmp_path, RunnerOptions(launcher="local"), log=logs.append)
    assert status == {"plain8_16-clr-s0": "finished"}
    assert summary(tmp_path / "plain8_16-clr-s0")["epochs_done"] == 8
    assert run_grid(specs, base, tmp_path, RunnerOptions(launcher="local"), log=logs.append) == {}


@pytest.mark.parametrize("depth", [6, 7, 8, 11, 14, 20, 29])
def test_plain_depth_maps_to_layers(depth):
    assert trainable_layers(build_model(plain_model(depth), 10)) == depth
    assert len(plain_units(depth)) == 4


def test_plain11_is_the_depth_11_member():
    assert plain_units(11) == [2, 3, 3, 1]
    assert plain_model(11) == "plain64-64|128-128-128|256-256-256|512"
    with pytest.raises(UserError):
        plain_units(5)
    with pytest.raises(UserError, match="6n"):
        sweep_grid([6], [1.0], [21], "sgdr", [0])


@pytest.mark.slow
def test_sweep_end_to_end(tiny_cifar10, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--depths", "6", "--widths", "0.125", "--resnet-depths", "8"]
    args += [*tiny_options(tiny_cifar10), "--batch-size", "20", "--out", str(out)]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and "-s0" in p.name)
    assert names == ["plain-d6-w0.125-sgdr-s0", "resnet-d8-sgdr-s0"]
    text = (out / "sweep.md").read_text()
    assert "| plain" in text and "| ResNet" in text and "(n=1)" in text
    rows = (out / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("family,depth,width_mult") and len(rows) == 3
    assert (out / "sweep.png").stat().st_size > 5000
