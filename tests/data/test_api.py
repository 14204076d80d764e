"""ImageData helpers, balanced subsets, default folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plainnet.data import DATASETS, balanced_indices, cache_dir, default_data_dir, load_dataset
from plainnet.errors import UserError


def test_balanced_indices_counts_order_and_remainder():
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1, 1, 2, 0, 2, 1])
    idx = balanced_indices(labels, 7, 3)  # quotas 3, 2, 2: the remainder goes to class 0
    assert idx.dtype == torch.int64 and idx.tolist() == sorted(idx.tolist())
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 6]  # first 3 zeros, first 2 ones and twos
    assert torch.bincount(labels[idx]).tolist() == [3, 2, 2]
    idx = balanced_indices(labels, 8, 3)  # quotas 3, 3, 2
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert balanced_indices(labels, 12, 3).tolist() == list(range(12))
    assert balanced_indices(labels, 3, 3).tolist() == [0, 1, 3]


def test_balanced_indices_large():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (5000,), generator=g)
    idx = balanced_indices(labels, 1003, 10)
    assert len(idx) == 1003 and len(idx.unique()) == 1003
    assert torch.bincount(labels[idx], minlength=10).tolist() == [101] * 3 + [100] * 7
    for c in range(10):  # each class contributes its first items in the original order
        mine = idx[labels[idx] == c]
        assert torch.equal(mine, (labels == c).nonzero().flatten()[: len(mine)])


@pytest.mark.parametrize(
    ("n", "message"), [(0, "positive"), (-1, "positive"), (13, "cannot take 13")]
)
def test_balanced_indices_errors(n, message):
    with pytest.raises(UserError, match=message):
        balanced_indices(torch.tensor([0, 1] * 6), n, 2)


def test_balanced_indices_short_class():
    with pytest.raises(UserError, match="class 1 has only 1"):
        balanced_indices(torch.tensor([0, 0, 0, 0, 1]), 4, 2)


def test_subset_keeps_full_stats_and_coarse_labels(tiny_cifar100):
    data = load_dataset("cifar100", tiny_cifar100, download=False)
    small = data.subset(100, 50)
    assert small.train_images.shape == (100, 3, 32, 32) and small.test_images.shape == (
        50,
        3,
        32,
        32,
    )
    assert torch.bincount(small.train_labels, minlength=100).tolist() == [1] * 100
    assert small.mean == data.mean and small.std == data.std and small.classes == data.classes
    idx = balanced_indices(data.test_labels, 50, 100)
    assert torch.equal(small.test_coarse_labels, data.test_coarse_labels[idx])
    assert torch.equal(small.test_images, data.test_images[idx])
    same = data.subset(None, None)
    assert same.train_images is data.train_images
    with pytest.raises(UserError):
        data.subset(201, None)


def test_to_returns_new_object(tiny_cifar10):
    data = load_dataset("cifar10", tiny_cifar10, download=False)
    moved = data.to("cpu")
    assert moved is not data and moved.train_images.device.type == "cpu"
    assert torch.equal(moved.test_labels, data.test_labels) and moved.name == data.name


def test_default_dirs(monkeypatch, tmp_path):
    for var in ("PLAINNET_DATA", "PLAINNET_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "plainnet"
    assert cache_dir() == tmp_path / "home" / ".cache" / "plainnet" / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "plainnet"
    assert cache_dir() == tmp_path / "xdg" / "plainnet" / "cache"
    monkeypatch.setenv("PLAINNET_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("PLAINNET_CACHE", str(tmp_path / "c"))
    assert default_data_dir() == Path(tmp_path / "d") and cache_dir() == tmp_path / "c"
    assert DATASETS == ("cifar100", "cifar10", "folder", "sample")


@pytest.mark.parametrize(
    ("name", "download"), [("folder", False), ("cifar10", False), ("cifar100", True)]
)
def test_a_data_dir_in_a_symbolic_link_loop_is_one_line(tmp_path, monkeypatch, name, download):
    monkeypatch.setenv("PLAINNET_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError) as e:
        load_dataset(name, tmp_path / "a", download=download)  # download: nothing is fetched
    assert str(e.value).startswith(f"{tmp_path / 'a'}: a symbolic link loop")
    assert "\n" not in str(e.value)
