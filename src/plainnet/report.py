"""Tables and figures: the paper's schedules (Fig. 2), Table I and its claims from a grid of run
directories (`plainnet report`), and the depth/width sweep (`plainnet sweep`).

The statistics (mean, std, Welch intervals) live in `plainnet.stats`.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plainnet.errors import UserError
from plainnet.run_dir import read_json, read_metrics
from plainnet.schedules import SCHEDULES, Schedule, paper_schedule
from plainnet.stats import Interval, mean_std, welch


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


# ---- the paper's Table I and the run directories of a grid ----

PAPER_TABLE = {  # (model, schedule): (epochs, CIFAR-100 test error %, mean of 3)
    ("resnet110", "step"): (164, 26.51),
    ("resnet110", "clr"): (160, 27.78),
    ("resnet110", "sgdr"): (180, 25.98),
    ("plain11", "step"): (164, 28.48),
    ("plain11", "clr"): (160, 27.26),
    ("plain11", "sgdr"): (180, 27.09),
}
PAPER_SECONDS = {"resnet110": 175.0, "plain11": 42.0}  # per epoch, the authors' GPU (Keras)
NICE = {"plain11": "Plain-11", "resnet110": "ResNet-110"}
NOT_RUNS = ("logs", "figures", "submitit")


@dataclass
class Run:
    """What the report needs of one run directory."""

    name: str
    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)

    status = property(lambda self: self.summary.get("status", "unknown"))
    model = property(lambda self: self.summary.get("model", "?"))
    schedule = property(lambda self: self.summary.get("schedule", "?"))
    seed = property(lambda self: self.summary.get("seed"))

    @property
    def settings(self) -> dict:
        return self.config.get("config", {})

    @property
    def resolved(self) -> dict:
        return self.config.get("resolved", {})


def load_runs(out: str | Path) -> tuple[list[Run], list[tuple[str, str]]]:
    """Every run directory under ``out``, and ``(name, reason)`` for those that cannot be read.

    A directory counts as a run once it holds ``summary.json``; one without it is listed as a
    problem ("not started"), as is one whose files are corrupt. Nothing here raises for a run.
    """
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out}: no such directory")
    runs, problems = [], []
    for path in sorted(p for p in out.iterdir() if p.is_dir()):
        if path.name in NOT_RUNS or path.name.startswith("."):
            continue
        if not (path / "summary.json").exists():
            problems.append((path.name, "no summary.json (not started, or not a run directory)"))
            continue
        try:
            summary = read_json(path / "summary.json")
            if not isinstance(summary, dict):
                raise UserError(f"{path / 'summary.json'}: not a JSON object")
            config = read_json(path / "config.json") if (path / "config.json").exists() else {}
            metrics = read_metrics(path / "metrics.jsonl")
        except UserError as err:
            problems.append((path.name, str(err)))
            continue
        evaluation = {}
        if (path / "evaluation.json").exists():
            try:
                evaluation = read_json(path / "evaluation.json")
            except UserError as err:
                problems.append((path.name, f"evaluation ignored: {err}"))
        runs.append(Run(path.name, path, summary, config, metrics, evaluation))
    return runs, problems


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class Cell:
    """One (model, schedule) of the grid: its finished runs' numbers and its other runs."""

    model: str
    schedule: str
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]

    @property
    def errors(self) -> list[float]:
        return [e for r in self.finished if (e := _number(r.summary.get("test_error"))) is not None]

    @property
    def seconds(self) -> list[float]:
        vals = (_number(r.summary.get("mean_train_seconds")) for r in self.finished or self.runs)
        return [v for v in vals if v is not None]

    @property
    def ensemble_errors(self) -> list[float]:
        vals = (_number(r.evaluation.get("ensemble_test_error")) for r in self.finished)
        return [v for v in vals if v is not None]

    @property
    def epochs(self) -> int | None:
        return max((int(r.summary.get("epochs") or 0) for r in self.runs), default=None)


def _model_order(model: str) -> tuple:
    known = list(NICE)
    return (known.index(model) if model in known else len(known), model)


def cells(runs: Sequence[Run]) -> list[Cell]:
    """Runs grouped by (model, schedule), Plain-11 and ResNet-110 first, schedules in order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.model, run.schedule), []).append(run)
    order = {s: i for i, s in enumerate(SCHEDULES)}
    keys = sorted(groups, key=lambda k: (_model_order(k[0]), order.get(k[1], 99), k[1]))
    return [
        Cell(m, s, sorted(groups[m, s], key=lambda r: (r.seed is None, r.seed))) for m, s in keys
    ]


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_error(values: Sequence[float]) -> str:
    """``mean ± std (n=k)`` of test errors in %, ``–`` when there are none."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    spread = f" ± {std:.2f}" if math.isfinite(std) else ""
    return f"{mean:.2f}{spread} (n={len(values)})"


def _link(run: Run, out: Path) -> str:
    return f"[s{run.seed}]({run.path.relative_to(out).as_posix()}/)"


def _state(run: Run) -> str:
    done, total = run.summary.get("epochs_done"), run.summary.get("epochs")
    if run.status == "finished":
        return "finished"
    text = f"{run.status} (epoch {done}/{total})" if done is not None else run.status
    if run.summary.get("error"):
        text += f": {run.summary['error']}"
    return text


def table1_rows(table: Sequence[Cell], out: Path) -> list[dict]:
    """Table I's rows: architecture, time per epoch, schedule, epochs, error, paper's error."""
    rows = []
    for cell in table:
        paper = PAPER_TABLE.get((cell.model, cell.schedule))
        err_mean, err_std = mean_std(cell.errors)
        devices = sorted(
            {r.config.get("environment", {}).get("device_name", "?") for r in cell.runs}
        )
        pending = [_state(r) for r in cell.runs if r.status != "finished"]
        rows.append(
            {
                "model": cell.model,
                "architecture": NICE.get(cell.model, cell.model),
                "seconds_per_epoch": mean_std(cell.seconds)[0],
                "schedule": cell.schedule,
                "epochs": cell.epochs,
                "seeds": len(cell.errors),
                "test_error_mean": err_mean,
                "test_error_std": err_std,
                "error": fmt_error(cell.errors),
                "paper_epochs": paper[0] if paper else None,
                "paper_test_error": paper[1] if paper else None,
                "paper_seconds_per_epoch": PAPER_SECONDS.get(cell.model) if paper else None,
                "ensemble": mean_std(cell.ensemble_errors)[0] if cell.ensemble_errors else None,
                "device": "; ".join(devices),
                "runs": " ".join(_link(r, out) for r in cell.runs),
                "pending": "; ".join(pending),
            }
        )
    return rows


# ---- the paper's claims ----


@dataclass
class Claim:
    """One of the paper's claims, measured: estimate with its 95 % CI and a verdict."""

    text: str
    criterion: str
    paper: str
    measured: str
    interval: str
    verdict: str
    note: str = ""


def _errors(table: Sequence[Cell], model: str, schedule: str) -> list[float]:
    return next((c.errors for c in table if (c.model, c.schedule) == (model, schedule)), [])


def _times(table: Sequence[Cell], model: str) -> list[float]:
    return [s for c in table if c.model == model for r in c.finished for s in _seconds(r)]


def _seconds(run: Run) -> list[float]:
    value = _number(run.summary.get("mean_train_seconds"))
    return [value] if value else []


def _judge(iv: Interval, holds: Callable[[float], bool], threshold: float) -> tuple[str, str]:
    """A plain verdict from the point estimate, and a note on whether the seeds decide it."""
    verdict = "holds" if holds(iv.estimate) else "does not hold"
    if not iv.known:
        return verdict, f"too few seeds to decide (n={min(iv.n)} per configuration; need >= 2)"
    if iv.low <= threshold <= iv.high:
        return verdict, f"undecided by the seeds: the 95 % CI includes {threshold:g}"
    return verdict, "decided by the seeds (the 95 % CI excludes the threshold)"


def _ci(iv: Interval, unit: str = " pt") -> str:
    if not iv.known:
        return "–"
    return f"[{iv.low:+.2f}, {iv.high:+.2f}]{unit} (df {iv.df:.1f})"


def claims(table: Sequence[Cell]) -> list[Claim]:
    """The paper's four claims, each from the finished runs (a claim lacking runs says so)."""
    e = lambda m, s: _errors(table, m, s)  # noqa: E731 - a short local alias
    P, R = "plain11", "resnet110"
    out = []

    def add(text, criterion, paper, terms, holds, threshold, unit=" pt"):
        if any(not values for _, values in terms):
            out.append(Claim(text, criterion, paper, "–", "–", "not measured (runs missing)"))
            return
        iv = welch(terms)
        verdict, note = _judge(iv, holds, threshold)
        out.append(
            Claim(text, criterion, paper, f"{iv.estimate:+.2f}{unit}", _ci(iv, unit), verdict, note)
        )

    add(
        "Plain-11 with SGDR comes within about a point of ResNet-110 (SGDR)",
        "error(Plain-11 SGDR) - error(ResNet-110 SGDR) <= 1.5 pt",
        "27.09 - 25.98 = +1.11 pt",
        [(1, e(P, "sgdr")), (-1, e(R, "sgdr"))],
        lambda d: d <= 1.5,
        1.5,
    )
    add(
        "SGDR improves Plain-11 much more than ResNet-110",
        "(step - SGDR gain of Plain-11) - (gain of ResNet-110) > 0",
        "1.39 - 0.53 = +0.86 pt",
        [(1, e(P, "step")), (-1, e(P, "sgdr")), (-1, e(R, "step")), (1, e(R, "sgdr"))],
        lambda d: d > 0,
        0.0,
    )
    # Time: Welch on log seconds, reported back as a ratio of (geometric) means.
    tp, tr = _times(table, P), _times(table, R)
    if tp and tr:
        iv = welch([(1, [math.log(t) for t in tr]), (-1, [math.log(t) for t in tp])])
        verdict, note = _judge(iv, lambda d: d >= math.log(3), math.log(3))
        note = note.replace(f"includes {math.log(3):g}", "includes a ratio of 3")
        interval = f"[{math.exp(iv.low):.2f}, {math.exp(iv.high):.2f}] x" if iv.known else "–"
        out.append(
            Claim(
                "ResNet-110 takes about 4 times longer per epoch than Plain-11",
                "ratio of seconds per epoch >= 3",
                "175 s / 42 s = 4.2 x",
                f"{math.exp(iv.estimate):.2f} x",
                interval,
                verdict,
                note + " (times depend on the device and code, see below)",
            )
        )
    else:
        out.append(
            Claim(
                "ResNet-110 takes about 4 times longer per epoch than Plain-11",
                "ratio of seconds per epoch >= 3",
                "175 s / 42 s = 4.2 x",
                "–",
                "–",
                "not measured (runs missing)",
            )
        )
    for model, paper in ((P, "27.09 - 27.26 = -0.17 pt"), (R, "25.98 - 27.78 = -1.80 pt")):
        add(
            f"SGDR beats CLR for {NICE[model]}",
            "error(SGDR) - error(CLR) < 0",
            paper,
            [(1, e(model, "sgdr")), (-1, e(model, "clr"))],
            lambda d: d < 0,
            0.0,
        )
    return out


# ---- the report ----


def shortened(runs: Sequence[Run]) -> list[str]:
    """How these runs differ from the paper's setting (empty: the paper's full setting)."""
    reasons = set()
    for run in runs:
        cfg = run.settings
        if cfg.get("epochs") is not None or (cfg.get("scale") or 1.0) != 1.0:
            reasons.add("shortened schedules (--scale/--epochs)")
        if cfg.get("train_limit") or cfg.get("test_limit"):
            reasons.add("a subset of the data (--train-limit/--test-limit)")
        if cfg.get("dataset", "cifar100") != "cifar100":
            reasons.add(f"data set {cfg.get('dataset')} (the paper's numbers are CIFAR-100)")
        if cfg.get("batch_size", 100) != 100:
            reasons.add(f"batch size {cfg.get('batch_size')} (the paper's is 100)")
    return sorted(reasons)


def _environments(runs: Sequence[Run]) -> list[list[str]]:
    envs: dict[tuple, list[str]] = {}
    keys = ("plainnet", "git_commit", "torch", "python", "device_name", "hostname")
    for run in runs:
        env = run.config.get("environment", {})
        envs.setdefault(tuple(str(env.get(k, "?")) for k in keys), []).append(run.name)
    return [[*key, str(len(names))] for key, names in envs.items()]


def _report_environment() -> dict:
    import torch

    import plainnet
    from plainnet.train import environment

    env = environment(torch.device("cpu"))
    return {
        "plainnet": plainnet.__version__,
        "git_commit": env["git_commit"],
        "torch": torch.__version__,
    }


def render_report(out: Path, runs: Sequence[Run], problems: Sequence[tuple[str, str]]) -> str:
    """``report.md``: Table I beside the paper's, the claims with CIs, runs, provenance."""
    table = cells(runs)
    rows = table1_rows(table, out)
    lines = ["# Table I: Plain-11 vs ResNet-110", ""]
    reasons = shortened(runs)
    if reasons:
        lines += [
            "> **Not the paper's setting**: these runs use " + "; ".join(reasons) + ". They show "
            "the method at work; they do not reproduce the paper's numbers, and the verdicts "
            "below are about these runs only. The paper's column is CIFAR-100, full length.",
            "",
        ]
    headers = ["architecture", "s / epoch", "schedule", "epochs", "test error % (mean ± std)"]
    headers += ["paper (CIFAR-100)", "snapshot ensemble", "runs", "not finished"]
    body = [
        [
            r["architecture"],
            fmt(r["seconds_per_epoch"], 1),
            r["schedule"].upper() if r["schedule"] != "step" else "step",
            f"{r['epochs']}" if r["epochs"] else "–",
            r["error"],
            fmt(r["paper_test_error"])
            + (f" ({r['paper_epochs']} ep.)" if r["paper_epochs"] else ""),
            fmt(r["ensemble"]) if r["schedule"] != "step" else "",
            r["runs"],
            r["pending"] or "",
        ]
        for r in rows
    ]
    devices = sorted({r["device"] for r in rows})
    lines += [format_table(headers, body) if body else "(no runs yet)", ""]
    lines += [
        "Test error: the FINAL epoch's, mean ± sample std over the finished seeds. s / epoch: "
        "mean training seconds per epoch, first epoch excluded, measured on "
        + (" / ".join(devices) or "–")
        + "; the paper's were 42 s (Plain-11) and 175 s (ResNet-110) on the authors' GPU. "
        "Snapshot ensemble: from `plainnet evaluate RUN --ensemble` (evaluation.json), if run.",
        "",
        "## The paper's claims",
        "",
        "Differences in test-error points, with Welch's 95 % confidence interval over the seeds.",
        "",
    ]
    claim_rows = [
        [c.text, c.criterion, c.paper, c.measured, c.interval, c.verdict, c.note]
        for c in claims(table)
    ]
    lines += [
        format_table(
            ["claim", "criterion", "paper", "measured", "95 % CI", "verdict", "note"], claim_rows
        ),
        "",
    ]
    if reasons:
        lines += [
            "(Verdicts on shortened or non-CIFAR-100 runs do not test the paper's numbers.)",
            "",
        ]
    lines += ["## Figures", ""]
    for name, title in FIGURES.items():
        if (out / "figures" / name).exists():
            lines += [f"![{title}](figures/{name})", ""]
    lines += ["## Runs", ""]
    run_rows = [
        [
            f"[{r.name}]({r.name}/)",
            _state(r),
            f"{r.summary.get('epochs_done', '–')}/{r.summary.get('epochs', '–')}",
            fmt(_number(r.summary.get("test_error"))),
            fmt(_number(r.summary.get("best_test_error"))),
            fmt(_number(r.summary.get("mean_train_seconds")), 1),
        ]
        for r in runs
    ]
    headers = ["run", "status", "epochs", "final test error %", "best %", "s / epoch"]
    lines += [format_table(headers, run_rows) if run_rows else "(none)", ""]
    if problems:
        lines += ["### Unreadable or unstarted directories", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in problems] + [""]
    lines += ["## Provenance", ""]
    commands = out / "commands.txt"
    if commands.exists():
        lines += ["Grid commands run in this directory:", "", "```"]
        lines += [*commands.read_text().strip().splitlines(), "```", ""]
    env = _report_environment()
    lines += [
        f"Report written by `{' '.join(['plainnet', *sys.argv[1:]]) if sys.argv else 'plainnet report'}` "
        f"(plainnet {env['plainnet']}, git {env['git_commit'] or '?'}, torch {env['torch']}).",
        "",
        "The runs behind the numbers (each run's config.json holds its full configuration):",
        "",
    ]
    headers = ["plainnet", "git commit", "torch", "python", "device", "host", "runs"]
    lines += [format_table(headers, _environments(runs)) if runs else "(none)", ""]
    return "\n".join(lines)


def write_table1_csv(path: Path, rows: Sequence[dict]) -> None:
    keys = [
        "model", "schedule", "epochs", "seeds", "test_error_mean", "test_error_std",
        "paper_test_error", "seconds_per_epoch", "paper_seconds_per_epoch", "ensemble", "device",
    ]  # fmt: skip
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "runs"])
        for r in rows:
            cells_ = [r[k] for k in keys]
            writer.writerow(
                ["" if isinstance(v, float) and not math.isfinite(v) else v for v in cells_]
                + [r["runs"]]
            )


FIGURES = {
    "lr_schedules.png": "Learning-rate schedules of these runs (paper Fig. 2)",
    "test_error.png": "Test error against epoch (mean over seeds, band: ± std)",
    "epoch_time.png": "Training time per epoch",
}


def write_report(out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write ``report.md``, ``table1.csv`` and ``figures/*.png`` for the grid in ``out``; print
    the report. Unreadable runs are listed in it, never fatal."""
    out = Path(out)
    runs, problems = load_runs(out)
    table = cells(runs)
    (out / "figures").mkdir(exist_ok=True)
    if runs:
        plot_run_schedules(out / "figures" / "lr_schedules.png", runs)
        plot_test_error(out / "figures" / "test_error.png", table)
        plot_epoch_time(out / "figures" / "epoch_time.png", table)
    text = render_report(out, runs, problems)
    (out / "report.md").write_text(text)
    write_table1_csv(out / "table1.csv", table1_rows(table, out))
    log(text)
    log(f"wrote {out / 'report.md'}, {out / 'table1.csv'} and {out / 'figures'}/")
    return out / "report.md"


# ---- figures ----


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_run_schedules(path: Path, runs: Sequence[Run]) -> Path:
    """Fig. 2 for the schedules as these runs ran them (their length and iterations/epoch)."""
    from plainnet.train import PAPER_EPOCHS

    seen = {}
    for run in runs:
        cfg, res = run.settings, run.resolved
        if run.schedule in SCHEDULES and run.schedule not in seen and res.get("iters_per_epoch"):
            scale = (
                cfg["epochs"] / PAPER_EPOCHS[run.schedule]
                if cfg.get("epochs")
                else cfg.get("scale", 1.0)
            )
            seen[run.schedule] = paper_schedule(
                run.schedule,
                res["iters_per_epoch"],
                scale,
                epochwise_sgdr=cfg.get("epochwise_sgdr", False),
                lr_min=cfg.get("lr_min"),
                lr_max=cfg.get("lr_max"),
            )
    order = [seen[s] for s in SCHEDULES if s in seen]
    return plot_schedules(path, order or None)


def _curves(cell: Cell) -> tuple[list[int], list[float], list[float]]:
    """Epochs and mean/std of the test error over the seeds that reached each epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in cell.runs:
        for row in run.metrics:
            value = _number(row.get("test_error"))
            if value is not None and isinstance(row.get("epoch"), int):
                by_epoch.setdefault(row["epoch"], []).append(value)
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [s if math.isfinite(s) else 0.0 for _, s in stats]


def plot_test_error(path: Path, table: Sequence[Cell]) -> Path:
    """Test error against epoch, one panel per network, one curve per schedule."""
    plt = _pyplot()
    models = list(dict.fromkeys(c.model for c in table))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for cell in (c for c in table if c.model == model):
            epochs, mean, std = _curves(cell)
            if not epochs:
                continue
            line = ax.plot(epochs, mean, label=f"{cell.schedule} (n={len(cell.runs)})")[0]
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(NICE.get(model, model))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_epoch_time(path: Path, table: Sequence[Cell]) -> Path:
    """Mean training seconds per epoch, one bar per (network, schedule)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    labels = [f"{NICE.get(c.model, c.model)}\n{c.schedule}" for c in table]
    values = [mean_std(c.seconds)[0] if c.seconds else 0.0 for c in table]
    colors = [f"C{list(dict.fromkeys(x.model for x in table)).index(c.model)}" for c in table]
    bars = ax.bar(range(len(table)), values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom"
        )
    ax.set_xticks(range(len(table)), labels, fontsize=8)
    ax.set_ylabel("seconds per epoch")
    ax.set_title("Training time per epoch")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# ---- the sweep ----


def sweep_rows(out: Path, specs: Sequence) -> list[dict]:
    """One row per sweep point (family, depth, width): error and time over its seeds."""
    from plainnet.models import build_model, trainable_layers

    points: dict[tuple, list] = {}
    for spec in specs:
        family = "ResNet" if spec.model.startswith("resnet") else "plain"
        width = spec.width_mult if spec.width_mult is not None else 1.0
        points.setdefault((family, spec.model, width), []).append(spec)
    rows = []
    for (family, model, width), group in points.items():
        summaries = []
        for spec in group:
            try:
                summaries.append(read_json(out / spec.name / "summary.json"))
            except UserError:
                summaries.append({"status": "missing"})
        done = [s for s in summaries if s.get("status") == "finished"]
        errors = [e for s in done if (e := _number(s.get("test_error"))) is not None]
        seconds = [t for s in done if (t := _number(s.get("mean_train_seconds"))) is not None]
        net = build_model(model, 10, width_mult=width)
        mean, std = mean_std(errors)
        rows.append(
            {
                "family": family,
                "depth": trainable_layers(net),
                "width_mult": width,
                "model": model,
                "parameters": next((s["parameters"] for s in done if "parameters" in s), None),
                "test_error_mean": mean,
                "test_error_std": std,
                "seeds": len(errors),
                "seconds_per_epoch": mean_std(seconds)[0],
                "status": ", ".join(sorted({s.get("status", "?") for s in summaries})),
                "runs": " ".join(spec.name for spec in group),
            }
        )
    return sorted(rows, key=lambda r: (r["family"] != "plain", r["width_mult"], r["depth"]))


def plot_sweep(path: Path, rows: Sequence[dict]) -> Path:
    """Test error and time per epoch against depth: a line per plain width, one for ResNets."""
    plt = _pyplot()
    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    series: dict[str, list[dict]] = {}
    for r in rows:
        key = f"plain x{r['width_mult']:g}" if r["family"] == "plain" else "ResNet"
        series.setdefault(key, []).append(r)
    for key, points in series.items():
        pts = [
            p
            for p in sorted(points, key=lambda p: p["depth"])
            if math.isfinite(p["test_error_mean"])
        ]
        if not pts:
            continue
        depth = [p["depth"] for p in pts]
        std = [p["test_error_std"] if math.isfinite(p["test_error_std"]) else 0.0 for p in pts]
        style = "s--" if key == "ResNet" else "o-"
        ax_err.errorbar(
            depth, [p["test_error_mean"] for p in pts], yerr=std, fmt=style, label=key, capsize=3
        )
        ax_time.plot(depth, [p["seconds_per_epoch"] for p in pts], style, label=key)
    for ax, ylabel in ((ax_err, "final test error (%)"), (ax_time, "seconds per epoch")):
        ax.set_xscale("log")
        ax.set_xlabel("depth (trainable layers, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_err.set_title("Is depth needed? Test error")
    ax_time.set_title("Time per epoch")
    return _save(fig, path)


def write_sweep_report(
    out: str | Path, specs: Sequence, log: Callable[[str], None] = print
) -> Path:
    """Write ``sweep.md``, ``sweep.csv`` and ``sweep.png`` for the sweep's runs in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep_rows(out, specs)
    headers = [
        "family",
        "depth",
        "width x",
        "parameters",
        "test error %",
        "s / epoch",
        "status",
        "runs",
    ]
    body = [
        [
            r["family"],
            str(r["depth"]),
            f"{r['width_mult']:g}",
            f"{r['parameters']:,}" if r["parameters"] else "–",
            fmt_error([r["test_error_mean"]] * 0)
            if not r["seeds"]
            else f"{r['test_error_mean']:.2f}"
            + (f" ± {r['test_error_std']:.2f}" if math.isfinite(r["test_error_std"]) else "")
            + f" (n={r['seeds']})",
            fmt(r["seconds_per_epoch"], 1),
            r["status"],
            " ".join(f"[{n}]({n}/)" for n in r["runs"].split()),
        ]
        for r in rows
    ]
    plot_sweep(out / "sweep.png", rows)
    text = "\n".join(
        [
            "# Depth and width sweep",
            "",
            "Final-epoch test error and training seconds per epoch against depth (trainable "
            "layers). Plain networks keep Plain-11's four blocks (64/128/256/512 channels x "
            "width) and scale its 2-3-3-1 conv units to the depth; ResNets are the CIFAR ResNets "
            "(6n+2 layers).",
            "",
            format_table(headers, body),
            "",
            "![sweep](sweep.png)",
            "",
        ]
    )
    (out / "sweep.md").write_text(text)
    keys = ["family", "depth", "width_mult", "model", "parameters", "test_error_mean"]
    keys += ["test_error_std", "seeds", "seconds_per_epoch", "status", "runs"]
    with open(out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: "" if isinstance(r[k], float) and not math.isfinite(r[k]) else r[k]
                    for k in keys
                }
            )
    log(text)
    log(f"wrote {out / 'sweep.md'}, {out / 'sweep.csv'} and {out / 'sweep.png'}")
    return out / "sweep.md"
