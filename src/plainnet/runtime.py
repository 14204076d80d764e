"""What a run needs from the process around it: stop requests (signals), determinism for one
run, the generators' states for an exact resume, and the progress shown on a terminal."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so a checkpoint is only ever
    taken between two complete updates (a KeyboardInterrupt could land halfway through one).

    A second SIGINT (Ctrl-C pressed again) stops at once. A repeated SIGTERM does not: senders
    send it more than once for one request (`timeout` signals the process and then its process
    group), and they escalate with SIGKILL themselves; `sigterm_as_interrupt`'s handler also
    ignores a repeat that arrives after the loop, while the run saves its state.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread (not in a notebook worker).
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            return
        self.signal = signum
        _stop_requested.set()
        sys.stderr.write(
            "\nplainnet: stopping after the current step and saving a checkpoint"
            + (" (Ctrl-C again to stop at once)\n" if signum == signal.SIGINT else "\n")
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


_stop_requested = threading.Event()  # a stop was asked for in this process


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For a command: SIGTERM outside the training loop stops it like Ctrl-C (exit 130, the
    last checkpoint stands) instead of killing it where it stands (exit 143); a SIGTERM after
    a stop was requested is a repeat of that request and is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_interrupt(signum: int, frame: Any) -> None:
    if _stop_requested.is_set():
        return
    _stop_requested.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def on_forced_stop(action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` if a KeyboardInterrupt (a second Ctrl-C) leaves the block, then let it
    go on."""
    try:
        yield
    except KeyboardInterrupt:
        action()
        raise


@contextlib.contextmanager
def determinism(deterministic: bool) -> Iterator[None]:
    """``--deterministic`` for this run only: torch's switches are process-global, and a
    deterministic run must not leave the runs after it in the same process deterministic."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def duration(seconds: float) -> str:
    """``1:02:03``, ``4:05`` or ``7 s``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """The epoch's progress bar on a terminal (stderr): steps, elapsed time and the epoch's
    ETA (tqdm), images/s, the loss and rate of the last check, and the whole run's ETA. Off the
    terminal it shows nothing: the loop's one line per epoch remains.

    tqdm rather than hand-written code: it keeps the line to the terminal's width, rate-limits
    redraws (here at most every 0.5 s, and every step is an update, so the bar moves at least
    every 2 s whenever a step takes less) and formats its times.
    """

    def __init__(self, enabled: bool, run_steps: int, batch_size: int, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.run_steps, self.batch_size = run_steps, batch_size
        self.done = 0  # steps of this run so far, for the run's ETA
        self._bar = None
        self._start, self._timed, self._numbers = time.perf_counter(), 0, ""

    def start_epoch(self, epoch: int, epochs: int, first: int, steps: int, done: int) -> None:
        self.done = done
        self._numbers = ""  # the last epoch's loss and rate are not this one's
        if not self.enabled:
            return
        from tqdm import tqdm

        # A terminal that reports no width (a bare pseudo-terminal) would get an empty bar.
        width = {"dynamic_ncols": True} if _columns(self.stream) else {"ncols": 110, "nrows": 20}
        self._bar = tqdm(
            total=steps, initial=first, desc=f"epoch {epoch}/{epochs}", unit="step",
            leave=False, file=self.stream, mininterval=0.5, **width,
        )  # fmt: skip
        self._start, self._timed = time.perf_counter(), 0

    def step(self) -> None:
        self.done += 1
        self._timed += 1
        if self._bar is None:
            return
        seconds = time.perf_counter() - self._start
        rate = self._timed / seconds if seconds > 0 else 0.0
        left = duration((self.run_steps - self.done) / rate) if rate > 0 else "?"
        self._bar.set_postfix_str(
            f"{rate * self.batch_size:,.0f} img/s{self._numbers}, run ETA {left}", refresh=False
        )
        self._bar.update()
        if self._timed == 1:  # at once the rate and ETAs, not only after the first interval
            self._bar.refresh()

    def show(self, loss: float, lr: float) -> None:
        """The numbers of the loop's last check (they need a read from the device)."""
        self._numbers = f", loss {loss:.3f}, lr {lr:.2e}"

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
