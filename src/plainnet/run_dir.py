"""A run is a directory: its files, written so that a crash at any moment loses nothing.

``config.json`` (what was asked for and where it ran), ``metrics.jsonl`` (one object per
epoch), ``summary.json`` (the result and the run's status), ``checkpoint.pt`` (everything needed
to continue exactly) and ``.lock`` (held while a process trains here).

Every file is written to a new temporary name (``.NAME.<random>.tmp``), flushed to disk and
renamed over the old one, so a reader (or a SIGKILL) only ever sees the old or the new version;
what a kill leaves behind is never reused and is ignored. `open_for_writing`, the one place that
opens files for writing here, never follows a symbolic link: a link planted in a run or grid
directory cannot make plainnet overwrite what it points to (the rename replaces a link at the
final name itself). The lock is an ``flock`` on ``.lock`` (Windows: ``msvcrt.locking``), dropped
by the system when its holder dies, so a crashed run never leaves the directory stuck.
`read_json` with a schema (`plainnet.schemas`) words valid JSON of the wrong form in one line.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import platform
import re
import secrets
import stat
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from plainnet.errors import UserError, one_line
from plainnet.schemas import (
    CONFIG_SCHEMA,
    METRICS_ROW_SCHEMA,
    check_schema,
    check_summary,
)

try:  # POSIX
    import fcntl
except ImportError:  # Windows: msvcrt instead (see _lock)
    fcntl = None  # type: ignore[assignment]

CONFIG, METRICS, SUMMARY, CHECKPOINT, LOCK = (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoint.pt",
    ".lock",
)

# No O_NOFOLLOW on Windows, where planting a link needs administrator rights; O_BINARY: Windows.
_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_FLAGS |= getattr(os, "O_NOFOLLOW", 0)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TEMPORARY = re.compile(r"\..+\.tmp")  # what atomic_write (and older versions) leave on a kill


def open_for_writing(path: Path, flags: int = 0) -> int:
    """The descriptor of ``path`` opened read-write, created with mode 0o666 less the umask (as
    ``open`` does), plus ``flags``: ``os.O_EXCL`` (`FileExistsError` if it exists) or
    ``os.O_APPEND``; never ``os.O_TRUNC``, which would act before the checks (`os.ftruncate`).
    A symbolic link is refused, never followed, and so is anything but a plain file of its own
    (a pipe, a device, a hard link): writing there would change something outside the folder.
    Every failure but `FileExistsError` is a `UserError`."""
    try:
        fd = os.open(path, _FLAGS | flags, 0o666)
    except OSError as err:
        if flags & os.O_EXCL and err.errno == errno.EEXIST:
            raise
        if err.errno in (errno.ELOOP, errno.EMLINK) or os.path.islink(path):
            raise UserError(f"{path}: a symbolic link; plainnet never writes through one") from None
        raise _write_error(path, err) from None
    if not stat.S_ISREG((st := os.fstat(fd)).st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{path}: not a plain file of its own (a pipe, device or hard link)")
    return fd


def _write_error(path: Path, err: OSError) -> UserError:
    if err.errno in _DISK_FULL:
        why = "disk full while writing"
        todo = " (free some space and rerun the same command to continue)"
    else:
        why, todo = f"cannot write ({err.strerror or err})", ""
    return UserError(f"{path}: {why}; the previous version is intact{todo}")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new ``.NAME.<random>.tmp`` beside ``path`` (a fixed name could be a planted link)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        with contextlib.suppress(FileExistsError):  # 48 random bits: practically never
            return open_for_writing(tmp, os.O_EXCL), tmp


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` to a temporary file, fsync, then rename it over.
    On any failure the temporary file goes and ``path`` keeps its previous content; an `OSError`
    (a full disk, no permission) becomes a one-line `UserError` naming ``path``."""
    path = Path(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, err) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not on Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def make_folder(path: Path) -> Path:
    """Create the folder ``path`` plainnet writes into (a run's snapshots, a grid's logs or
    figures), refusing one that is a symbolic link: its files would land wherever it points."""
    if path.is_symlink():
        raise UserError(f"{path}: is a symbolic link; plainnet never writes through one")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{path}: cannot create the folder ({err.strerror})") from None
    return path


def save_torch(path: Path, value: Any) -> None:
    """``torch.save(value)`` to ``path`` atomically, serialised into memory first (a checkpoint
    is tens of MB): torch's own file writer turns a full disk into an opaque ``RuntimeError``
    (inline_container.cc), our write into an `OSError` that `atomic_write` words in one line."""

    def write(f: BinaryIO) -> None:  # inside atomic_write, so its errors are worded there too
        torch.save(value, buffer := io.BytesIO())
        f.write(buffer.getbuffer())

    atomic_write(path, write)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: store them as null (strict readers choke otherwise)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(_finite(value), default=_json_default, allow_nan=False)


def write_json(path: Path, value: Any) -> None:
    text = json.dumps(_finite(value), default=_json_default, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: Path, schema: dict | None = None) -> Any:
    """Read a JSON file; a missing, truncated or corrupt one is a `UserError` naming it, and so
    is one that does not follow ``schema`` (see `check_schema`; None: any JSON)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: unreadable or corrupt ({err})") from None
    return parse_json(path, text, schema)


def parse_json(path: Path, text: str | bytes, schema: dict | None = None) -> Any:
    """The JSON document ``text`` read from ``path``, as `read_json` checks it: corrupt JSON,
    or JSON nested too deeply for the parser, is a `UserError` naming ``path``."""
    try:
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable or corrupt ({err})") from None
    except RecursionError:
        raise UserError(f"{path}: unreadable or corrupt (nested too deeply)") from None
    if schema is not None:
        check_schema(path, value, schema)
    return value


def read_metrics(path: Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl``; a corrupt line, or one that does not have
    `METRICS_ROW_SCHEMA`, is a `UserError` naming the file and the line."""
    rows = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return rows
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: line {number} is corrupt ({err.msg})") from None
        check_schema(f"{path}: line {number}", row, METRICS_ROW_SCHEMA)
        rows.append(row)
    return rows


def load_weights(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings and containers
    only, so no code from the file runs. Any failure is a one-line `UserError` naming the file;
    torch's own text is not quoted when it advises loading the file unsafely."""
    try:
        with warnings.catch_warnings():  # torch's note on old pickle protocols is no news
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as err:  # a corrupt zip, a truncated file, a folder, a refused object, ...
        why = one_line(err)
        if "weights only" in str(err).lower():  # torch's text suggests loading it unsafely
            found = re.search(r"GLOBAL ([\w.]{1,100})", str(err))
            why = (
                f"refused: it holds {f'a Python object ({found[1]})' if found else 'something'}"
                " other than tensors, numbers, strings and plain containers, which would need "
                f"code from the file to load{'' if found else ', or it is damaged'}"
            )
        raise UserError(
            f"{path}: unreadable checkpoint ({why}); move it away to start over"
        ) from None


def _lock(fd: int, take: bool) -> bool:
    """Take (without waiting) or release the exclusive lock on ``fd``; False: someone holds it.
    Windows locks are mandatory: lock one byte far past the holder's text, which others read."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if take else fcntl.LOCK_UN)
        except BlockingIOError:
            return False
        return True
    import msvcrt

    os.lseek(fd, 1 << 30, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK if take else msvcrt.LK_UNLCK, 1)
    except PermissionError:  # EACCES: locked by another process
        return False
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return True


class RunDir:
    """The files of one training run in ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    checkpoint = property(lambda self: self.path / CHECKPOINT)

    def is_empty(self) -> bool:
        """True if nothing but the lock, leftover temporary files or .DS_Store is here."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: not a directory; choose another --out")
        return not self.path.exists() or not any(
            p.name not in (LOCK, ".DS_Store") and not _TEMPORARY.fullmatch(p.name)
            for p in self.path.iterdir()
        )

    def read_config(self) -> dict:
        return read_json(self.config, CONFIG_SCHEMA)

    def read_summary(self) -> dict:
        return check_summary(self.summary, read_json(self.summary))

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.metrics)

    def write_config(self, value: dict) -> None:
        write_json(self.config, value)

    def write_summary(self, value: dict) -> None:
        write_json(self.summary, value)

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite the whole file (a few hundred lines at most), so that after a resume it holds
        exactly the epochs the checkpoint has, never a row from the lost tail of a crashed run."""
        text = "".join(dumps(r) + "\n" for r in rows)
        atomic_write(self.metrics, lambda f: f.write(text.encode()))

    def save_checkpoint(self, state: dict) -> None:
        save_torch(self.checkpoint, state)

    def save_snapshot(self, iteration: int, model_state: dict) -> None:
        """Keep the model's weights after ``iteration`` updates as ``snapshots/iterNNNNNNNN.pt``."""
        folder = make_folder(self.path / "snapshots")
        save_torch(folder / f"iter{iteration:08d}.pt", model_state)

    def snapshot_paths(self) -> list[Path]:
        """The snapshots in training order (other files in ``snapshots/`` are not snapshots)."""
        found = (self.path / "snapshots").glob("iter*.pt")
        return sorted(p for p in found if p.stem[4:].isdigit() and p.stem[4:].isascii())

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint, or None if there is none yet (loaded by `load_weights`)."""
        return load_weights(self.checkpoint) if self.checkpoint.exists() else None

    @contextlib.contextmanager
    def locked(self, *, tidy: bool = False) -> Iterator[None]:
        """Hold the directory's lock; a second process gets a `UserError` naming the holder.

        With ``tidy``, a block that fails before anything but the lock was written here (a
        start that could not start) takes back what this call made: the lock file and the
        folders it created. What was there before is never removed."""
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]  # deepest first
        had_lock = (self.path / LOCK).exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create the folder ({err.strerror})") from None
        fd = open_for_writing(self.path / LOCK)
        try:
            if not _lock(fd, take=True):
                holder = one_line(os.read(fd, 200).decode(errors="replace")) or "another process"
                raise UserError(
                    f"{self.path}: already in use by {holder}; wait for it or stop it first"
                )
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {platform.node()}".encode())
                yield
            except BaseException:
                if tidy and self.is_empty():
                    self._take_back(made, had_lock)
                raise
            finally:
                _lock(fd, take=False)
        finally:
            os.close(fd)

    def _take_back(self, made: list[Path], had_lock: bool) -> None:
        """Remove the lock file (still held, so no one else can have taken it) unless it was
        here before, then the empty folders in ``made``, deepest first."""
        if not had_lock:
            with contextlib.suppress(OSError):
                (self.path / LOCK).unlink()
        for folder in made:
            try:
                folder.rmdir()  # only if empty: a leftover temporary file stays, and so does it
            except OSError:
                return
