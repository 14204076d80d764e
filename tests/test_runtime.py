"""What a run needs from its process: stop requests, and what a terminal shows."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from plainnet.runtime import Progress, StopRequest, determinism, duration, sigterm_as_interrupt


def test_stop_request_repeats():
    """A repeated SIGTERM is the same request (`timeout` sends two); a second Ctrl-C stops at
    once. Each signal here is handled before the next is sent."""
    with StopRequest() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pytest.fail("a repeated SIGTERM stopped the run at once")
        assert stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_a_late_repeat_of_sigterm_cannot_kill_a_command(monkeypatch):
    """A command's SIGTERM outside the loop is an interrupt (exit 130, not 143), and a repeat
    after a stop request, while the run saves its state, is ignored."""
    import plainnet.runtime as runtime

    monkeypatch.setattr(runtime, "_stop_requested", runtime.threading.Event())
    with sigterm_as_interrupt():
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signal == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second one a moment later: ignored
        runtime._stop_requested.clear()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # outside any loop: an interrupt
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a library call leaves no trace


def test_determinism_is_for_one_run():
    assert not torch.are_deterministic_algorithms_enabled()
    with determinism(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


class Terminal:
    """A stand-in for stderr on a terminal that records what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_progress_shows_rate_loss_and_the_runs_eta():
    term = Terminal()
    bar = Progress(True, run_steps=40, batch_size=100, stream=term)
    bar.start_epoch(1, 4, 0, 10, 0)
    for _ in range(5):
        time.sleep(0.11)
        bar.show(2.345, 0.05)
        bar.step()
    bar.end_epoch()
    last = [part for part in term.text.split("\r") if "epoch" in part][-1]
    assert "epoch 1/4" in last and "5/10" in last and "loss 2.345" in last, last
    assert "lr 5.00e-02" in last and re.search(r"run ETA 0?:0\d|run ETA \d s", last), last
    assert re.search(r"\d+ img/s", last) and "00:0" in last  # elapsed time
    off = Terminal()
    off.isatty = lambda: False
    quiet = Progress(True, run_steps=40, batch_size=100, stream=off)
    quiet.start_epoch(1, 4, 0, 10, 0)
    quiet.step()
    quiet.end_epoch()
    assert off.text == ""  # off a terminal: nothing but the epoch lines


def test_an_epochs_first_update_shows_no_loss_of_the_epoch_before():
    """The loss and rate come from the loop's last check: a new epoch's bar shows none until
    its own first check, never the previous epoch's."""
    term = Terminal()
    bar = Progress(True, run_steps=40, batch_size=100, stream=term)
    bar.start_epoch(1, 4, 0, 10, 0)
    bar.show(2.345, 0.05)
    bar.step()
    bar.end_epoch()
    term.text = ""
    bar.start_epoch(2, 4, 0, 10, 10)
    bar.step()
    first = [part for part in term.text.split("\r") if "epoch 2/4" in part]
    assert first and all("loss" not in part and "lr " not in part for part in first), first
    time.sleep(0.6)  # past the bar's redraw interval
    bar.show(1.5, 0.01)
    bar.step()
    bar.end_epoch()
    assert "loss 1.500" in term.text


def test_duration():
    assert (duration(7.4), duration(245), duration(3723)) == ("7 s", "4:05", "1:02:03")


@pytest.mark.slow
def test_a_run_as_a_user_sees_it_on_a_terminal(cifar_factory, tmp_path):
    """Through a pseudo-terminal: a header, the bar moving within each epoch with elapsed time
    and ETAs, one line per epoch, one closing line."""
    cifar_factory.write_cifar10(tmp_path / "data", n_per_batch=200, n_test=100)
    primary, secondary = pty.openpty()
    cmd = [sys.executable, "-m", "plainnet", "train", "--model", "plain16-16|32", "--dataset",
           "cifar10", "--data-dir", str(tmp_path / "data"), "--batch-size", "10", "--epochs",
           "2", "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([primary], [], [], 60)
        try:
            data = os.read(primary, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            data = b""
        if not data:
            break
        chunks.append(data.decode(errors="replace"))
    assert proc.wait(timeout=60) == 0
    text = "".join(chunks)
    # What stays on the screen: of each line, what was drawn after its last carriage return.
    lines = [line.split("\r")[-1] for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if line.strip()]
    assert lines[0].startswith("loading cifar10")
    assert "plain16-16|32 (" in lines[1] and "2 epochs = 200 steps of 10" in lines[1]
    bars = [part for part in text.split("\r") if "epoch 1/2" in part and "step" in part]
    assert len(bars) >= 2, text  # redrawn while the epoch runs
    assert any("run ETA" in b and "img/s" in b for b in bars), bars
    assert any(line.startswith("epoch   2/2") for line in lines)
    assert lines[-1].strip().startswith("finished: final test error") and "run" in lines[-1]
