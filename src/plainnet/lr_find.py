"""Smith's learning-rate range test: choose a cyclic schedule's bounds from one short run.

The CLR paper (Smith 2017, section 3.3) trains for a short while with the rate rising from a tiny
to a huge value and reads the bounds off the curve: the lower one where the loss (there: the
accuracy) starts to improve, the upper one where it "slows, becomes ragged, or starts to fall".
We ramp the rate exponentially (as fast.ai's ``lr_find`` does: every decade gets the same number
of iterations), run exactly `plainnet train`'s SGD step (`TrainStep`: same augmentation,
momentum, weight decay groups and gradient clipping), and stop once the loss has clearly blown up.

The suggestion approximates Smith's reading by eye on the smoothed loss curve (see `suggest`):
``lr_max`` is the rate at the curve's minimum, where the loss stops improving (beyond it the loss
turns ragged and climbs); ``lr_min`` is the rate where the loss starts to fall, at most
``lr_max / 4`` (Smith's rule of thumb: the lower bound 3-4x below the upper). It is a heuristic:
a fresh network tolerates lower rates in a fast ramp than later in a long schedule (the paper
trains Plain-11 with ``lr_max = 0.1``), so read the plot as well as the numbers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

from plainnet.config import TrainConfig, resolve_device, resolve_switches
from plainnet.data import ImageData, load_dataset
from plainnet.errors import UserError
from plainnet.plots import plot_lr_find
from plainnet.prepare import fit_data
from plainnet.provenance import environment
from plainnet.recipe import TrainStep, build_step
from plainnet.run_dir import write_json
from plainnet.schedules import lr_table


@dataclasses.dataclass(frozen=True)
class ExponentialRamp:
    """``lr(t) = start * (end / start) ** (t / (iters - 1))`` for ``t = 0 .. iters - 1``."""

    start: float
    end: float
    iters: int

    def __call__(self, t: float) -> float:
        return self.start * (self.end / self.start) ** (t / max(self.iters - 1, 1))


def ema_lag(beta: float) -> int:
    """How many iterations a bias-corrected EMA trails a steadily changing signal:
    ``beta / (1 - beta)`` (its mean delay), rounded."""
    return round(beta / (1 - beta))


def suggest(rates: list[float], curve: list[float]) -> dict:
    """Bounds read off the smoothed loss ``curve`` (at ``rates``) the way Smith reads his plot.

    ``lr_max`` is the rate at the curve's minimum: where the loss stops improving. ``lr_min`` is
    the rate where the loss starts to fall: the last rate before the minimum at which the curve
    is still above ``start - 0.1 * (start - minimum)`` (``start``: the median of its first
    tenth), capped at ``lr_max / 4`` (Smith's rule of thumb for the lower bound, 1/3 to 1/4 of
    the upper). Also returns the steepest-descent rate (fast.ai's pick) for comparison, and notes
    when the searched range looks too narrow.
    """
    if len(rates) < 5:
        raise UserError(
            f"the range test stopped after {len(rates)} iterations: too few to read a curve "
            "(lower --start-lr, or the model diverges at once)"
        )
    best = min(range(len(curve)), key=curve.__getitem__)
    head = sorted(curve[: max(len(curve) // 10, 1)])
    start = head[len(head) // 2]
    level = start - 0.1 * (start - curve[best])
    onset = max((i for i in range(best + 1) if curve[i] >= level), default=0)
    logs = [math.log(r) for r in rates]
    slopes = []  # d loss / d log(lr), central differences
    for i in range(len(curve)):
        lo, hi = max(i - 1, 0), min(i + 1, len(curve) - 1)
        slopes.append((curve[hi] - curve[lo]) / (logs[hi] - logs[lo]))
    steepest = min(range(best + 1), key=slopes.__getitem__)
    notes = []
    if best >= len(rates) - 2:
        notes.append("the loss was still falling at the end: rerun with a larger --end-lr")
    if onset <= 1:
        notes.append("the loss fell from the start: rerun with a smaller --start-lr")
    lr_max = rates[best]
    return {
        "lr_max": lr_max,
        "lr_min": min(rates[onset], lr_max / 4),
        "min_loss": curve[best],
        "min_loss_index": best,
        "onset_index": onset,
        "steepest_lr": rates[steepest],
        "rule": "lr_max: minimum of the smoothed loss; lr_min: where it starts to fall "
        "(at most lr_max / 4)",
        "notes": notes,
    }


def lr_find(
    cfg: TrainConfig,
    out: str | Path,
    *,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    iters: int = 200,
    beta: float = 0.9,
    diverge: float = 4.0,
    data: ImageData | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the range test for ``cfg``'s model and data; write ``lr_find.json`` and
    ``lr_find.png`` to ``out`` and return the record (rates, losses, the suggestion).

    Stops early once the smoothed loss exceeds ``diverge`` times its best value or a loss is not
    finite. ``beta`` is the factor of the loss's exponential moving average; the
    curve the suggestion reads (``curve`` against ``curve_rates``) undoes its lag (`ema_lag`).
    """
    check_options(cfg, start_lr, end_lr, iters, beta, diverge)
    device = resolve_device(cfg.device)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir)
    data, _ = fit_data(cfg, data)  # the subset, and a batch the data and the model can take
    ramp = ExponentialRamp(start_lr, end_lr, iters)
    step = ramp_step(cfg, data, device, ramp)
    t0 = time.perf_counter()
    rates, losses, smoothed, stop_reason = run_ramp(step, ramp, beta, diverge)
    seconds = time.perf_counter() - t0
    # The EMA trails the loss by `lag` iterations: pair each smoothed value with the rate of
    # the iteration it describes, so features of the curve sit at the rate that caused them.
    lag = min(ema_lag(beta), max(len(rates) - 5, 0))
    curve_rates, curve = rates[: len(rates) - lag], smoothed[lag:]
    suggestion = suggest(curve_rates, curve)
    record = {
        "config": dataclasses.asdict(cfg), "start_lr": start_lr, "end_lr": end_lr,
        "iters": iters, "iters_done": len(rates), "beta": beta, "diverge": diverge,
        "stop_reason": stop_reason, "seconds": seconds,
        "weight_decay": step.optimizer.param_groups[0]["weight_decay"],
        "train_images": len(data.train_labels), "dataset": data.name, "suggested": suggestion,
        "rates": rates, "losses": losses, "smoothed": smoothed, "lag": lag,
        "curve_rates": curve_rates, "curve": curve, "environment": environment(device),
    }  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "lr_find.json", record)
    plot_lr_find(out / "lr_find.png", record)
    log(f"{len(rates)} iterations, lr {rates[0]:.2g} .. {rates[-1]:.2g} ({stop_reason}), "
        f"{seconds:.1f} s")  # fmt: skip
    log(
        f"smoothed loss {curve[0]:.3f} -> minimum {suggestion['min_loss']:.3f} at lr "
        f"{suggestion['lr_max']:.3g}; falls from lr {curve_rates[suggestion['onset_index']]:.3g}, "
        f"steepest at lr {suggestion['steepest_lr']:.3g}"
    )
    for note in suggestion["notes"]:
        log(f"note: {note}")
    log(f"wrote {out / 'lr_find.json'} and {out / 'lr_find.png'}")
    log(suggested_line(suggestion))
    return record


def check_options(cfg, start_lr, end_lr, iters, beta, diverge) -> None:
    cfg.validate()
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise UserError(f"--start-lr {start_lr} must be positive and below --end-lr {end_lr}")
    if iters < 10:
        raise UserError(f"--iters must be at least 10, got {iters}")
    if not (0 <= beta < 1):
        raise UserError(f"--beta must be in [0, 1), got {beta}")
    if not (diverge > 1 and math.isfinite(diverge)):
        raise UserError(f"--diverge must be above 1, got {diverge}")


def ramp_step(cfg: TrainConfig, data: ImageData, device, ramp: ExponentialRamp) -> TrainStep:
    """`plainnet train`'s step for ``cfg``, its rate following ``ramp``."""
    rates = lr_table(ramp, ramp.iters, device)
    return build_step(cfg, data, device, resolve_switches(cfg, device), rates)


def run_ramp(step: TrainStep, ramp: ExponentialRamp, beta: float, diverge: float):
    """Step through the ramp, epoch after epoch of the data, reading each step's loss:
    (rates, losses, smoothed losses, why it stopped). ``smoothed`` is the bias-corrected EMA
    of the losses as it stood at each step."""
    rates: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, t = 0.0, 0
    batches = len(step.loader) // step.loader.batch_size
    step.net.train()
    for epoch in range(math.ceil(ramp.iters / batches)):  # passes over the data
        step.start_epoch(epoch, 0, t)
        for _ in step.steps(0, min(batches, ramp.iters - t)):
            loss, lr = float(step.last_loss), ramp(t)
            t += 1
            if not math.isfinite(loss):
                return rates, losses, smoothed, f"loss not finite at lr {lr:.3g}"
            rates.append(lr)
            losses.append(loss)
            avg = beta * avg + (1 - beta) * loss
            smoothed.append(avg / (1 - beta ** len(losses)))
            if smoothed[-1] > diverge * min(smoothed):
                reason = f"smoothed loss above {diverge:g}x its best at lr {lr:.3g}"
                return rates, losses, smoothed, reason
    return rates, losses, smoothed, "end of range"


def suggested_line(suggestion: dict) -> str:
    """The line to copy into `plainnet train`."""
    return f"suggested --lr-min {suggestion['lr_min']:.2g} --lr-max {suggestion['lr_max']:.2g}"
