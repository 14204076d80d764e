"""Image-folder data sets: `DIR/train/<class>/*` and `DIR/test/<class>/*`, PNG or JPEG.

Decoding tens of thousands of small images takes seconds, so the decoded uint8 arrays are cached
as one `.npz` file per data set in a cache folder (the data folder itself may be read-only). The
cache carries a fingerprint of the file list (relative paths, sizes, modification times) and is
rebuilt whenever the folder changes or the cache file cannot be read.

Only PNG and JPEG contents are decoded (whatever the suffix says), and each image becomes 8-bit
RGB by its Pillow mode:

    RGB                  as stored (Pillow keeps the high byte of 16-bit colour PNGs)
    L, 1                 grey copied to R, G and B (mode 1: 0 or 255)
    I;16, I;16B, I;16L   16-bit grey: the high byte (v >> 8), like Pillow's 16-bit colour; an
                         8-bit grey saved as 16 bits (v * 257) comes back exactly
    I from a PNG         the same (Pillow before 10 opens 16-bit grey PNGs as I)
    RGBA, LA, RGBX       alpha (or padding) dropped, colours as stored: what torchvision's
                         ImageFolder loader (`convert("RGB")`) gives, so both see the same pixels
    P, PA                palette colours, alpha dropped (through RGBA: no transparency warning)
    CMYK, YCbCr          Pillow's conversion (CMYK without a colour profile)
    anything else        refused, naming the file and mode: I (32-bit) and F (float) have no
                         agreed 8-bit scale; LAB, HSV, ... are not what a PNG or JPEG holds

All images must have one size, read from each file's header before any pixels are decoded or
memory for the data set is allocated; a side over `MAX_SIDE` pixels is refused (everything is
held in memory at once, and a huge image is most likely a mistake or a decompression bomb).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from plainnet.data.cifar import Splits, check_data_dir
from plainnet.errors import UserError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared case-insensitively
FORMATS = ("PNG", "JPEG")  # what Pillow may decode, whatever the suffix says
MAX_SIDE = 1024  # pixels; a CIFAR-like data set held in memory has far smaller images
MAX_FILE_BYTES = 64 << 20  # bytes; far above any PNG or JPEG of MAX_SIDE x MAX_SIDE pixels
_EIGHT_BIT = ("1", "L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L")
CACHE_VERSION = 2  # bump when the layout or the decoding changes, so old files are rebuilt
_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_folder(data_dir: Path, cache: Path, log: Callable[[str], None] | None = None) -> Splits:
    """Load the folder data set at `data_dir`, using (and refreshing) the cache in `cache`;
    `log` hears when the images are decoded (once per version of the folder: seconds).

    Class names are the sorted sub-folder names of `train/`; `test/` must have the same ones.
    Hidden files and folders (names starting with ".") are skipped, as are files whose suffix
    is not an image suffix. All images must have one size; they are converted to RGB.
    """
    root = check_data_dir(data_dir)
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

    if log is not None:
        log(f"decoding {len(train_files) + len(test_files):,} images of {root} (once: the "
            f"result is cached in {cache_file.parent})")  # fmt: skip
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
    """The sorted names of the class folders in ``split_dir``; a symbolic link loop among them
    is a `UserError` (``is_dir`` says False for one, which would drop the class unsaid)."""
    names = []
    for p in sorted(split_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            names.append(p.name)
        elif _is_link_loop(p):
            raise UserError(f"{p}: a symbolic link loop: fix or remove the link")
    return names


def _is_link_loop(path: Path) -> bool:
    """Whether ``path`` is a symbolic link that never reaches a file or folder (ELOOP)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


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


def _open(path: str, data: bytes) -> Image.Image:
    """The image whose file bytes are ``data``, opened lazily: its header (size, mode) is read,
    no pixels yet. ``path`` is the name errors give it."""
    try:
        # Decoding from memory is about 1.5x faster than letting Pillow read the file itself in
        # small pieces (measured on 32 x 32 JPEGs). Our own size limit is far stricter than
        # Pillow's decompression-bomb warning, which would only add noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise UserError(f"{path}: image too large (more than {MAX_SIDE} pixels a side)") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not a readable PNG or JPEG image") from None
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, ... on bad files
        raise UserError(f"{path}: not a readable PNG or JPEG image ({_reason(e)})") from None


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            if (n := os.fstat(f.fileno()).st_size) > MAX_FILE_BYTES:
                raise UserError(
                    f"{path}: {n:,} bytes, too large for an image of at most {MAX_SIDE} x "
                    f"{MAX_SIDE} pixels"
                )
            return f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _reason(e: Exception) -> str:
    """Pillow's message in one line, without the repr of the in-memory file it was given."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the file", one_line(e))


def _size(path: str, im: Image.Image) -> tuple[int, int]:
    """``im``'s (width, height) from its header; over `MAX_SIDE` is a `UserError`."""
    w, h = im.size
    if max(w, h) > MAX_SIDE:
        raise UserError(
            f"{path}: image is {w}x{h} pixels, more than the {MAX_SIDE} a side a folder data "
            "set allows (all images are held in memory at once): resize it"
        )
    return w, h


def _to_rgb(path: str, im: Image.Image) -> np.ndarray:
    """``im`` as uint8 (H, W, 3) RGB by the mode table in the module docstring."""
    if im.mode in _SIXTEEN_BIT or (im.mode == "I" and im.format == "PNG"):
        grey = (np.clip(np.asarray(im), 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode not in _EIGHT_BIT:
        raise UserError(
            f"{path}: image mode {im.mode} is not supported (no agreed 8-bit RGB): save it as "
            "8-bit RGB, grey, palette or 16-bit grey"
        )
    return np.asarray(im.convert("RGB"))


def _decode(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """The image file at ``path`` as uint8 (H, W, 3) RGB (see `decode_image`)."""
    return decode_image(path, _read_bytes(path), size)


def decode_image(path: str, data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    """One PNG or JPEG file's bytes ``data`` as uint8 (H, W, 3) RGB by the mode table above;
    it must be ``size`` = (H, W) if given, which is checked from the header, before any pixels
    are decoded. A bad image is a `UserError` naming ``path``."""
    with _open(path, data) as im:
        w, h = _size(path, im)
        _same_size(path, (h, w), size)
        try:
            return _to_rgb(path, im)
        except UserError:
            raise
        except Exception as e:  # a truncated or damaged file shows when its pixels are decoded
            raise UserError(f"{path}: not a readable PNG or JPEG image ({_reason(e)})") from None


def _same_size(path: str, found: tuple[int, int], size: tuple[int, int] | None) -> None:
    if size is not None and tuple(found) != tuple(size):
        raise UserError(
            f"{path}: image is {found[1]}x{found[0]} pixels but the others are "
            f"{size[1]}x{size[0]}: all images of a folder data set must have one size"
        )


def _decode_all(files: list[str], size: tuple[int, int] | None) -> np.ndarray:
    """Decode `files` into uint8 (N, 3, H, W); all must be `size` = (H, W), by default the size
    most of the first three images have (so a single odd image is the one named, even when it
    is the first). Memory for all N is allocated only once that size is known.

    Serial on purpose: for 60,000 32 x 32 JPEGs on 2 cores, threads were slower (decoding such
    tiny images is mostly Python overhead under the GIL) and a 2-process pool only went from
    about 11 s to 9 s, not worth forking a process that may hold CUDA state. It runs once per
    data set; later loads read the cache.
    """
    first = [_decode(path, None) for path in files[:3]] if size is None else []
    if size is None:
        sizes = [img.shape[:2] for img in first]
        size = sizes[1] if len(sizes) == 3 and sizes[1] == sizes[2] else sizes[0]
    h, w = size
    try:
        out = np.empty((len(files), 3, h, w), dtype=np.uint8)
    except MemoryError:
        raise UserError(
            f"{len(files):,} images of {w}x{h} pixels need {len(files) * 3 * h * w / 2**30:.1f} "
            "GiB, more than this machine can allocate: use smaller or fewer images"
        ) from None
    for i, path in enumerate(files):
        img = first[i] if i < len(first) else _decode(path, size)
        _same_size(path, img.shape[:2], size)
        out[i] = img.transpose(2, 0, 1)
    return out


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
