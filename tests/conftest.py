"""Shared data fixtures: tiny CIFAR files in the official format, and the real CIFAR-10 JPEGs.

The CIFAR builders write Python 2 style pickles (byte strings as BINSTRING opcodes, numpy arrays
through `numpy.core.multiarray._reconstruct`), i.e. the same opcodes and globals as the official
files, so the restricted unpickler is tested against what it will really meet.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us swap the str writer
    """Protocol-2 pickler that writes bytes and str as Python 2 `str` (BINSTRING) objects."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def py2_pickle(obj) -> bytes:
    """`obj` pickled the way Python 2 with numpy 1.x wrote the official CIFAR files."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def to_rows(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, 32, 32) -> official (N, 3072): all red values, then green, then blue."""
    n = len(images)
    return np.concatenate([images[:, c].reshape(n, 1024) for c in range(3)], axis=1)


def known_images(n: int, seed: int) -> np.ndarray:
    """Random uint8 (n, 3, 32, 32) images; image 0 is R=10, G=20, B=30 except R=200 at (1, 2)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[0, 0], images[0, 1], images[0, 2] = 10, 20, 30
    images[0, 0, 1, 2] = 200
    return images


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> dict:
    """Write root/cifar-100-python/{train,test,meta}; returns the arrays written."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"fine_names": [f"fine{i:02d}" for i in range(100)]}
    out["coarse_names"] = [f"coarse{i:02d}" for i in range(20)]
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images = known_images(n, s)
        fine = [(i * 7) % 100 for i in range(n)]  # every class, not in sorted order
        coarse = [f // 5 for f in fine]
        d = {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": coarse,
            b"data": to_rows(images),
        }
        (folder / split).write_bytes(py2_pickle(d))
        out[split] = (images, np.array(fine), np.array(coarse))
    meta = {
        b"fine_label_names": [x.encode() for x in out["fine_names"]],
        b"coarse_label_names": [x.encode() for x in out["coarse_names"]],
    }
    (folder / "meta").write_bytes(py2_pickle(meta))
    return out


def write_cifar10(root: Path, n_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> dict:
    """Write root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog"]}
    out["names"] += ["horse", "ship", "truck"]
    train_x, train_y = [], []
    for b, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        n = n_test if name == "test_batch" else n_per_batch
        images = known_images(n, seed + b)
        labels = [(i * 3 + b) % 10 for i in range(n)]
        d = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": to_rows(images),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(py2_pickle(d))
        if name == "test_batch":
            out["test"] = (images, np.array(labels))
        else:
            train_x.append(images)
            train_y.append(labels)
    out["train"] = (np.concatenate(train_x), np.concatenate(train_y))
    meta = {
        b"label_names": [x.encode() for x in out["names"]],
        b"num_cases_per_batch": n_per_batch,
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return out


def make_archive(src_root: Path, folder: str, dest: Path) -> Path:
    """Pack src_root/folder into the .tar.gz `dest` (members named folder/...)."""
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src_root / folder, arcname=folder)
    return dest


@pytest.fixture
def cifar_factory():
    """The builders above: write_cifar100, write_cifar10, make_archive, py2_pickle, to_rows."""
    return SimpleNamespace(
        write_cifar100=write_cifar100,
        write_cifar10=write_cifar10,
        make_archive=make_archive,
        py2_pickle=py2_pickle,
        to_rows=to_rows,
    )


@pytest.fixture
def tiny_cifar100(tmp_path) -> Path:
    """A data dir holding cifar-100-python/ with 200 training and 100 test images."""
    root = tmp_path / "cifar100-data"
    write_cifar100(root)
    return root


@pytest.fixture
def tiny_cifar10(tmp_path) -> Path:
    """A data dir holding cifar-10-batches-py/ with 5 x 20 training and 20 test images."""
    root = tmp_path / "cifar10-data"
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    """The real CIFAR-10 JPEG folder ($PLAINNET_TEST_CIFAR10_JPEG or shared/data); else skip."""
    env = os.environ.get("PLAINNET_TEST_CIFAR10_JPEG")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "cifar10-jpeg"
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {path} (set PLAINNET_TEST_CIFAR10_JPEG)")
    return path


@pytest.fixture(scope="session")
def cifar10_jpeg_data(cifar10_jpeg, tmp_path_factory):
    """The real CIFAR-10 JPEGs loaded once per session as ImageData (about 10-20 s to decode).

    The decoded cache goes to a session temporary folder, or to $PLAINNET_TEST_CACHE if set
    (a persistent folder there makes later sessions load in about a second).
    """
    from plainnet.data import load_dataset

    cache = os.environ.get("PLAINNET_TEST_CACHE") or str(tmp_path_factory.mktemp("plainnet-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLAINNET_CACHE", cache)
        return load_dataset("folder", cifar10_jpeg)
