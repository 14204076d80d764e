"""A run is a directory: its files, written so that a crash at any moment loses nothing.

``config.json`` (what was asked for and where it ran), ``metrics.jsonl`` (one object per
epoch), ``summary.json`` (the result and the run's status), ``checkpoint.pt`` (everything needed
to continue exactly) and ``.lock`` (held while a process trains here).

Every file is written to a temporary name, flushed to disk and renamed over the old one, so a
reader (or a SIGKILL) only ever sees the old or the new version, never half of one. The lock is
an ``flock`` on ``.lock``: the kernel drops it when the holding process dies, so a crashed run
never leaves the directory stuck.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from plainnet.errors import UserError

CONFIG, METRICS, SUMMARY, CHECKPOINT, LOCK = (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoint.pt",
    ".lock",
)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through ``write(file)`` to a temporary file, fsync, then rename it over.

    On any failure (disk full included) the temporary file is removed and ``path`` keeps its
    previous content; a full disk becomes a `UserError`.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(
                f"{path}: disk full while writing; the previous version is intact "
                "(free some space and rerun the same command to continue)"
            ) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing, truncated or corrupt one is a `UserError` naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable or corrupt ({err})") from None


def read_metrics(path: Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl``; a corrupt line is a `UserError` naming it."""
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
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number} is not an object")
        rows.append(row)
    return rows


def load_weights(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (no code from the file runs); any failure is a
    `UserError` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as err:  # a corrupt zip, a truncated file, a forbidden global, ...
        text = str(err).strip()
        first_line = text.splitlines()[0][:200] if text else type(err).__name__
        raise UserError(
            f"{path}: unreadable checkpoint ({first_line}); move it away to start over"
        ) from None


class RunDir:
    """The files of one training run in ``path``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file: BinaryIO | None = None

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    checkpoint = property(lambda self: self.path / CHECKPOINT)

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(
            p.name not in (LOCK, ".DS_Store") for p in self.path.iterdir()
        )

    def read_config(self) -> dict:
        return read_json(self.config)

    def read_summary(self) -> dict:
        return read_json(self.summary)

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
        atomic_write(self.checkpoint, lambda f: torch.save(state, f))

    def save_snapshot(self, iteration: int, model_state: dict) -> None:
        """Keep the model's weights after ``iteration`` updates as ``snapshots/iterNNNNNNNN.pt``."""
        folder = self.path / "snapshots"
        folder.mkdir(exist_ok=True)
        atomic_write(folder / f"iter{iteration:08d}.pt", lambda f: torch.save(model_state, f))

    def snapshot_paths(self) -> list[Path]:
        """The snapshots in training order."""
        return sorted((self.path / "snapshots").glob("iter*.pt"))

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint, or None if there is none yet.

        Loaded with ``weights_only=True``: tensors, numbers, strings and containers only, so a
        planted file cannot run code.
        """
        if not self.checkpoint.exists():
            return None
        return load_weights(self.checkpoint)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock; a second process gets a `UserError` at once."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK, "a+b")  # noqa: SIM115 - held for the with-block
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().decode(errors="replace").strip() or "another process"
            f.close()
            raise UserError(
                f"{self.path}: already in use by {holder}; wait for it or stop it first"
            ) from None
        try:
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {os.uname().nodename}".encode())
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()
