"""The grid runner on tiny networks and tiny CIFAR-10 files: each group of runs trains in a
child process for real (plain8, plain8|16 and resnet8, 100 training images, batch 20: 5
iterations an epoch, 9 epochs at scale 0.05)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plainnet.cli import main
from plainnet.config import TrainConfig
from plainnet.errors import UserError
from plainnet.grid import RunSpec
from plainnet.launch import RunnerOptions, SlurmOptions, run_grid
from plainnet.reproduce import GRID_DEFAULTS, paper_grid
from plainnet.run_dir import RunDir
from plainnet.submit import make_executor
from plainnet.train import train

GRID = ["--models", "plain8|16", "resnet8", "plain8", "--schedules", "sgdr", "--seeds", "0"]


def tiny_options(data_dir: Path) -> list[str]:
    return ["--dataset", "cifar10", "--data-dir", str(data_dir), "--scale", "0.05"]


def tiny_config(data_dir: Path, spec: RunSpec) -> TrainConfig:
    """The exact configuration `reproduce` with `tiny_options` gives the run ``spec``."""
    base = TrainConfig(
        dataset="cifar10", data_dir=str(data_dir), scale=0.05, batch_size=20, **GRID_DEFAULTS
    )
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

    assert main(["reproduce", *options]) == 2  # a run failed: said after the report
    first, err = capsys.readouterr()
    assert f"1 of 3 runs failed (first {broken.name}: " in err and "report.md lists them" in err
    assert "3 runs, 0 done" in first and "[1/3]" in first and "grid ETA" in first
    assert (out / "plain8_16-sgdr-s0").is_dir()  # '|' is not in directory names
    resumed = summary(out / interrupted.name)
    assert resumed["status"] == "finished" and resumed["epochs_done"] == resumed["epochs"] == 9
    assert "resuming" in (out / "logs" / f"{interrupted.name}.log").read_text()
    failed = summary(out / broken.name)
    assert failed["status"] == "failed" and "unreadable checkpoint" in failed["error"]
    assert summary(out / "plain8-sgdr-s0")["status"] == "finished"  # a fresh run
    report = (out / "report.md").read_text()
    assert "**1 of 3 runs failed**" in report and "unreadable checkpoint" in report
    assert "Grid commands run in this directory" in report  # the command behind the numbers
    assert (out / "table1.csv").exists() and (out / "figures" / "test_error.png").exists()

    # Rerun: the finished runs are left alone, the failed one is tried again (and fails again).
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")}
    assert main(["reproduce", *options]) == 2
    assert "3 runs, 2 done, 1 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")} == stamps
    assert summary(out / broken.name)["status"] == "failed"


def reproduce_cmd(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "plainnet", "reproduce", "--models", "plain32-32|64-64",
            "--schedules", "sgdr", "--seeds", "0", "1", "--dataset", "cifar10", "--data-dir",
            str(data_dir), "--scale", "0.025", "--out", str(out), *extra]  # fmt: skip


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the grid did not get there"
        time.sleep(0.05)


@pytest.mark.slow
def test_the_runner_stops_its_children_and_a_second_runner_is_refused(cifar_factory, tmp_path):
    data = tmp_path / "data"
    cifar_factory.write_cifar10(data, n_per_batch=300, n_test=200)
    out = tmp_path / "grid"
    first = subprocess.Popen(
        reproduce_cmd(data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    live = out / "plain32-32_64-64-sgdr-s0"
    wait_for(lambda: (live / "metrics.jsonl").exists(), first)
    # A second grid on the same directory: one line, and the live run is not touched.
    before = (live / "summary.json").read_text()
    second = subprocess.run(reproduce_cmd(data, out), capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"plainnet: error: {out}: already in use by pid {first.pid} on {os.uname().nodename}; "
        "wait for it or stop it first"
    ]
    assert summary(live)["status"] == "running" and (live / "summary.json").exists()
    assert (
        before.split('"status"')[1][:12]
        == (live / "summary.json").read_text().split('"status"')[1][:12]
    )
    # SIGTERM to the runner alone: it passes the stop on, its child checkpoints, it says so.
    first.send_signal(signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "stopped: the runs started have checkpointed" in stdout
    assert summary(live)["status"] == "interrupted"
    state = RunDir(live).load_checkpoint()
    assert state is not None
    ps = subprocess.run(["pgrep", "-f", f"plainnet.launch {live}"], capture_output=True)
    assert ps.returncode == 1  # no child left training as an orphan
    # The same command continues the grid to its end.
    done = subprocess.run(reproduce_cmd(data, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert summary(live)["status"] == "finished"


@pytest.mark.slow
def test_seeds_trained_together_in_one_process(tiny_cifar10, tmp_path, capsys):
    """``--runs-per-process 2``: the two seeds of a cell share one child process; each writes
    its own run directory, exactly as if trained alone."""
    out = tmp_path / "grid"
    args = ["reproduce", "--models", "plain8", "--schedules", "clr", "--seeds", "0", "1"]
    args += [*tiny_options(tiny_cifar10), "--batch-size", "20", "--out", str(out)]
    assert main([*args, "--runs-per-process", "2"]) == 0
    log = capsys.readouterr().out
    assert "[2/2] plain8-clr-s0, plain8-clr-s1" in log
    alone = tmp_path / "alone"
    train(tiny_config(tiny_cifar10, RunSpec("plain8", "clr", 1)), alone, log=lambda _m: None)
    together = RunDir(out / "plain8-clr-s1")
    assert [r["train_loss"] for r in together.read_metrics()] == [
        r["train_loss"] for r in RunDir(alone).read_metrics()
    ]
    assert summary(out / "plain8-clr-s0")["status"] == "finished"


def test_cli_mistakes_are_one_line(tmp_path, capsys):
    base = ["reproduce", "--out", str(tmp_path / "g"), "--device", "cpu"]
    for extra, message in (
        (["--shard", "0/3"], "1 <= i <= n"),
        (["--models", "plain11", "bogus7"], "unknown model"),
        (["--clip-norm", "nan"], "--clip-norm must be a number >= 0, got nan"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not any((tmp_path / "g").glob("*/summary.json"))


def test_launcher_mistakes(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(UserError, match="no sbatch on PATH"):
        make_executor("slurm", tmp_path, SlurmOptions(), cpu=True)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(UserError, match="pip install submitit"):
        make_executor("local", tmp_path, SlurmOptions(), cpu=True)


def test_submitit_local_launcher_runs_and_skips(tiny_cifar10, tmp_path):
    base = dataclasses.asdict(tiny_config(tiny_cifar10, RunSpec("plain8|16", "clr", 0)))
    base["device"] = "cpu"
    specs = paper_grid(["plain8|16"], ["clr"], [0])
    logs = []
    status = run_grid(specs, base, tmp_path, RunnerOptions(launcher="local"), log=logs.append)
    assert status == {"plain8_16-clr-s0": "finished"}
    assert summary(tmp_path / "plain8_16-clr-s0")["epochs_done"] == 8
    assert run_grid(specs, base, tmp_path, RunnerOptions(launcher="local"), log=logs.append) == {}


def test_a_grid_whose_data_cannot_be_had_says_so_before_any_run(tmp_path, monkeypatch, capsys):
    """Offline, CIFAR-100 cannot be downloaded: one line, exit 2, no run started and nothing
    written (not even the grid's folder)."""
    from plainnet.data import cifar

    unreachable = dataclasses.replace(cifar.ARCHIVES["cifar100"], url="http://127.0.0.1:9/x")
    monkeypatch.setitem(cifar.ARCHIVES, "cifar100", unreachable)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "grid"
    args = ["reproduce", "--quick", "--dataset", "cifar100", "--data-dir", str(empty)]
    assert main([*args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "CIFAR-100" in err[0], err
    assert "[1/" not in captured.out and not out.exists()


def _finished_or_not(out: Path, statuses: dict[str, str]) -> list[RunSpec]:
    specs = []
    for seed, (name, status) in enumerate(statuses.items()):
        spec = RunSpec("plain8", "clr", seed, label=name)
        run = RunDir(out / spec.name)
        record = {"status": status, "model": "plain8", "schedule": "clr", "seed": seed}
        if status == "finished":
            record["test_error"] = 50.0
        if status == "failed":
            record["error"] = f"RuntimeError: {name} broke"
        run.path.mkdir(parents=True)
        run.write_summary(record)
        specs.append(spec)
    return specs


@pytest.mark.parametrize(
    ("statuses", "message"),
    [
        ({"a": "finished", "b": "failed"}, "1 of 2 runs failed (first b-clr-s1: RuntimeError: b"),
        ({"a": "failed", "b": "failed"}, "2 of 2 runs failed (first a-clr-s0:"),
        ({"a": "diverged", "b": "diverged"}, "no run of the grid finished (2 diverged)"),
        ({"a": "finished", "b": "diverged"}, None),
    ],
)
def test_a_grid_ends_in_an_error_when_a_run_failed_or_none_finished(tmp_path, statuses, message):
    from plainnet.launch import check_outcome

    specs = _finished_or_not(tmp_path, statuses)
    if message is None:
        check_outcome(specs, tmp_path, RunnerOptions())
        return
    with pytest.raises(UserError, match=re.escape(message)):
        check_outcome(specs, tmp_path, RunnerOptions())
    check_outcome(specs, tmp_path, RunnerOptions(launcher="slurm"))  # submitted: not judged
