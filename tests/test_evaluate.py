"""`plainnet evaluate`: the same test error as training, per-class errors, CIFAR-100 superclass
confusion, snapshot ensembles, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from plainnet.cli import main
from plainnet.config import TrainConfig
from plainnet.data import load_dataset
from plainnet.errors import UserError
from plainnet.evaluate import evaluate_path, fine_to_coarse, predict
from plainnet.models import build_model
from plainnet.run_dir import RunDir
from plainnet.train import train

SMALL = "plain16-16|32-32|64"
TINY = "plain8|16"


def quiet(_msg: str) -> None:
    pass


def test_real_run_final_error_per_class_and_snapshot_ensemble(cifar10_jpeg_data, tmp_path):
    # SGDR over 3 epochs: cycles end at epochs 0.2, 0.6, 1.4 and 3.0 (iterations 2, 6, 14, 30),
    # each leaving a snapshot at that iteration; the last snapshot is the final model.
    cfg = TrainConfig(
        model=SMALL, schedule="sgdr", dataset="folder", epochs=3, train_limit=1000, test_limit=500
    )
    run = tmp_path / "run"
    summary = train(cfg, run, data=cifar10_jpeg_data, log=quiet)
    lines: list[str] = []
    result = evaluate_path(run, ensemble=True, data=cifar10_jpeg_data, log=lines.append)

    assert result["test_images"] == 500
    assert result["test_error"] == summary["test_error"]  # the very evaluation train ran
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    errors, images = result["per_class_error"], result["per_class_images"]
    assert set(errors) == set(cifar10_jpeg_data.classes) and sum(images.values()) == 500
    weighted = sum(errors[c] * images[c] for c in errors) / 500
    assert weighted == pytest.approx(result["test_error"], abs=1e-4)  # float32 mean
    assert max(errors.values()) > min(errors.values())  # a trained model is not uniform
    assert result["coarse_confusion"] is None  # CIFAR-10 has no superclasses

    assert result["ensemble_snapshots"] == [0.2, 0.6, 1.4, 3.0]
    assert result["snapshot_test_errors"]["3"] == result["test_error"]
    # The ensemble is the mean of the snapshots' softmax outputs, recomputed here by hand.
    data = cifar10_jpeg_data.subset(None, 500)
    mean = 0
    for path in RunDir(run).snapshot_paths():
        model = build_model(SMALL, 10)
        model.load_state_dict(torch.load(path, weights_only=True))
        mean = mean + predict(model, data.test_images, data.mean, data.std).softmax(1) / 4
    expected = (mean.argmax(1) != data.test_labels).float().mean().item() * 100
    assert result["ensemble_test_error"] == pytest.approx(expected, abs=0.2 + 1e-6)  # <= 1 image
    stored = json.loads((run / "evaluation.json").read_text())
    assert stored["ensemble_test_error"] == result["ensemble_test_error"]
    assert stored["test_error"] == summary["test_error"]
    text = "\n".join(lines)
    assert "ensemble of 4 snapshots" in text and "| class" in text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data dir, run dir): tiny CIFAR-10 files and one short SGDR run on them, made once."""
    from conftest import write_cifar10

    root = tmp_path_factory.mktemp("evaluate")
    write_cifar10(root / "data")
    # 10 iterations an epoch: SGDR's cycles end at iterations 2, 6, 14 and 30, each leaving a
    # snapshot.
    cfg = TrainConfig(
        model=TINY, schedule="sgdr", dataset="cifar10", data_dir=str(root / "data"), epochs=3,
        batch_size=10,
    )  # fmt: skip
    train(cfg, root / "run", log=quiet)
    return root / "data", root / "run"


@pytest.fixture
def tiny_run(trained, tmp_path):
    """A private copy of the trained run (tests may break its files)."""
    return shutil.copytree(trained[1], tmp_path / "run")


def test_run_trained_with_cuda_graphs_evaluates_on_the_cpu(tiny_run):
    """A run made on a GPU with ``--cuda-graphs on`` (its config.json says so) evaluates with
    ``--device cpu``, to the same error: CUDA graphs concern the training step alone."""
    reference = evaluate_path(tiny_run, log=quiet)
    run = RunDir(tiny_run)
    record = run.read_config()
    record["config"].update(device="cuda", compile="on", cuda_graphs="on")
    run.write_config(record)
    moved = evaluate_path(tiny_run, overrides={"device": "cpu"}, log=quiet)
    assert moved["test_error"] == reference["test_error"]


def test_ensemble_of_identical_snapshots_equals_the_single_model(tiny_run):
    paths = RunDir(tiny_run).snapshot_paths()
    assert [p.name for p in paths] == [f"iter{t:08d}.pt" for t in (2, 6, 14, 30)]
    for p in paths[:-1]:
        shutil.copyfile(paths[-1], p)
    result = evaluate_path(tiny_run, ensemble=True, log=quiet)
    assert result["ensemble_test_error"] == result["test_error"]
    assert result["ensemble_test_loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    assert len(set(result["snapshot_test_errors"].values())) == 1
    only_last = evaluate_path(tiny_run, ensemble=True, last=1, log=quiet)
    assert only_last["ensemble_snapshots"] == [3]


def test_cifar100_superclass_confusion(tiny_cifar100, tmp_path):
    cfg = TrainConfig(
        model=TINY, schedule="sgdr", dataset="cifar100", data_dir=str(tiny_cifar100), epochs=2
    )
    train(cfg, tmp_path / "run", log=quiet)
    result = evaluate_path(tmp_path / "run", log=quiet)
    matrix = torch.tensor(result["coarse_confusion"])
    assert matrix.shape == (20, 20) and len(result["coarse_classes"]) == 20
    assert int(matrix.sum()) == 100 == result["test_images"]
    # The fixture's superclass of fine class f is f // 5; each row holds that superclass's images.
    data = load_dataset("cifar100", tiny_cifar100)
    assert matrix.sum(1).tolist() == torch.bincount(data.test_labels // 5, minlength=20).tolist()
    off_diagonal = 100 * (1 - matrix.diagonal().sum().item() / 100)
    assert result["coarse_error"] == pytest.approx(off_diagonal)
    assert (
        result["coarse_error"] <= result["test_error"]
    )  # a right fine class is a right superclass
    assert len(result["per_class_error"]) == 100

    # A test subset still maps every predicted fine class (the map comes from the whole set).
    subset = evaluate_path(tmp_path / "run", overrides={"test_limit": 40}, log=quiet)
    assert int(torch.tensor(subset["coarse_confusion"]).sum()) == 40


def test_fine_to_coarse_map_from_label_pairs():
    fine = torch.tensor([7, 3, 3, 0, 9, 1, 2, 4, 5, 6, 8])
    mapping = fine_to_coarse(fine, fine // 5, 10)
    assert mapping.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert fine_to_coarse(fine[1:], fine[1:] // 5, 10) is None  # class 7 never seen
    clash = torch.tensor([0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1])  # class 3 under two superclasses
    assert fine_to_coarse(fine, clash, 10) is None


def test_checkpoint_file_outside_a_run(tiny_run, trained, tmp_path, capsys):
    loose = tmp_path / "elsewhere" / "model.pt"
    loose.parent.mkdir()
    shutil.copyfile(tiny_run / "checkpoint.pt", loose)
    reference = evaluate_path(tiny_run, log=quiet)["test_error"]

    assert main(["evaluate", str(loose)]) == 2
    assert "give --model" in capsys.readouterr().err
    data = ["--dataset", "cifar10", "--data-dir", str(trained[0])]
    assert main(["evaluate", str(loose), "--model", TINY, *data]) == 0
    assert f"test error {reference:.2f} %" in capsys.readouterr().out
    assert main(["evaluate", str(loose), "--model", TINY, *data, "--ensemble"]) == 2
    assert "needs a run directory" in capsys.readouterr().err
    assert main(["evaluate", str(loose), "--model", "plain8|32", *data]) == 2
    assert "do not fit plain8|32" in capsys.readouterr().err
    # A snapshot inside the run takes the run's configuration.
    snapshot = RunDir(tiny_run).snapshot_paths()[-1]
    assert main(["evaluate", str(snapshot)]) == 0
    assert f"test error {reference:.2f} %" in capsys.readouterr().out


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plainnet: error: "), captured.err
    return lines[0]


def test_bad_input_is_one_line(tiny_run, tiny_cifar10, tiny_cifar100, tmp_path, capsys):
    assert "no such run directory" in _one_line_error(capsys, ["evaluate", str(tmp_path / "no")])
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _one_line_error(capsys, ["evaluate", str(tmp_path / "empty")])

    snapshot = RunDir(tiny_run).snapshot_paths()[0]
    snapshot.write_bytes(b"PK\x03\x04 not really a zip")
    message = _one_line_error(capsys, ["evaluate", str(tiny_run), "--ensemble"])
    assert snapshot.name in message and "unreadable" in message

    step = tmp_path / "step"
    cfg = TrainConfig(
        model=TINY, schedule="step", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=1
    )
    train(cfg, step, log=quiet)
    assert "no snapshots" in _one_line_error(capsys, ["evaluate", str(step), "--ensemble"])
    other = ["--dataset", "cifar100", "--data-dir", str(tiny_cifar100)]
    assert "trained for 10 classes" in _one_line_error(capsys, ["evaluate", str(step), *other])


def test_cli_prints_tables_and_writes_json(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run), "--ensemble"]) == 0
    out = capsys.readouterr().out
    assert "Per-class test error" in out and "| airplane" in out
    assert "Snapshot ensemble" in out and "final model" in out
    stored = json.loads((tiny_run / "evaluation.json").read_text())
    assert stored["ensemble_snapshots"] == [0.2, 0.6, 1.4, 3.0]
    with pytest.raises(UserError, match="--last"):
        evaluate_path(tiny_run, ensemble=True, last=0, log=quiet)


def test_stray_files_and_diverged_snapshots_stay_out_of_the_ensemble(tiny_run, capsys):
    """A file of another name in snapshots/ is not a snapshot; a snapshot whose outputs are
    not finite (a diverged model's) is left out and named, never averaged in."""
    folder = tiny_run / "snapshots"
    (folder / "iterABC.pt").write_bytes(b"junk")
    (folder / "notes.txt").write_text("mine")
    reference = evaluate_path(tiny_run, ensemble=True, log=quiet)
    assert reference["ensemble_snapshots"] == [0.2, 0.6, 1.4, 3.0]
    first = folder / "iter00000002.pt"
    state = torch.load(first, weights_only=True)
    torch.save({k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                for k, v in state.items()}, first)  # fmt: skip
    lines: list[str] = []
    result = evaluate_path(tiny_run, ensemble=True, log=lines.append)
    assert result["ensemble_snapshots"] == [0.6, 1.4, 3.0]
    assert any(line.startswith(f"left out {first}") for line in lines)


def test_a_config_of_the_wrong_shape_is_one_line(tiny_run, capsys):
    (tiny_run / "config.json").write_text(json.dumps({"config": "plain8", "resolved": {}}))
    message = _one_line_error(capsys, ["evaluate", str(tiny_run)])
    assert "config.json" in message and '"config"' in message
