#!/usr/bin/env python3
"""Build plainnet's built-in data sample from a CIFAR-10 JPEG class-folder tree.

usage: python tools/make_sample.py DIR [--out FILE]   (DIR holds train/<class>/*.jpg, test/...)

The sample is, for each class (sorted folder names), the first 200 training and the first 100
test JPEG files in sorted file-name order: 2,000 training and 1,000 test images, balanced. The
JPEG bytes are stored exactly as they are in the files (re-encoding would lose quality, and JPEG
bytes are a third of the size of the decoded pixels) in one uncompressed `.npz` that
`np.load(..., allow_pickle=False)` reads:

    format          str, FORMAT below
    classes         str (C,), fixed-width unicode: the class folder names, label order
    train_jpeg      uint8 (total bytes,): every training file's bytes, one after the other
    train_offsets   int64 (N + 1,): image i is train_jpeg[offsets[i]:offsets[i + 1]]
    train_labels    int64 (N,): index into classes
    test_jpeg, test_offsets, test_labels   the same for the test split

The same input gives a byte-identical file: the members are written in a fixed order and
`np.savez` stamps every member with the same fixed zip date. Needs numpy and Pillow only.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "plainnet-sample-v1"  # plainnet.data.sample reads exactly this layout
SIDE = 32  # pixels: every image must be SIDE x SIDE RGB, like CIFAR
JPEG_SUFFIXES = (".jpg", ".jpeg")  # compared case-insensitively
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "plainnet" / "data" / "sample.npz"


class InputError(Exception):
    """Bad input or output path: reported as one line, exit status 2."""


def class_names(split_dir: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``split_dir``."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def first_jpegs(class_dir: Path, n: int) -> list[Path]:
    """The first ``n`` JPEG files of ``class_dir`` by file name (hidden files skipped)."""
    names = sorted(
        e.name
        for e in os.scandir(class_dir)
        if not e.name.startswith(".") and e.name.lower().endswith(JPEG_SUFFIXES) and e.is_file()
    )
    if len(names) < n:
        raise InputError(f"{class_dir}: {len(names)} JPEG files, the sample needs {n} per class")
    return [class_dir / name for name in names[:n]]


def read_jpeg(path: Path) -> bytes:
    """The bytes of ``path``, checked to be a SIDE x SIDE colour JPEG (header only)."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            size, mode = im.size, im.mode
    except Exception:  # Pillow raises several types for a file it cannot read
        raise InputError(f"{path}: not a readable JPEG file") from None
    if size != (SIDE, SIDE) or mode != "RGB":
        raise InputError(f"{path}: {size[0]}x{size[1]} {mode}, expected {SIDE}x{SIDE} RGB")
    return data


def read_split(
    split_dir: Path, classes: list[str], per_class: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split as (concatenated JPEG bytes uint8, offsets int64 (N + 1,), labels int64)."""
    blobs: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in first_jpegs(split_dir / name, per_class):
            blobs.append(read_jpeg(path))
            labels.append(label)
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    jpeg = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    return jpeg, offsets, np.asarray(labels, dtype=np.int64)


def build(root: Path, train_per_class: int, test_per_class: int) -> dict[str, np.ndarray]:
    """The sample's arrays, in the order they are written."""
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise InputError(f"{root}: no {split}/ folder: expected DIR/{split}/<class>/*.jpg")
    classes = class_names(root / "train")
    if not classes:
        raise InputError(f"{root / 'train'}: no class folders: expected train/<class>/*.jpg")
    if class_names(root / "test") != classes:
        raise InputError(f"{root}: test/ and train/ have different class folders")
    arrays = {"format": np.array(FORMAT), "classes": np.array(classes)}
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        jpeg, offsets, labels = read_split(root / split, classes, n)
        arrays |= {f"{split}_jpeg": jpeg, f"{split}_offsets": offsets, f"{split}_labels": labels}
    return arrays


def write(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``out`` with `np.savez`, through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; this file is shipped
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write plainnet's built-in sample (JPEG bytes of the first images of each "
        "class) from a CIFAR-10 folder holding train/<class>/*.jpg and test/<class>/*.jpg.",
    )
    parser.add_argument(
        "dir", type=Path, metavar="DIR", help="the CIFAR-10 JPEG folder (with train/ and test/)"
    )
    parser.add_argument(
        "-o", "--out", type=Path, default=DEFAULT_OUT, metavar="FILE",
        help="the .npz file to write (default: src/plainnet/data/sample.npz of this repository)",
    )  # fmt: skip
    parser.add_argument(
        "--train-per-class", type=int, default=200, metavar="N", help="default: 200"
    )
    parser.add_argument("--test-per-class", type=int, default=100, metavar="N", help="default: 100")
    args = parser.parse_args(argv)
    try:
        if min(args.train_per_class, args.test_per_class) < 1:
            raise InputError("--train-per-class and --test-per-class must be at least 1")
        if not args.dir.is_dir():
            raise InputError(f"{args.dir}: no such folder")
        if not args.out.parent.is_dir():
            raise InputError(f"{args.out.parent}: no such folder for the output file")
        arrays = build(args.dir, args.train_per_class, args.test_per_class)
        write(args.out, arrays)
    except (InputError, OSError) as e:
        print(f"make_sample.py: error: {e}", file=sys.stderr)
        return 2
    n_train, n_test = len(arrays["train_labels"]), len(arrays["test_labels"])
    print(
        f"wrote {args.out}: {n_train:,} training and {n_test:,} test images of "
        f"{len(arrays['classes'])} classes, {args.out.stat().st_size:,} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
