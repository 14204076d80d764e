"""`plainnet report`: Table I beside the paper's, the paper's claims with confidence intervals,
figures and provenance, from a grid of run directories.

A row of the table (a `plainnet.grid.Cell`) holds the runs of one configuration but the
seed; runs of another configuration, another variant of the recipe say, are another row, and
the report names what differs. The paper's numbers live in `plainnet.paper`, its claims in
`plainnet.claims` (one table per variant: `plainnet.variants`), statistics in `plainnet.stats`,
tables in `plainnet.tables`, figures in `plainnet.plots`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from plainnet.claims import Claim, claims
from plainnet.config import TrainConfig, upgrade
from plainnet.grid import NICE, Cell, Run, cells, finite_number, load_runs
from plainnet.paper import PAPER_SECONDS, PAPER_TABLE
from plainnet.plots import plot_bars, plot_curves, plot_schedules
from plainnet.recipe import schedule_for
from plainnet.schedules import SCHEDULES, Schedule, paper_epochs
from plainnet.stats import mean_std
from plainnet.tables import MISSING, error_text, fmt, format_table, write_csv, write_text
from plainnet.variants import variants

FIGURES = {
    "lr_schedules.png": "Learning-rate schedules of these runs (paper Fig. 2)",
    "test_error.png": "Test error against epoch (mean over seeds, band: ± std)",
    "epoch_time.png": "Training time per epoch",
}


def _state(run: Run) -> str:
    done, total = run.summary.get("epochs_done"), run.summary.get("epochs")
    if run.status == "finished":
        return "finished"
    text = f"{run.status} (epoch {done}/{total})" if done is not None else run.status
    if run.summary.get("error"):
        text += f": {run.summary['error']}"
    return text


def table1_rows(table: Sequence[Cell]) -> list[dict]:
    """Table I's rows: architecture, time per epoch, schedule, epochs, error, paper's error."""
    rows = []
    for cell in table:
        paper = PAPER_TABLE.get((cell.model, cell.schedule))
        err_mean, err_std = mean_std(cell.errors)
        env = (r.config.get("environment", {}) for r in cell.runs)
        rows.append(
            {
                "model": cell.model,
                "architecture": NICE.get(cell.model, cell.model),
                "schedule": cell.schedule,
                "variant": cell.label,
                "differs": cell.differs,
                "epochs": cell.epochs,
                "seeds": len(cell.errors),
                "test_error_mean": err_mean,
                "test_error_std": err_std,
                "error": error_text(cell.errors),
                "paper_epochs": round(paper_epochs(cell.schedule)) if paper else None,
                "paper_test_error": paper,
                "seconds_per_epoch": mean_std(cell.seconds)[0],
                "paper_seconds_per_epoch": PAPER_SECONDS.get(cell.model) if paper else None,
                "ensemble": mean_std(cell.ensemble_errors)[0] if cell.ensemble_errors else None,
                "device": "; ".join(sorted({e.get("device_name", "?") for e in env})),
                "runs": [r.name for r in cell.runs],
                "pending": "; ".join(_state(r) for r in cell.runs if r.status != "finished"),
            }
        )
    return rows


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


def write_report(out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write ``report.md``, ``table1.csv`` and the figures the runs give (``figures/*.png``)
    for the grid in ``out``; print the report and what was written. Unreadable runs are listed
    in it, never fatal."""
    out = Path(out)
    runs, problems = load_runs(out)
    table = cells(runs)
    figures = plot_figures(out / "figures", runs, table)
    text = render_report(out, runs, problems, table)
    written = [write_text(out / "report.md", text)]
    written.append(write_table1_csv(out / "table1.csv", table1_rows(table)))
    log(text)
    names = [str(p) for p in written + figures]
    log(f"wrote {', '.join(names[:-1])} and {names[-1]}")
    return out / "report.md"


def write_table1_csv(path: Path, rows: Sequence[dict]) -> Path:
    """Table I as plain values: numbers rounded, run directories as names (no Markdown)."""
    keys = [
        "model", "schedule", "variant", "differs", "epochs", "seeds", "test_error_mean",
        "test_error_std", "paper_test_error", "seconds_per_epoch", "paper_seconds_per_epoch",
        "ensemble", "device",
    ]  # fmt: skip
    body = [[r[k] for k in keys] + [" ".join(r["runs"])] for r in rows]
    return write_csv(path, [*keys, "runs"], body)


def plot_figures(folder: Path, runs: Sequence[Run], table: Sequence[Cell]) -> list[Path]:
    """The schedules as the runs ran them, test error against epoch, time per epoch: each
    figure that the runs give data for (none without runs). Returns the files written."""
    written = []
    seen = {}
    for run in runs:
        if run.schedule in SCHEDULES and run.schedule not in seen:
            schedule = schedule_of(run)
            if schedule is not None:
                seen[run.schedule] = schedule
    if seen:  # not the paper's schedules in their place: the figure says "of these runs"
        schedules = [seen[s] for s in SCHEDULES if s in seen]
        written.append(plot_schedules(folder / "lr_schedules.png", schedules))
    panels: dict[str, list] = {}
    for cell in table:
        epochs, mean, std = curves(cell)
        if epochs:
            label = f"{cell.label} (n={len(cell.runs)})"
            panels.setdefault(NICE.get(cell.model, cell.model), []).append(
                (label, epochs, mean, std)
            )
    if panels:
        written.append(plot_curves(folder / "test_error.png", panels, "epoch", "test error (%)"))
    if any(c.seconds for c in table):
        written.append(plot_epoch_times(folder / "epoch_time.png", table))
    return written


def plot_epoch_times(path: Path, table: Sequence[Cell]) -> Path:
    """Mean seconds per epoch of each row of the table (0 for a row without a time yet)."""
    models = list(dict.fromkeys(c.model for c in table))
    labels = [f"{NICE.get(c.model, c.model)}\n{c.label}" for c in table]
    values = [mean_std(c.seconds)[0] if c.seconds else 0.0 for c in table]
    return plot_bars(
        path, labels, values, [models.index(c.model) for c in table],
        ylabel="seconds per epoch", title="Training time per epoch",
    )  # fmt: skip


def schedule_of(run: Run) -> Schedule | None:
    """The learning rate ``run`` trained with (`schedule_for` of its stored configuration, as
    training built it), or None if its record cannot tell."""
    stored, ipe = run.config.get("config"), run.resolved.get("iters_per_epoch")
    if not isinstance(stored, dict) or not isinstance(ipe, int) or ipe < 1:
        return None
    try:
        return schedule_for(TrainConfig(**upgrade(stored)), ipe, run.resolved.get("world_size", 1))
    except (TypeError, ValueError):  # a damaged record: no curve rather than no report
        return None


def curves(cell: Cell) -> tuple[list[int], list[float], list[float]]:
    """Epochs and mean/std of the test error over the seeds that reached each epoch."""
    by_epoch: dict[int, list[float]] = {}
    for run in cell.runs:
        for row in run.metrics:
            value = finite_number(row.get("test_error"))
            if value is not None and isinstance(row.get("epoch"), int):
                by_epoch.setdefault(row["epoch"], []).append(value)
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [s if math.isfinite(s) else 0.0 for _, s in stats]


def render_report(
    out: Path, runs: Sequence[Run], problems: Sequence[tuple[str, str]], table: Sequence[Cell]
) -> str:
    """``report.md``: Table I beside the paper's, the claims with CIs, runs, provenance."""
    lines = ["# Table I: Plain-11 vs ResNet-110", "", *failures(runs)]
    reasons = shortened(runs)
    if reasons:
        lines += [
            "> **Not the paper's setting**: these runs use " + "; ".join(reasons) + ". They show "
            "the pipeline at work; their numbers and verdicts do not test the paper's, which "
            "is CIFAR-100, full length.",
            "",
        ]
    rows = table1_rows(table)
    differ = any(r["differs"] for r in rows)
    headers = ["architecture", "s / epoch", "schedule", "epochs", "test error % (mean ± std)"]
    headers += ["paper (CIFAR-100)", "snapshot ensemble", "runs", "not finished"]
    headers += ["differs in"] if differ else []
    body = []
    for r in rows:
        paper = fmt(r["paper_test_error"]) + (
            f" ({r['paper_epochs']} ep.)" if r["paper_epochs"] else ""
        )
        body.append(
            [r["architecture"], fmt(r["seconds_per_epoch"], 1), r["variant"],
             str(r["epochs"] or MISSING), r["error"], paper,
             fmt(r["ensemble"]) if r["schedule"] != "step" else "",
             " ".join(_link(name) for name in r["runs"]), r["pending"]]
            + ([r["differs"]] if differ else [])
        )  # fmt: skip
    devices = sorted({r["device"] for r in rows})
    lines += [format_table(headers, body) if body else "(no runs yet)", ""]
    lines += [
        "Test error: the FINAL epoch's, mean ± sample std over the finished seeds; seeds are "
        "pooled only when everything else in their configuration is equal"
        + (' ("differs in" names what sets rows apart)' if differ else "")
        + ". s / epoch: mean training seconds per epoch, first epoch excluded, measured on "
        + (" / ".join(devices) or MISSING)
        + "; the paper's were 42 s (Plain-11) and 175 s (ResNet-110) on the authors' GPU. "
        "Snapshot ensemble: from `plainnet evaluate RUN --ensemble` (evaluation.json), if run.",
        "",
    ]
    lines += claims_section(table, bool(reasons))
    lines += ["## Figures", ""]
    lines += [f"![{t}](figures/{n})" for n, t in FIGURES.items() if (out / "figures" / n).exists()]
    lines += ["", "## Runs", ""]
    run_rows = [
        [_link(r.name), _state(r),
         f"{r.summary.get('epochs_done', MISSING)}/{r.summary.get('epochs', MISSING)}",
         fmt(finite_number(r.summary.get("test_error"))), fmt(finite_number(r.summary.get("best_test_error"))),
         fmt(finite_number(r.summary.get("mean_train_seconds")), 1)]
        for r in runs
    ]  # fmt: skip
    headers = ["run", "status", "epochs", "final test error %", "best %", "s / epoch"]
    lines += [format_table(headers, run_rows) if run_rows else "(none)", ""]
    if problems:
        lines += ["### Unreadable or unstarted directories", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in problems] + [""]
    return "\n".join(lines + provenance(out, runs))


def failures(runs: Sequence[Run], shown: int = 3) -> list[str]:
    """At the report's top: how many runs failed, and why (the first few)."""
    failed = [r for r in runs if r.status == "failed"]
    if not failed:
        return []
    why = "; ".join(f"`{r.name}`: {r.summary.get('error') or 'no reason recorded'}"
                    for r in failed[:shown])  # fmt: skip
    more = f"; and {len(failed) - shown} more" if len(failed) > shown else ""
    return [f"> **{len(failed)} of {len(runs)} runs failed**: {why}{more} (see Runs).", ""]


def _link(name: str) -> str:
    return f"[{name}]({name}/)"


def claims_section(table: Sequence[Cell], shortened_runs: bool) -> list[str]:
    """The paper's claims, one table per variant of the recipe present in the grid."""
    lines = ["## The paper's claims", ""]
    lines += [
        "Each comparison the paper makes, tested on the final test errors: differences of "
        "mean errors in points, or relative changes of the error (Welch on log errors: a "
        "ratio of geometric means, with the difference of means in points beside it), and "
        "speed per epoch from runs on one device. 95 % CI: Welch's, over the seeds. "
        "Threshold: *paper's direction* where the paper states which is better; *ours* "
        'where it says "about" and gives no number. A verdict is the point estimate\'s; '
        "the seeds decide it when the CI excludes the threshold. Paper in CI: whether the "
        "paper's own value lies in the CI.",
        "",
    ]
    for variant in variants(table):
        if variant.title:
            lines += [f"### {variant.title}", ""]
        if variant.borrowed:
            lines += [
                f"Borrowed (cells this variant shares): {variant.lenders(variant.borrowed)}.",
                "",
            ]
        lines += [claims_table(claims(variant), bool(variant.borrowed)), ""]
    if shortened_runs:
        lines += [
            "(Verdicts on shortened or non-CIFAR-100 runs do not test the paper's numbers.)",
            "",
        ]
    return lines


def claims_table(rows: Sequence[Claim], borrowed: bool) -> str:
    """The claims as a Markdown table; a column of borrowed cells where a variant has any."""
    headers = ["claim", "test", "threshold", "paper", "measured", "95 % CI", "verdict"]
    headers += ["seeds", "paper in CI"] + (["borrowed cells"] if borrowed else [])
    body = [
        [c.text, c.test, c.threshold, c.paper, c.measured,
         c.interval, c.verdict, c.seeds, c.paper_in_ci] + ([c.borrowed] if borrowed else [])
        for c in rows
    ]  # fmt: skip
    return format_table(headers, body)


def provenance(out: Path, runs: Sequence[Run]) -> list[str]:
    """The grid's commands, the report's versions, and where the runs ran."""
    import torch

    import plainnet
    from plainnet.provenance import git_commit

    lines = ["## Provenance", ""]
    commands = out / "commands.txt"
    if commands.exists():
        lines += ["Grid commands run in this directory:", "", "```"]
        lines += [*commands.read_text(errors="replace").strip().splitlines(), "```", ""]
    command = " ".join(["plainnet", *sys.argv[1:]]) if sys.argv else "plainnet report"
    lines += [
        f"Report written by `{command}` (plainnet {plainnet.__version__}, git "
        f"{git_commit() or '?'}, torch {torch.__version__}).",
        "",
        "The runs behind the numbers (each run's config.json holds its full configuration):",
        "",
    ]
    keys = ("plainnet", "git_commit", "torch", "python", "device_name", "hostname")
    envs: dict[tuple, int] = {}
    for run in runs:
        env = run.config.get("environment", {})
        key = tuple(str(env.get(k, "?")) for k in keys)
        envs[key] = envs.get(key, 0) + 1
    headers = ["plainnet", "git commit", "torch", "python", "device", "host", "runs"]
    body = [[*key, str(n)] for key, n in envs.items()]
    return [*lines, format_table(headers, body) if body else "(none)", ""]
