"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

The archives hold Python 2 pickles. Unpickling can run arbitrary code, so `_CifarUnpickler` admits
only the four numpy globals an array needs and every loaded object is checked against the
official layout before use; the archive itself is extracted member by member after checking that
nothing lands outside the target folder.
"""

from __future__ import annotations

import errno
import hashlib
import lzma
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from plainnet.errors import UserError, one_line

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


@dataclass(frozen=True)
class Archive:
    """One official archive: where to fetch it and what it unpacks to."""

    title: str  # for messages, e.g. "CIFAR-100"
    url: str
    md5: str  # of the .tar.gz file
    filename: str  # the .tar.gz file name
    folder: str  # the folder it extracts to
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str


#: Tests replace entries (e.g. the URL and MD5) with `monkeypatch.setitem`.
ARCHIVES: dict[str, Archive] = {
    "cifar100": Archive(
        title="CIFAR-100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        filename="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
    ),
    "cifar10": Archive(
        title="CIFAR-10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        filename="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
    ),
}

SIDE = 32  # CIFAR images are 32 x 32 pixels
ROW = 3 * SIDE * SIDE  # bytes per image in b'data': 1024 red, 1024 green, 1024 blue, row-major


class Splits(NamedTuple):
    """Decoded data set as numpy arrays (shared by the CIFAR and folder loaders)."""

    train_images: np.ndarray  # uint8 (N, 3, H, W)
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray  # uint8 (M, 3, H, W)
    test_labels: np.ndarray  # int64 (M,)
    classes: list[str]
    test_coarse_labels: np.ndarray | None = None  # int64 (M,), CIFAR-100 only
    coarse_classes: list[str] | None = None  # CIFAR-100 only


# ---------------------------------------------------------------------------------------------
# Finding, downloading and extracting the archive


def load_cifar(name: str, data_dir: Path, *, download: bool = True) -> Splits:
    """Load "cifar100" or "cifar10" from `data_dir` (extracted folder or archive there).

    Missing data is downloaded into `data_dir` when `download` is true.
    """
    archive = ARCHIVES[name]
    check_data_dir(data_dir)
    folder = ensure_extracted(archive, data_dir, download=download)
    if name == "cifar100":
        return _read_cifar100(folder, archive)
    return _read_cifar10(folder, archive)


def check_data_dir(path: str | Path) -> Path:
    """``path`` absolute, links resolved; a symbolic link loop or a path that cannot be looked
    at is a one-line `UserError` naming it. A missing path is not (callers say what goes there).
    """
    path = Path(path).expanduser()
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        why = "a symbolic link loop" if e.errno == errno.ELOOP else f"cannot look at it ({e})"
        raise UserError(f"{path}: {why}: pass another --data-dir") from None
    try:
        return path.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a link loop, Python < 3.13
        raise UserError(f"{path}: cannot resolve the path ({e}): pass another --data-dir") from None


def ensure_extracted(archive: Archive, data_dir: Path, *, download: bool) -> Path:
    """Return `data_dir/<folder>`, extracting (and first downloading) the archive if needed."""
    folder = data_dir / archive.folder
    needed = [*archive.train_files, archive.test_file, archive.meta_file]
    if folder.is_dir():
        missing = [f for f in needed if not (folder / f).is_file()]
        if missing:
            raise UserError(
                f"{folder} is incomplete (no {', '.join(missing)}): delete it and put "
                f"{archive.filename} in {data_dir}"
            )
        return folder
    tar_path = data_dir / archive.filename
    if not tar_path.is_file():
        if not download:
            raise UserError(
                f"{archive.title} not found in {data_dir} (no {archive.folder}/ or "
                f"{archive.filename}): put {archive.filename} in {data_dir} or pass --data-dir"
            )
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create the data folder {data_dir} ({one_line(e)}): pass --data-dir"
            ) from e
        if not os.access(data_dir, os.W_OK):
            raise UserError(
                f"{archive.title} not found in {data_dir}, which is not writable: put "
                f"{archive.filename} there or pass a writable --data-dir"
            )
        try:
            download_archive(archive.url, tar_path, archive.md5)
        except UserError:
            raise
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
            raise UserError(
                f"{archive.title} not found in {data_dir} and download failed ({one_line(e)}): "
                f"put {archive.filename} in {data_dir} or pass --data-dir"
            ) from e
    safe_extract(tar_path, data_dir)
    if not folder.is_dir():
        raise UserError(f"{tar_path} does not contain {archive.folder}/: not the official archive")
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:  # what we just extracted: remove it, or the next run blames the folder
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(
            f"{tar_path} is not the official archive (no {archive.folder}/{missing[0]}): "
            "delete it and download it again"
        )
    return folder


def download_archive(url: str, dest: Path, md5: str, *, timeout_s: float = 60.0) -> None:
    """Fetch `url` to `dest`: stream to a temporary file next to it, check the MD5, rename.

    Network errors propagate as OSError (the caller words the message); a wrong checksum is a
    UserError and leaves no file behind. `dest` only ever appears complete and verified.
    """
    dest = Path(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5.lower():
            raise UserError(
                f"download of {url} has MD5 {digest.hexdigest()}, expected {md5}: deleted it; "
                f"try again or put {dest.name} in {dest.parent} yourself"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the data folder may be shared
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def safe_extract(tar_path: Path, target: Path) -> None:
    """Extract `tar_path` into `target`, refusing any member that could escape it.

    Only regular files and directories with relative paths free of ".." that resolve inside
    `target` are allowed (no links, devices or fifos). The check is done here rather than
    relying on tarfile's `filter="data"` so the behaviour does not depend on the Python version.
    Extraction goes to a temporary folder first and is moved into place at the end, so an
    interrupted run never leaves a half-extracted data set that looks complete.
    """
    target = Path(target)
    if not os.access(target, os.W_OK):
        raise UserError(
            f"cannot extract {tar_path.name}: {target} is not writable; extract it yourself "
            f"or copy it to a writable folder and pass --data-dir"
        )
    root = check_data_dir(target)
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, root, tar_path)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python without extraction filters; members are checked above
                    tar.extractall(tmp, members=members)
                # gzip checks its CRC only at the end of the stream, which tarfile never reads:
                # without this, damaged bytes inside a member would be extracted silently.
                while tar.fileobj.read(1 << 20):
                    pass
                for top in sorted({Path(m.name).parts[0] for m in members}):
                    if not (target / top).exists():
                        os.replace(tmp / top, target / top)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except tarfile.ReadError as e:  # its text lists every compression tried, one per line
        why = "not a tar archive, or a damaged one" if "\n" in str(e) else one_line(e)
        raise UserError(
            f"{tar_path}: cannot extract ({why}): delete it and download it again"
        ) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        raise UserError(
            f"{tar_path}: cannot extract ({one_line(e)}): delete it and download it again"
        ) from None


def _check_member(m: tarfile.TarInfo, root: Path, tar_path: Path) -> None:
    if not (m.isfile() or m.isdir()):
        raise UserError(f"{tar_path}: refusing member {m.name!r}: not a regular file or folder")
    p = Path(m.name)
    if p.is_absolute() or m.name.startswith(("/", "\\")) or ".." in p.parts or not p.parts:
        raise UserError(f"{tar_path}: refusing member {m.name!r}: path leaves the target folder")
    dest = (root / p).resolve()
    if dest != root and root not in dest.parents:
        raise UserError(f"{tar_path}: refusing member {m.name!r}: path leaves the target folder")


# ---------------------------------------------------------------------------------------------
# Reading the pickles


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else."""

    def __init__(self, file: Any, path: Path) -> None:
        # encoding="bytes": Python 2 `str` objects (dict keys, the array buffers) become bytes.
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return self._dtype
        raise UserError(
            f"{self.path}: refusing to load pickle global {module}.{name}: not a CIFAR file"
        )

    def _dtype(self, *args: Any) -> np.dtype:
        # An object dtype would let arbitrary (if inert) Python objects into an array; CIFAR
        # only ever has integer arrays. The final dtype is checked again after loading.
        dt = np.dtype(*args)
        if dt.kind not in "biu" or dt.hasobject:
            raise UserError(f"{self.path}: refusing numpy dtype {dt}: not a CIFAR file")
        return dt


def read_pickle(path: Path) -> dict[bytes, Any]:
    """Load one CIFAR pickle with the restricted unpickler; it must hold a dict."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"{path}: cannot read ({one_line(e)})") from e
    except Exception as e:  # truncated or corrupt: UnpicklingError, EOFError, ValueError, ...
        raise UserError(
            f"{path}: corrupt or truncated pickle ({type(e).__name__}: {one_line(e)}): "
            f"delete the folder and extract the archive again"
        ) from e
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict, found {type(obj).__name__}: not a CIFAR file")
    return obj


def _images(d: dict[bytes, Any], path: Path) -> np.ndarray:
    data = d.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise UserError(f"{path}: b'data' is not a uint8 array: not a CIFAR file")
    if data.ndim != 2 or data.shape[1] != ROW:
        raise UserError(f"{path}: b'data' has shape {data.shape}, expected (N, {ROW})")
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major: exactly C, H, W.
    return np.ascontiguousarray(data).reshape(-1, 3, SIDE, SIDE)


def _labels(d: dict[bytes, Any], key: bytes, n: int, num: int, path: Path) -> np.ndarray:
    raw = d.get(key)
    if not isinstance(raw, (list, np.ndarray)):
        raise UserError(f"{path}: no label list {key!r}: not a CIFAR file")
    labels = np.asarray(raw)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise UserError(
            f"{path}: {key!r} must be {n} integers, found {labels.dtype} of shape {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= num):
        raise UserError(f"{path}: {key!r} has labels outside [0, {num})")
    return labels.astype(np.int64)


def _names(d: dict[bytes, Any], key: bytes, num: int, path: Path) -> list[str]:
    raw = d.get(key)
    if not isinstance(raw, list) or len(raw) != num:
        raise UserError(f"{path}: {key!r} must be a list of {num} class names")
    names = []
    for x in raw:
        if isinstance(x, bytes):
            x = x.decode("utf-8", errors="replace")
        if not isinstance(x, str):
            raise UserError(f"{path}: {key!r} holds a {type(x).__name__}, not a class name")
        names.append(x)
    return names


def _read_cifar100(folder: Path, archive: Archive) -> Splits:
    meta_path = folder / archive.meta_file
    meta = read_pickle(meta_path)
    fine = _names(meta, b"fine_label_names", 100, meta_path)
    coarse = _names(meta, b"coarse_label_names", 20, meta_path)
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for fname in (archive.train_files[0], archive.test_file):
        path = folder / fname
        d = read_pickle(path)
        images = _images(d, path)
        labels = _labels(d, b"fine_labels", len(images), 100, path)
        coarse_labels = _labels(d, b"coarse_labels", len(images), 20, path)
        out.append((images, labels, coarse_labels))
    (train_x, train_y, _), (test_x, test_y, test_c) = out
    return Splits(train_x, train_y, test_x, test_y, fine, test_c, coarse)


def _read_cifar10(folder: Path, archive: Archive) -> Splits:
    meta_path = folder / archive.meta_file
    classes = _names(read_pickle(meta_path), b"label_names", 10, meta_path)
    xs, ys = [], []
    for fname in (*archive.train_files, archive.test_file):
        path = folder / fname
        d = read_pickle(path)
        xs.append(_images(d, path))
        ys.append(_labels(d, b"labels", len(xs[-1]), 10, path))
    train_x = np.concatenate(xs[:-1]) if len(xs) > 2 else xs[0]
    train_y = np.concatenate(ys[:-1]) if len(ys) > 2 else ys[0]
    return Splits(train_x, train_y, xs[-1], ys[-1], classes)
