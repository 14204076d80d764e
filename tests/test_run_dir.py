"""Run-directory files: atomic writes, corrupt files named, locks that never stick."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plainnet.errors import UserError
from plainnet.run_dir import RunDir, atomic_write, read_json, read_metrics


def test_atomic_write_keeps_old_content_when_writer_fails(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")

    def broken(f):
        f.write(b"new but incomplete")
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_corrupt_metrics_and_json_name_the_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 1, "test_error": 50.0}\n{"epoch": 2, "test_err')
    with pytest.raises(UserError, match=r"metrics\.jsonl: line 2 is corrupt"):
        read_metrics(metrics)
    summary = tmp_path / "summary.json"
    summary.write_text('{"status": "fin')
    with pytest.raises(UserError, match=r"summary\.json: unreadable or corrupt"):
        read_json(summary)


def test_non_finite_numbers_are_stored_as_null(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics([{"epoch": 1, "train_loss": float("nan"), "test_error": float("inf")}])
    assert json.loads(run.metrics.read_text()) == {
        "epoch": 1,
        "train_loss": None,
        "test_error": None,
    }


def test_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from plainnet.run_dir import RunDir\n"
         "with RunDir(sys.argv[1]).locked():\n print('held', flush=True); time.sleep(60)",
         str(run.path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"already in use by pid {holder.pid}"), run.locked():
            pass
    finally:
        holder.kill()
        holder.wait()
    with run.locked():  # the kernel released the dead holder's lock
        pass
