"""A grid's runs: names, shards, which runs are run again, crash records under the run's lock."""

from __future__ import annotations

import json

import pytest

from plainnet.errors import UserError
from plainnet.grid import RunSpec, check_unique, mark_failed, parse_shard, runs_to_train, shard
from plainnet.reproduce import paper_grid
from plainnet.run_dir import RunDir


def test_which_runs_are_run_again(tmp_path):
    specs = paper_grid(["plain11"], ["step", "clr", "sgdr"], [0, 1])
    statuses = ["finished", "diverged", "failed", "interrupted", "running", None]
    for spec, status in zip(specs, statuses, strict=True):
        if status:
            (tmp_path / spec.name).mkdir()
            summary = {"status": status, "test_error": 30.0}
            (tmp_path / spec.name / "summary.json").write_text(json.dumps(summary))
    names = [s.name for s in runs_to_train(specs, tmp_path)]
    assert names == [s.name for s in specs[2:]]  # not finished, not diverged
    retry = [s.name for s in runs_to_train(specs, tmp_path, retry_failed=True)]
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


def test_two_runs_never_share_a_directory():
    """Two sweep widths that print alike would share ``plain-d6-w0.333333``: refused."""
    a = RunSpec("plain64", "sgdr", 0, width_mult=1 / 3, label="plain-d6-w0.333333")
    b = RunSpec("plain64", "sgdr", 0, width_mult=0.3333334, label="plain-d6-w0.333333")
    check_unique([a, a])  # the same run twice is the same directory: fine
    with pytest.raises(UserError, match=r"map to the directory 'plain-d6-w0\.333333-sgdr-s0'"):
        check_unique([a, b])


def test_a_crash_is_recorded_only_under_the_runs_lock(tmp_path):
    spec = RunSpec("plain8", "sgdr", 0)
    run = RunDir(tmp_path / spec.name)
    run.path.mkdir()
    run.write_summary({"status": "running", "model": "plain8", "schedule": "sgdr", "seed": 0})
    with run.locked():  # a live run, trained by another process
        assert not mark_failed(run.path, spec, "boom")
    assert run.read_summary()["status"] == "running"
    assert mark_failed(run.path, spec, "boom")
    assert run.read_summary() == {
        "status": "failed", "error": "boom", "model": "plain8", "schedule": "sgdr", "seed": 0,
    }  # fmt: skip
    run.write_summary({"status": "finished", "test_error": 30.0})
    assert mark_failed(run.path, spec, "late") and run.read_summary()["status"] == "finished"
