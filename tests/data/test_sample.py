"""The built-in sample: its contents, its honesty against the real folder, bad files, the CLI."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from plainnet.cli import main
from plainnet.data import load_dataset, sample
from plainnet.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 200, "test": 100}


def _tool():
    """tools/make_sample.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "tools" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data():
    return load_dataset("sample")


def _decode_files(paths) -> np.ndarray:
    """Pillow's own decoding of JPEG files into uint8 (N, 3, 32, 32): the oracle."""
    return np.stack([np.asarray(PIL.Image.open(p)).transpose(2, 0, 1) for p in paths])


def _selected(root: Path, split: str, n: int) -> list[Path]:
    """The sample's rule, restated: per class (sorted), the first n files by name."""
    return [
        root / split / c / name
        for c in sorted(os.listdir(root / split))
        for name in sorted(os.listdir(root / split / c))[:n]
    ]


def test_sample_is_balanced_cifar10(data):
    assert data.name == "sample" and data.classes == CIFAR10
    assert data.train_images.shape == (2000, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (1000, 3, 32, 32) and data.test_images.dtype == torch.uint8
    assert data.train_labels.bincount(minlength=10).tolist() == [200] * 10
    assert data.test_labels.bincount(minlength=10).tolist() == [100] * 10
    x = data.train_images.numpy().astype(np.float64)
    np.testing.assert_allclose(data.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(data.std, x.std(axis=(0, 2, 3)), rtol=1e-12)


def test_file_is_small_and_loads_without_pickle():
    raw = sample.SAMPLE_FILE.read_bytes()
    assert len(raw) < 4 * 2**20
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert not any(a.dtype.hasobject for a in arrays.values())
    assert str(arrays["format"]) == sample.FORMAT and arrays["classes"].tolist() == CIFAR10


def test_pixels_are_the_folder_files(data, cifar10_jpeg):
    for split in ("train", "test"):
        expected = _decode_files(_selected(cifar10_jpeg, split, PER_CLASS[split]))
        np.testing.assert_array_equal(getattr(data, f"{split}_images").numpy(), expected)


def test_tool_reproduces_the_shipped_file(cifar10_jpeg, tmp_path, capsys):
    out = tmp_path / "sample.npz"
    assert _tool().main([str(cifar10_jpeg), "--out", str(out)]) == 0
    assert "2,000 training and 1,000 test images of 10 classes" in capsys.readouterr().out
    assert out.read_bytes() == sample.SAMPLE_FILE.read_bytes()


def _tiny_tree(root: Path, n_train: int = 3, n_test: int = 2) -> None:
    """root/{train,test}/{a,b}/NN.jpg of random 32 x 32 images, plus files the tool skips."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in ("b", "a"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                PIL.Image.fromarray(img).save(root / split / c / f"{i:02d}.jpg", quality=90)
            (root / split / c / ".hidden.jpg").write_bytes(b"junk")
            (root / split / c / "notes.txt").write_text("not an image")


def test_tool_on_a_tiny_tree_is_deterministic_and_loadable(tmp_path, monkeypatch, capsys):
    _tiny_tree(tmp_path / "tree")
    args = [str(tmp_path / "tree"), "--train-per-class", "2", "--test-per-class", "1"]
    tool = _tool()
    assert tool.main([*args, "-o", str(tmp_path / "one.npz")]) == 0
    assert tool.main([*args, "-o", str(tmp_path / "two.npz")]) == 0
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    monkeypatch.setattr(sample, "SAMPLE_FILE", tmp_path / "one.npz")
    s = sample.load_sample()
    assert s.classes == ["a", "b"] and s.train_labels.tolist() == [0, 0, 1, 1]
    files = [tmp_path / "tree" / "train" / c / f for c in "ab" for f in ("00.jpg", "01.jpg")]
    np.testing.assert_array_equal(s.train_images, _decode_files(files))
    assert s.test_labels.tolist() == [0, 1] and s.test_images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.rename(t.parent / "gone"), "no such folder"),
        (lambda t: (t / "test" / "b" / "00.jpg").unlink(), "1 JPEG files, the sample needs 2"),
        (lambda t: (t / "test" / "c").mkdir(), "different class folders"),
        (lambda t: (t / "train" / "a" / "00.jpg").write_bytes(b"GIF89a"), "not a readable JPEG"),
        (
            lambda t: PIL.Image.new("RGB", (8, 8)).save(t / "train" / "a" / "00.jpg"),
            "8x8 RGB, expected 32x32 RGB",
        ),
    ],
)
def test_tool_refuses_bad_input_in_one_line(tmp_path, capsys, change, message):
    _tiny_tree(tmp_path / "tree", n_test=2)
    change(tmp_path / "tree")
    args = [str(tmp_path / "tree"), "--train-per-class", "2", "--test-per-class", "2"]
    assert _tool().main([*args, "-o", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "s.npz").exists()


def _shipped_arrays() -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(sample.SAMPLE_FILE.read_bytes()), allow_pickle=False) as z:
        return {k: z[k].copy() for k in z.files}


def _broken(kind: str, path: Path) -> None:
    """Write a damaged sample of one `kind` to `path` (or nothing, for "missing")."""
    raw = sample.SAMPLE_FILE.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "not a zip":
        path.write_bytes(b"hello" * 100)
    elif kind != "missing":
        a = _shipped_arrays()
        if kind == "bad jpeg":
            a["test_jpeg"][a["test_offsets"][7] : a["test_offsets"][7] + 4] = 0  # no JPEG start
        elif kind == "bad offsets":
            a["train_offsets"][-1] += 1
        elif kind == "object array":
            a["classes"] = np.array(CIFAR10, dtype=object)
        elif kind == "old format":
            a["format"] = np.array("plainnet-sample-v0")
        np.savez(path, **a)


@pytest.mark.parametrize(
    "kind",
    ["missing", "truncated", "not a zip", "bad jpeg", "bad offsets", "object array", "old format"],
)
def test_damaged_sample_is_one_line_user_error(tmp_path, monkeypatch, kind):
    bad = tmp_path / "sample.npz"
    _broken(kind, bad)
    monkeypatch.setattr(sample, "SAMPLE_FILE", bad)
    with pytest.raises(UserError) as e:
        load_dataset("sample")
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(bad)) and text.endswith("reinstall plainnet")
    if kind == "bad jpeg":
        assert "(test image 7)" in text


def test_damaged_sample_through_the_cli(tmp_path, monkeypatch, capsys):
    _broken("truncated", tmp_path / "sample.npz")
    monkeypatch.setattr(sample, "SAMPLE_FILE", tmp_path / "sample.npz")
    assert main(["train", "--dataset", "sample", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reinstall plainnet" in err


def test_sample_takes_no_data_dir(tmp_path):
    with pytest.raises(UserError, match="built into plainnet"):
        load_dataset("sample", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_train_on_the_sample_from_the_cli(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--dataset", "sample", "--train-limit", "200", "--test-limit", "100"]
    args += ["--model", "plain8|16", "--epochs", "1", "--batch-size", "50", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished"
