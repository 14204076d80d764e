"""Tables and figures: the paper's schedules (Fig. 2) now; Table I from run directories later."""

from __future__ import annotations

from pathlib import Path

from plainnet.schedules import SCHEDULES, Schedule, paper_schedule


def schedule_rows(iters_per_epoch: int = 500, scale: float = 1.0) -> list[dict]:
    """One row per paper schedule: epochs, iterations, lr range and the epochs where it jumps."""
    rows = []
    for name in SCHEDULES:
        s = paper_schedule(name, iters_per_epoch, scale)
        rates = [s(t) for t in range(s.total_iters)]
        rows.append(
            {
                "schedule": name,
                "epochs": s.epochs,
                "iterations": s.total_iters,
                "lr_first": rates[0],
                "lr_last": rates[-1],
                "lr_min": s.lr_min,
                "lr_max": s.lr_max,
                "reached": (min(rates), max(rates)),
                "boundaries": s.boundaries,
            }
        )
    return rows


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table, aligned for reading in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def schedules_table(iters_per_epoch: int = 500, scale: float = 1.0) -> str:
    kinds = {"step": "lr drops at", "clr": "cycle ends at", "sgdr": "restarts at"}
    rows = [
        [
            r["schedule"],
            f"{r['epochs']:g}",
            f"{r['iterations']:,}",
            f"{r['lr_min']:.3g} .. {r['lr_max']:.3g}",
            f"{r['reached'][0]:.3g} .. {r['reached'][1]:.3g}",
            f"{r['lr_first']:.3g} -> {r['lr_last']:.3g}",
            f"{kinds[r['schedule']]} " + ", ".join(f"{b:g}" for b in r["boundaries"]),
        ]
        for r in schedule_rows(iters_per_epoch, scale)
    ]
    headers = ["schedule", "epochs", "iterations", "bounds", "reached", "first -> last", "epochs"]
    return format_table(headers, rows)


def plot_schedules(path: str | Path, schedules: list[Schedule] | None = None) -> Path:
    """Draw the paper's Fig. 2: learning rate against epoch, log scale, one curve a schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedules = schedules or [paper_schedule(name, 500) for name in SCHEDULES]
    labels = {"step": "SGD (He et al.)", "clr": "CLR", "sgdr": "SGDR"}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for s in schedules:
        # Plot at most ~4000 points per curve: enough for the restarts to look vertical.
        stride = max(1, s.total_iters // 4000)
        ts = [*range(0, s.total_iters, stride), s.total_iters - 1]
        ax.plot([t / s.iters_per_epoch for t in ts], [s(t) for t in ts], label=labels[s.name])
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules (paper Fig. 2)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
