"""Image-folder data sets: `DIR/train/<class>/*` and `DIR/test/<class>/*`, PNG or JPEG.

Decoding tens of thousands of small images takes seconds, so the decoded uint8 arrays are cached
as one `.npz` file per data set in a cache folder (the data folder itself may be read-only). The
cache carries a fingerprint of the file list (relative paths, sizes, modification times) and is
rebuilt whenever the folder changes or the cache file cannot be read.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from plainnet.data.cifar import Splits
from plainnet.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared case-insensitively
CACHE_VERSION = 1  # bump when the cache layout changes so old files are rebuilt
_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_folder(data_dir: Path, cache: Path) -> Splits:
    """Load the folder data set at `data_dir`, using (and refreshing) the cache in `cache`.

    Class names are the sorted sub-folder names of `train/`; `test/` must have the same ones.
    Hidden files and folders (names starting with ".") are skipped, as are files whose suffix
    is not an image suffix. All images must have one size; they are converted to RGB.
    """
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root}: no such folder: pass --data-dir DIR with DIR/train and DIR/test")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(
                f"{root}: no {split}/ folder: a folder data set needs "
                f"DIR/train/<class>/*.png|jpg and DIR/test/<class>/*.png|jpg"
            )
    classes = _class_names(root / "train")
    if not classes:
        raise UserError(f"{root / 'train'}: no class folders: expected train/<class>/*.png|jpg")
    test_classes = _class_names(root / "test")
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise UserError(
            f"{root / 'test'}: class folders differ from train/ (only in train: {only_train}, "
            f"only in test: {only_test}): give both the same class folders"
        )
    train_files, train_labels, train_lines = _list_split(root / "train", classes)
    test_files, test_labels, test_lines = _list_split(root / "test", classes)
    fingerprint = _fingerprint(train_lines + test_lines)

    cache_file = Path(cache) / f"folder-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.npz"
    cached = _read_cache(cache_file, fingerprint, classes)
    if cached is not None:
        return cached

    train_images = _decode_all(train_files, size=None)
    test_images = _decode_all(test_files, size=(train_images.shape[2], train_images.shape[3]))
    splits = Splits(
        train_images=train_images,
        train_labels=np.asarray(train_labels, dtype=np.int64),
        test_images=test_images,
        test_labels=np.asarray(test_labels, dtype=np.int64),
        classes=classes,
    )
    _write_cache(cache_file, fingerprint, splits)
    return splits


def _class_names(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_split(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int], list[str]]:
    """Image files of one split in (class, file name) order, their labels and fingerprint lines.

    Plain strings rather than Path objects: pathlib costs about a second per 60,000 files.
    """
    files: list[str] = []
    labels: list[int] = []
    lines: list[str] = []
    for label, name in enumerate(classes):
        try:
            entries = sorted(
                (e for e in os.scandir(split_dir / name) if _is_image_name(e.name) and e.is_file()),
                key=lambda e: e.name,
            )
        except OSError as e:
            raise UserError(f"{split_dir / name}: cannot list the folder ({e})") from e
        if not entries:
            raise UserError(
                f"{split_dir / name}: no images (.png, .jpg, .jpeg): every class needs at least one"
            )
        prefix = f"{split_dir.name}/{name}/"
        for e in entries:
            st = e.stat()
            files.append(e.path)
            lines.append(f"{prefix}{e.name}\t{st.st_size}\t{st.st_mtime_ns}\n")
        labels.extend([label] * len(entries))
    return files, labels, lines


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _fingerprint(lines: list[str]) -> str:
    """Hash of relative paths, sizes and mtimes (ns): changes whenever a file is edited."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\n".encode())
    h.update("".join(lines).encode())
    return h.hexdigest()


def _decode(path: str) -> np.ndarray:
    """One image as uint8 (H, W, 3) RGB."""
    try:
        # Reading the bytes first and decoding from memory is about 1.5x faster than letting
        # Pillow read the file itself in small pieces (measured on 32 x 32 JPEGs).
        with Image.open(io.BytesIO(_read_bytes(path))) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ... on bad files
        raise UserError(f"{path}: not a readable PNG or JPEG image ({e})") from e


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _decode_all(files: list[str], size: tuple[int, int] | None) -> np.ndarray:
    """Decode `files` into uint8 (N, 3, H, W); all must be `size` = (H, W) (default: the first's).

    Serial on purpose: for 60,000 32 x 32 JPEGs on 2 cores, threads were slower (decoding such
    tiny images is mostly Python overhead under the GIL) and a 2-process pool only went from
    about 11 s to 9 s, not worth forking a process that may hold CUDA state. It runs once per
    data set; later loads read the cache.
    """
    first = _decode(files[0])
    h, w = first.shape[:2] if size is None else size
    out = np.empty((len(files), h, w, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        img = first if i == 0 else _decode(path)
        if img.shape != (h, w, 3):
            raise UserError(
                f"{path}: image is {img.shape[1]}x{img.shape[0]} pixels but the others are "
                f"{w}x{h}: all images of a folder data set must have one size"
            )
        out[i] = img
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _read_cache(path: Path, fingerprint: str, classes: list[str]) -> Splits | None:
    """The cached arrays if `path` is a readable cache for `fingerprint`, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint or list(z["classes"]) != classes:
                return None
            arrays = {k: z[k] for k in _ARRAYS}
    except FileNotFoundError:
        return None
    except Exception:  # truncated or otherwise corrupt cache file: rebuild it
        return None
    for k in ("train", "test"):
        x, y = arrays[f"{k}_images"], arrays[f"{k}_labels"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or y.shape != x.shape[:1]:
            return None
    return Splits(classes=classes, **arrays)


def _write_cache(path: Path, fingerprint: str, splits: Splits) -> None:
    """Write the cache atomically (temporary file, then rename); failure only warns."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            # Uncompressed: loading ~180 MB of raw arrays is faster than inflating them.
            np.savez(
                f,
                fingerprint=np.array(fingerprint),
                classes=np.array(splits.classes),
                **{k: getattr(splits, k) for k in _ARRAYS},
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared read-only
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        warnings.warn(
            f"could not write the decoded-image cache {path} ({e}); set PLAINNET_CACHE to a "
            f"writable folder to avoid decoding the images on every run",
            stacklevel=3,
        )
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
