"""Run-directory files: atomic writes, corrupt files named, locks that never stick."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import types

import pytest
import torch

from plainnet import run_dir
from plainnet.errors import UserError
from plainnet.run_dir import RunDir, atomic_write, load_weights, read_json, read_metrics
from plainnet.schemas import EVALUATION_SCHEMA

try:
    import resource
except ImportError:  # Windows
    resource = None


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


# ---- planted links, temporary files, permissions ----


def _writers(run):
    return {
        "summary.json": lambda: run.write_summary({"status": "running"}),
        "metrics.jsonl": lambda: run.write_metrics([{"epoch": 1}]),
        "checkpoint.pt": lambda: run.save_checkpoint({"w": torch.ones(3)}),
    }


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl", "checkpoint.pt"])
@pytest.mark.parametrize("planted_at", ["final name", "old temporary name"])
def test_a_planted_link_is_never_written_through(tmp_path, name, planted_at):
    outside = tmp_path / "precious.txt"
    outside.write_text("precious")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    link = run.path / (name if planted_at == "final name" else f".{name}.tmp")
    link.symlink_to(outside)
    _writers(run)[name]()
    assert outside.read_text() == "precious"
    assert not (run.path / name).is_symlink() and (run.path / name).stat().st_size > 0
    if name == "checkpoint.pt":
        assert torch.equal(run.load_checkpoint()["w"], torch.ones(3))


@pytest.mark.parametrize("kind", ["symbolic link", "hard link"])
def test_a_planted_lock_file_is_refused_not_truncated(tmp_path, kind):
    outside = tmp_path / "precious.txt"
    outside.write_text("precious")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    if kind == "symbolic link":
        (run.path / ".lock").symlink_to(outside)
    else:
        os.link(outside, run.path / ".lock")
    with (
        pytest.raises(UserError, match=r"\.lock: (a symbolic link|not a plain file)"),
        run.locked(),
    ):
        pass
    assert outside.read_text() == "precious"


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        RunDir(tmp_path).write_summary({"status": "running"})
        RunDir(tmp_path).save_checkpoint({"w": torch.zeros(1)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "checkpoint.pt").stat().st_mode) == 0o640


def test_temporary_files_a_kill_left_behind_are_ignored(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / ".checkpoint.pt.tmp").write_bytes(b"PK\x03\x04 half a zip")  # older plainnet
    (tmp_path / ".summary.json.0123456789ab.tmp").write_text('{"stat')
    (tmp_path / ".lock").write_text("pid 1 on gone")
    assert run.is_empty()
    run.save_checkpoint({"w": torch.ones(2)})
    run.write_summary({"status": "running"})
    assert torch.equal(run.load_checkpoint()["w"], torch.ones(2))
    assert run.read_summary() == {"status": "running"} and not run.is_empty()
    assert len(list(tmp_path.glob(".*.tmp"))) == 2  # the leftovers, and nothing new


# ---- full disks and failing writes ----


def test_disk_full_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.save_checkpoint({"w": torch.ones(2)})
    run.write_summary({"status": "running"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for write, path in [
        (lambda: run.save_checkpoint({"w": torch.zeros(2)}), run.checkpoint),
        (lambda: run.write_summary({"status": "finished"}), run.summary),
    ]:
        with pytest.raises(UserError) as e:
            write()
        assert str(e.value).startswith(f"{path}: disk full while writing; the previous version")
        assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert torch.equal(run.load_checkpoint()["w"], torch.ones(2))
    assert run.read_summary()["status"] == "running"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(resource is None, reason="needs POSIX resource limits")
def test_a_write_failing_inside_torch_save_is_one_line(tmp_path):
    """torch.save writing to the file itself turned a failed write into its own RuntimeError
    ("enforce fail at inline_container.cc"); here a real one: the file size limit (EFBIG)."""
    run = RunDir(tmp_path)
    run.save_checkpoint({"w": torch.ones(2)})
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, limit[1]))
    try:
        with pytest.raises(UserError) as e:
            run.save_checkpoint({"w": torch.zeros(1 << 16)})  # 256 KiB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert str(e.value).startswith(f"{run.checkpoint}: cannot write (File too large)")
    assert torch.equal(run.load_checkpoint()["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*.tmp"))


# ---- checkpoints that would need code to load ----


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("saved_by", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_would_run_code_is_refused_without_unsafe_advice(tmp_path, saved_by):
    marker, path = tmp_path / "MARKER", tmp_path / "checkpoint.pt"
    evil = {"model": _RunsCode(marker)}
    if saved_by == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(UserError) as e:
        load_weights(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: unreadable checkpoint (refused: it holds")
    assert "need code from the file to load" in msg and msg.endswith("; move it away to start over")
    assert "weights_only" not in msg and "\n" not in msg and "\x1b" not in msg
    assert not marker.exists()
    if saved_by == "torch.save":  # the same file loaded unsafely does run code
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


# ---- valid JSON of the wrong shape ----


def _summary(**values):
    return json.dumps({"status": "finished", "test_error": 7.5, **values})


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("summary.json", "[1, 2]", "should hold a JSON object, found a list"),
        ("summary.json", '"finished"', 'should hold a JSON object, found "finished"'),
        ("summary.json", '{"model": "plain11"}', '"status" is missing'),
        ("summary.json", _summary(test_error="abc"), '"test_error" should be a number or null'),
        ("summary.json", _summary(epochs=True), '"epochs" should be an integer or null, found t'),
        ("summary.json", _summary(seed=1.5), '"seed" should be an integer or null, found 1.5'),
        ("summary.json", _summary(test_error=None), '"finished" but "test_error" is missing'),
        ("summary.json", '{"status": 1}', '"status" should be a string, found 1'),
        ("config.json", "[]", "should hold a JSON object, found a list"),
        ("config.json", '{"config": {}, "resolved": []}', '"resolved" should be an object'),
        ("config.json", '{"config": {}, "resolved": {}}', '"environment" is missing'),
        ("metrics.jsonl", '{"epoch": 1}\n{"epoch": "2"}', 'line 2: "epoch" should be an integer'),
        ("metrics.jsonl", '{"epoch": true}', 'line 1: "epoch" should be an integer, found true'),
        ("metrics.jsonl", '{"epoch": 1, "test_error": [5]}', '"test_error" should be a number'),
        ("metrics.jsonl", "[1]", "line 1: should hold a JSON object, found a list"),
    ],
)
def test_valid_json_of_the_wrong_shape_is_one_line(tmp_path, name, text, message):
    run = RunDir(tmp_path)
    (tmp_path / name).write_text(text)
    read = {"summary.json": run.read_summary, "config.json": run.read_config}
    with pytest.raises(UserError) as e:
        read.get(name, run.read_metrics)()
    assert str(e.value).startswith(f"{tmp_path / name}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_files_of_the_right_shape_read_back(tmp_path):
    run = RunDir(tmp_path)
    summary = {"status": "finished", "test_error": 7, "test_loss": None, "epochs": 3, "new": [1]}
    run.write_summary(summary)
    assert run.read_summary() == summary  # an int is a number; null and unknown keys are fine
    run.write_config({"config": {}, "resolved": {}, "environment": {}, "command": ["x"]})
    assert run.read_config()["command"] == ["x"]
    run.write_metrics([{"epoch": 1, "lr": 0.1, "test_error": float("nan")}])
    assert run.read_metrics() == [{"epoch": 1, "lr": 0.1, "test_error": None}]
    (tmp_path / "evaluation.json").write_text('{"test_error": 5.0, "ensemble_test_error": null}')
    assert read_json(tmp_path / "evaluation.json", EVALUATION_SCHEMA)["test_error"] == 5.0
    (tmp_path / "any.json").write_text("[1]")
    assert read_json(tmp_path / "any.json") == [1]  # no shape: any JSON, as before
    with pytest.raises(UserError, match=r'evaluation\.json: "test_error" should be a number, '):
        (tmp_path / "evaluation.json").write_text('{"test_error": null}')
        read_json(tmp_path / "evaluation.json", EVALUATION_SCHEMA)


# ---- the lock without fcntl (Windows) ----


def _run_dir_without_fcntl(monkeypatch):
    """A fresh copy of plainnet.run_dir imported as on Windows: no fcntl, and a stand-in for
    msvcrt whose locks behave like Windows' (a held byte range refuses a second locker)."""
    held, calls = set(), []

    def locking(fd, mode, nbytes):
        key = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR), nbytes)
        calls.append((mode, key[1]))
        if mode == msvcrt.LK_NBLCK and key in held:
            raise PermissionError(errno.EACCES, "Permission denied")
        (held.add if mode == msvcrt.LK_NBLCK else held.discard)(key)

    msvcrt = types.SimpleNamespace(LK_UNLCK=0, LK_NBLCK=2, locking=locking)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # "import fcntl" raises ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    spec = importlib.util.spec_from_file_location("run_dir_on_windows", run_dir.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, calls


def test_the_lock_works_without_fcntl(tmp_path, monkeypatch):
    module, calls = _run_dir_without_fcntl(monkeypatch)
    assert module.fcntl is None
    run = module.RunDir(tmp_path / "run")
    with run.locked():
        assert calls == [(2, 1 << 30)]  # one byte far past the holder's text
        assert (run.path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
        with (
            pytest.raises(UserError, match=f"already in use by pid {os.getpid()} on "),
            module.RunDir(run.path).locked(),
        ):
            pass
    assert calls[-1] == (0, 1 << 30)  # released
    with run.locked():
        pass


def test_a_file_where_the_run_directory_belongs_is_one_line(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(UserError, match=r"run: not a directory; choose another --out"):
        RunDir(tmp_path / "run").is_empty()
    with (
        pytest.raises(UserError, match=r"run: cannot create the folder"),
        RunDir(tmp_path / "run").locked(),
    ):
        pass
