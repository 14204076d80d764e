"""`plainnet.prepare`: everything is checked before a run writes anything, a start that fails
leaves no trace, and a resume continues from a checkpoint that is the run's own, with a
``metrics.jsonl`` that matches it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from plainnet.cli import main
from plainnet.config import TrainConfig
from plainnet.data import cifar
from plainnet.errors import UserError
from plainnet.models import build_model
from plainnet.run_dir import RunDir
from plainnet.train import train


def quiet(_msg: str) -> None:
    pass


def tiny(tiny_cifar10, **options) -> TrainConfig:
    return TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), **options)


def _empty_class(root):
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir(parents=True)
    (root / "test" / "cat").mkdir(parents=True)
    (root / "test" / "dog").mkdir(parents=True)


@pytest.mark.parametrize(
    "case", ["missing data folder", "empty class folder", "batch larger than the data", "offline"]
)
def test_a_start_that_fails_leaves_nothing_behind(case, tmp_path, tiny_cifar10, monkeypatch):
    """Each failure is one line and exit 2, and ``--out`` is left as it was: not created when
    it did not exist (nor its parents), no lock file in a folder that did."""
    monkeypatch.setenv("PLAINNET_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    dataset, data_dir, batch = {
        "missing data folder": ("folder", data / "none", 100),
        "empty class folder": ("folder", data, 100),
        "batch larger than the data": ("cifar10", tiny_cifar10, 1000),
        "offline": ("cifar100", data, 100),
    }[case]
    options = ["--dataset", dataset, "--data-dir", str(data_dir), "--batch-size", str(batch)]
    if case == "empty class folder":
        _empty_class(data)
    if case == "offline":  # a download that cannot connect, as on a machine without network
        unreachable = dataclasses.replace(cifar.ARCHIVES["cifar100"], url="http://127.0.0.1:9/x")
        monkeypatch.setitem(cifar.ARCHIVES, "cifar100", unreachable)
    out = tmp_path / "runs" / "new"
    args = ["train", "--model", "plain8|16", "--epochs", "1", *options]
    assert main([*args, "--out", str(out)]) == 2
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert main([*args, "--out", str(existing)]) == 2
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_a_failed_start_keeps_a_lock_file_that_was_there(tmp_path, tiny_cifar10):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("left by an earlier run")
    with pytest.raises(UserError, match="fewer than one batch"):
        train(tiny(tiny_cifar10, epochs=1, batch_size=1000), out, log=quiet)
    assert (out / ".lock").exists()


def _stopped_in_epoch_two(cfg: TrainConfig, run: RunDir) -> None:
    """Train ``cfg`` until its first epoch has ended, then stop it (as Ctrl-C would): it stops
    after the next step, the first of epoch 2."""
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run.path, log=lambda m: os.kill(os.getpid(), signal.SIGINT) if "1/3" in m else 0)


@pytest.mark.parametrize("damage", ["a garbage line", "an epoch missing", "an epoch too many"])
def test_a_resume_rebuilds_a_metrics_file_that_disagrees_with_the_checkpoint(
    damage, tiny_cifar10, tmp_path
):
    cfg = tiny(tiny_cifar10, epochs=3, batch_size=25)
    run = RunDir(tmp_path / "run")
    _stopped_in_epoch_two(cfg, run)
    good = run.metrics.read_text()
    assert len(good.splitlines()) == 1
    run.metrics.write_text(
        {
            "a garbage line": good + "{not json\n",
            "an epoch missing": "",
            "an epoch too many": good + good.replace('"epoch": 1', '"epoch": 2'),
        }[damage]
    )
    lines: list[str] = []
    summary = train(cfg, run.path, log=lines.append)
    notes = [line for line in lines if line.startswith("note: ") and "metrics.jsonl" in line]
    assert len(notes) == 1 and "rewrote it from the checkpoint's 1 epochs" in notes[0], lines
    assert summary["status"] == "finished"
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0] == json.loads(good)  # the first epoch's row as it was written


def test_a_resume_of_an_intact_run_says_where_it_goes_on(tiny_cifar10, tmp_path):
    cfg = tiny(tiny_cifar10, epochs=3, batch_size=25)
    run = RunDir(tmp_path / "run")
    _stopped_in_epoch_two(cfg, run)
    lines: list[str] = []
    train(cfg, run.path, log=lines.append)
    assert f"resuming {run.path} at epoch 2/3, step 1" in lines
    assert not any(line.startswith("note: ") for line in lines), lines


def test_a_run_stopped_after_its_last_epoch_finishes_without_another_epoch(tiny_cifar10, tmp_path):
    """A run whose checkpoint has every epoch but whose summary says it did not finish (an
    older plainnet marked a stop during the last epoch so) finishes at once on resume, and
    says so, instead of announcing an epoch past the last."""
    cfg = tiny(tiny_cifar10, epochs=2)
    run = RunDir(tmp_path / "run")
    train(cfg, run.path, log=quiet)
    run.write_summary({**run.read_summary(), "status": "interrupted"})
    lines: list[str] = []
    summary = train(cfg, run.path, log=lines.append)
    assert f"resuming {run.path}: all 2 epochs are done" in lines
    assert not any("epoch 3" in line for line in lines), lines
    assert summary["status"] == "finished" and summary["epochs_done"] == 2


def _image_folder(root: Path, per_class: int, classes=("cat", "dog", "emu")) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", 4)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / c / f"{i:04d}.png")


def test_resume_refuses_data_or_weights_that_are_not_the_runs(tmp_path, monkeypatch):
    """Images added, a class removed, another model's weights, a checkpoint that is a bare
    tensor or lacks a key: one line each, and nothing of the run is overwritten."""
    monkeypatch.setenv("PLAINNET_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "images"
    _image_folder(data, 20)
    cfg = TrainConfig(model="plain8|16", dataset="folder", data_dir=str(data), epochs=3,
                      batch_size=10, schedule="clr")  # fmt: skip
    run = RunDir(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run.path, log=lambda m: os.kill(os.getpid(), signal.SIGINT) if "1/3" in m else 0)
    record = run.read_config()

    _image_folder(data, 30)  # ten more images per class
    with pytest.raises(
        UserError, match=r"other data or another model \(train_images: 60 then, 90 now"
    ):
        train(cfg, run.path, log=quiet)
    assert run.read_config() == record  # config.json's record is not overwritten
    shutil.rmtree(data / "train" / "emu")
    shutil.rmtree(data / "test" / "emu")
    with pytest.raises(UserError, match="other data or another model"):
        train(cfg, run.path, log=quiet)
    shutil.rmtree(data)
    _image_folder(data, 20)  # the run's data again

    state = run.load_checkpoint()
    other = build_model("plain8|32", 3).state_dict()
    for bad, message in (
        ({**state, "model": other}, "the weights do not fit plain8|16"),
        (torch.zeros(3), "not a plainnet checkpoint"),
        ({k: v for k, v in state.items() if k != "optimizer"}, r"no optimizer\)"),
    ):
        torch.save(bad, run.checkpoint)
        with pytest.raises(UserError, match=message):
            train(cfg, run.path, log=quiet)
    torch.save(state, run.checkpoint)
    assert train(cfg, run.path, log=quiet)["status"] == "finished"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "plain8|16", "batch_size": 1}, "cannot train on batches of 1 images"),
        ({"model": "plain8|8|8|8|8|8|8", "batch_size": 10}, "cannot train on batches of 10"),
        ({"model": "plain8|16", "seed": 2**64}, "--seed must be an integer"),
        ({"model": "plain100000-100000", "batch_size": 10}, "does not fit in the memory of cpu"),
    ],
)
def test_a_run_that_cannot_take_its_first_step_is_refused_before_writing(
    tiny_cifar10, tmp_path, options, message
):
    cfg = TrainConfig(dataset="cifar10", data_dir=str(tiny_cifar10), epochs=1, **options)
    with pytest.raises(UserError, match=message):
        train(cfg, tmp_path / "run", log=quiet)
    assert RunDir(tmp_path / "run").is_empty()
