"""Every figure plainnet draws, from plain numbers, saved one way (`save`: atomically, in the
format the file name asks for)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from plainnet.errors import UserError
from plainnet.run_dir import atomic_write, make_folder
from plainnet.schedules import SCHEDULES, Schedule, paper_schedule

SCHEDULE_LABELS = {"step": "SGD (He et al.)", "clr": "CLR", "sgdr": "SGDR"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix: png, pdf, svg, ...) atomically."""
    path = Path(path)
    kind = path.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if kind not in supported:
        pyplot().close(fig)
        raise UserError(f"{path}: cannot draw a .{kind} file; use one of {', '.join(supported)}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, dpi=dpi)
    pyplot().close(fig)
    make_folder(path.parent)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return path


def plot_schedules(path: str | Path, schedules: Sequence[Schedule] | None = None) -> Path:
    """The paper's Fig. 2: learning rate against epoch, log scale, one curve a schedule."""
    plt = pyplot()
    schedules = schedules or [paper_schedule(name, 500) for name in SCHEDULES]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for s in schedules:
        # At most ~4000 points per curve: enough for the restarts to look vertical.
        stride = max(1, s.total_iters // 4000)
        ts = [*range(0, s.total_iters, stride), s.total_iters - 1]
        ax.plot(
            [t / s.iters_per_epoch for t in ts], [s(t) for t in ts], label=SCHEDULE_LABELS[s.name]
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules (paper Fig. 2)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save(fig, path, dpi=120)


def plot_lr_find(path: str | Path, record: dict) -> Path:
    """Loss against learning rate (log scale): raw losses faint, smoothed bold, the bounds."""
    plt = pyplot()
    s = record["suggested"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(record["rates"], record["losses"], color="C0", alpha=0.3, lw=1, label="loss per batch")
    ax.plot(record["curve_rates"], record["curve"], color="C0", lw=2, label="smoothed loss")
    ax.axvline(s["lr_max"], color="C3", ls="--", label=f"suggested lr_max {s['lr_max']:.2g}")
    ax.axvline(s["lr_min"], color="C2", ls="--", label=f"suggested lr_min {s['lr_min']:.2g}")
    ax.plot([s["lr_max"]], [s["min_loss"]], "ko", label="minimum of the smoothed loss")
    ax.set_xscale("log")
    # Keep the blow-up at the end from squashing the interesting part of the curve.
    top = max(record["curve"][: s["min_loss_index"] + 1]) * 1.15
    ax.set_ylim(min(record["losses"]) * 0.9, max(top, s["min_loss"] * 1.5))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {record['config']['model']} on {record['dataset']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


Curve = tuple[str, Sequence[float], Sequence[float], Sequence[float]]  # label, x, mean, std


def plot_curves(path: str | Path, panels: dict[str, Sequence[Curve]], xlabel: str, ylabel: str):
    """One panel per title, one line per curve with a band of ± its std."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for label, x, mean, std in curves:
            line = ax.plot(x, mean, label=label)[0]
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def plot_bars(
    path: str | Path, labels: Sequence[str], values: Sequence[float], groups: Sequence[int], *,
    ylabel: str, title: str,
) -> Path:  # fmt: skip
    """A bar per label, annotated with its value, coloured by group."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.4))
    bars = ax.bar(range(len(labels)), values, color=[f"C{g}" for g in groups])
    for bar, value in zip(bars, values, strict=True):
        x = bar.get_x() + bar.get_width() / 2
        ax.annotate(f"{value:.1f}", (x, value), ha="center", va="bottom")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, path)


Series = tuple[str, Sequence[float], Sequence[float], Sequence[float], Sequence[float]]


def plot_sweep(path: str | Path, series: Sequence[Series]) -> Path:
    """Test error (± std) and time per epoch against depth: one line per (label, depths,
    error means, error stds, seconds per epoch); ResNets dashed."""
    plt = pyplot()
    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, depth, error, std, seconds in series:
        style = "s--" if label == "ResNet" else "o-"
        ax_err.errorbar(depth, error, yerr=std, fmt=style, label=label, capsize=3)
        ax_time.plot(depth, seconds, style, label=label)
    for ax, ylabel in ((ax_err, "final test error (%)"), (ax_time, "seconds per epoch")):
        ax.set_xscale("log")
        ax.set_xlabel("depth (trainable layers, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_err.set_title("Is depth needed? Test error")
    ax_time.set_title("Time per epoch")
    return save(fig, path)
