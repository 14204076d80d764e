"""Data sets as whole uint8 tensors, plus batched augmentation.

CIFAR is small (50,000 training images of 3 x 32 x 32 bytes = 150 MB), so a data set is held as
one uint8 tensor per split that can be moved to the GPU once; batches are then index gathers and
augmentation runs batched on the device (`augment_batch`), with no DataLoader workers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plainnet.data.augment import AUGMENTATIONS, augment_batch, draw_augmentation, normalize
from plainnet.data.cifar import Splits, check_data_dir, load_cifar
from plainnet.data.folder import load_folder
from plainnet.data.loader import DeviceLoader, epoch_plan
from plainnet.data.sample import load_sample
from plainnet.errors import UserError

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "DeviceLoader",
    "ImageData",
    "augment_batch",
    "balanced_indices",
    "cache_dir",
    "channel_stats",
    "default_data_dir",
    "draw_augmentation",
    "epoch_plan",
    "load_dataset",
    "normalize",
]

DATASETS = ("cifar100", "cifar10", "folder", "sample")


@dataclass
class ImageData:
    """A classification data set held in memory as tensors.

    Images are uint8 (N, 3, H, W), contiguous; labels int64. `mean` and `std` are the per-channel
    statistics of the full training set on the 0-255 scale (population std), the constants for
    `normalize`.
    """

    name: str  # "cifar100", "cifar10", "folder:<dirname>" or "sample"
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    test_coarse_labels: torch.Tensor | None = None  # CIFAR-100 only: int64 (M,), 20 superclasses
    coarse_classes: list[str] | None = None  # CIFAR-100 only

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> ImageData:
        """A copy with the image and label tensors on `device` (names and stats shared)."""
        coarse = self.test_coarse_labels
        return dataclasses.replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
            test_coarse_labels=None if coarse is None else coarse.to(device),
        )

    def subset(self, train_limit: int | None, test_limit: int | None) -> ImageData:
        """Class-balanced subsets (see `balanced_indices`); None keeps a split whole.

        `mean` and `std` stay those of the full training set: they are the data set's
        normalisation constants, and a run on a subset (a smoke test, a quick check) should
        preprocess exactly like a full run.
        """
        out = self
        if train_limit is not None:
            idx = balanced_indices(self.train_labels, train_limit, self.num_classes)
            out = dataclasses.replace(
                out, train_images=self.train_images[idx], train_labels=self.train_labels[idx]
            )
        if test_limit is not None:
            idx = balanced_indices(self.test_labels, test_limit, self.num_classes)
            coarse = self.test_coarse_labels
            out = dataclasses.replace(
                out,
                test_images=self.test_images[idx],
                test_labels=self.test_labels[idx],
                test_coarse_labels=None if coarse is None else coarse[idx],
            )
        return out


def default_data_dir() -> Path:
    """Where data sets are looked for and downloaded to by default.

    $PLAINNET_DATA if set, else $XDG_CACHE_HOME/plainnet, else ~/.cache/plainnet.
    """
    if env := os.environ.get("PLAINNET_DATA"):
        return Path(env).expanduser()
    return _user_cache() / "plainnet"


def cache_dir() -> Path:
    """Where decoded image-folder caches go.

    $PLAINNET_CACHE if set, else $XDG_CACHE_HOME/plainnet/cache, else ~/.cache/plainnet/cache.
    """
    if env := os.environ.get("PLAINNET_CACHE"):
        return Path(env).expanduser()
    return _user_cache() / "plainnet" / "cache"


def _user_cache() -> Path:
    if env := os.environ.get("XDG_CACHE_HOME"):
        return Path(env).expanduser()
    return Path.home() / ".cache"


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = True, log=None
) -> ImageData:
    """Load "cifar100", "cifar10", "folder" or "sample" as an `ImageData` on the CPU (``log``,
    if given, hears when an image folder is decoded rather than read from its cache).

    For CIFAR, `data_dir` (default `default_data_dir()`) holds the extracted folder or the
    official archive; with `download` the archive is fetched there when neither is present.
    For "folder", `data_dir` is required and holds train/<class>/* and test/<class>/*.
    "sample" is built into the package (2,000 + 1,000 CIFAR-10 images): no `data_dir`, no
    download.
    """
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    if name == "sample":
        if data_dir is not None:
            raise UserError(
                "the sample data set is built into plainnet and reads no folder: drop --data-dir"
            )
        return _to_image_data("sample", load_sample())
    if name == "folder":
        if data_dir is None:
            raise UserError(
                "the folder data set needs --data-dir DIR (with DIR/train and DIR/test)"
            )
        root = check_data_dir(data_dir)  # a symbolic link loop is one line, not a traceback
        splits = load_folder(root, cache_dir(), log)
        label = f"folder:{root.name}"
    else:
        root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
        splits = load_cifar(name, root, download=download)
        label = name
    return _to_image_data(label, splits)


def _to_image_data(name: str, s: Splits) -> ImageData:
    train_images = torch.from_numpy(np.ascontiguousarray(s.train_images))
    mean, std = channel_stats(train_images)
    coarse = s.test_coarse_labels
    return ImageData(
        name=name,
        train_images=train_images,
        train_labels=torch.from_numpy(np.asarray(s.train_labels, dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(s.test_images)),
        test_labels=torch.from_numpy(np.asarray(s.test_labels, dtype=np.int64)),
        classes=list(s.classes),
        mean=mean,
        std=std,
        test_coarse_labels=None if coarse is None else torch.from_numpy(coarse.astype(np.int64)),
        coarse_classes=None if s.coarse_classes is None else list(s.coarse_classes),
    )


def channel_stats(
    images: torch.Tensor,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std of uint8 images (N, 3, H, W), on the 0-255 scale.

    Computed from a 256-bin histogram per channel: exact (integer counts, float64 moments) and
    about 10x faster than summing float64 copies of the pixels.
    """
    values = torch.arange(256, dtype=torch.float64, device=images.device)
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


def balanced_indices(labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Indices of a class-balanced subset of exactly `n` items, sorted ascending.

    Each class c contributes its first floor(n / num_classes) items in the original order, and
    the classes with the lowest ids one more each until the total is `n`. A class with too few
    items, `n` <= 0 or `n` > len(labels) is a UserError. Returned on `labels`' device (int64).
    """
    total = labels.shape[0]
    if n <= 0:
        raise UserError(f"a subset needs a positive size, got {n}")
    if n > total:
        raise UserError(f"cannot take {n} items from a split of {total}: use a smaller limit")
    base, extra = divmod(n, num_classes)
    quota = torch.full((num_classes,), base, dtype=torch.int64, device=labels.device)
    quota[:extra] += 1
    counts = torch.bincount(labels, minlength=num_classes)
    short = (counts < quota).nonzero().flatten().tolist()
    if short:
        c = short[0]
        raise UserError(
            f"cannot take a class-balanced subset of {n}: class {c} has only "
            f"{int(counts[c])} items, needs {int(quota[c])}"
        )
    # Rank of each item within its class, in the original order: stable sort by label.
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    sorted_labels = labels[order]
    rank = torch.arange(total, device=labels.device) - starts[sorted_labels]
    keep = order[rank < quota[sorted_labels]]
    return torch.sort(keep).values
