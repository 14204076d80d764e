"""`plainnet export`: a run's weights as a safetensors file that rebuilds the model in one
call and evaluates to the run's own test error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from plainnet.cli import main
from plainnet.config import TrainConfig
from plainnet.data import load_dataset
from plainnet.evaluate import evaluate_path, predict
from plainnet.models import load
from plainnet.train import train

TINY = "plain8|16"


@pytest.fixture
def run(tiny_cifar10, tmp_path):
    cfg = TrainConfig(model=TINY, schedule="sgdr", dataset="cifar10", data_dir=str(tiny_cifar10),
                      epochs=3, batch_size=10)  # fmt: skip
    train(cfg, tmp_path / "run", log=lambda _m: None)
    return tmp_path / "run"


def test_export_load_evaluate_gives_the_runs_test_error(run, tiny_cifar10, tmp_path, capsys):
    summary = json.loads((run / "summary.json").read_text())
    assert main(["export", str(run)]) == 0
    file = run / "model.safetensors"
    assert f"wrote {file}" in capsys.readouterr().out
    with safe_open(str(file), framework="pt") as f:  # any program reads it without plainnet
        meta = json.loads(f.metadata()["plainnet"])
    assert meta["model"] == TINY and meta["classes"][0] == "airplane" and len(meta["mean"]) == 3
    model = load(file)
    data = load_dataset("cifar10", tiny_cifar10)
    logits = predict(model, data.test_images, meta["mean"], meta["std"], channels_last=True)
    error = (logits.argmax(1) != data.test_labels).float().mean().item() * 100
    assert error == summary["test_error"]
    data_options = {"dataset": "cifar10", "data_dir": str(tiny_cifar10)}
    result = evaluate_path(file, overrides=data_options, log=lambda _m: None)
    assert result["test_error"] == summary["test_error"]


def test_export_of_a_snapshot_and_mistakes(run, tmp_path, capsys):
    out = tmp_path / "first-cycle.safetensors"
    assert main(["export", str(run), "--snapshot", "6", "--out", str(out)]) == 0
    snapshot = torch.load(run / "snapshots" / "iter00000006.pt", weights_only=True)
    exported = load(out).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in snapshot.items())
    capsys.readouterr()
    assert main(["export", str(run), "--snapshot", "7", "--out", str(tmp_path / "x.st")]) == 2
    assert "no snapshot at iteration 7" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(out)]) == 2  # never overwritten outside a run
    assert "exists" in capsys.readouterr().err


def test_a_successful_export_says_where_it_wrote(run, tmp_path, capsys):
    """One line on stdout naming the file, nothing on stderr: the final weights, a file of
    the user's choosing, a snapshot, and a second export over the first."""
    out = tmp_path / "exports" / "first-cycle.safetensors"
    out.parent.mkdir()
    for args, file in [
        ([], run / "model.safetensors"),
        (["--out", str(tmp_path / "final.safetensors")], tmp_path / "final.safetensors"),
        (["--snapshot", "6", "--out", str(out)], out),
        ([], run / "model.safetensors"),
    ]:
        assert main(["export", str(run), *args]) == 0
        assert capsys.readouterr() == (f"wrote {file}\n", "")
        assert file.stat().st_size > 0
