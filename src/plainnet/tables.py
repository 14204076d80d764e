"""Markdown and CSV tables, written the same way everywhere: an empty cell for a missing or
non-finite number, Markdown's special characters escaped, plain values in CSV files."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plainnet.run_dir import atomic_write
from plainnet.stats import mean_std

MISSING = "–"


def fmt(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or `MISSING` for None and NaN/inf."""
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.{digits}f}"


def error_text(values: Sequence[float]) -> str:
    """``mean ± std (n=k)`` of test errors in %, `MISSING` when there are none."""
    if not values:
        return MISSING
    mean, std = mean_std(values)
    spread = f" ± {std:.2f}" if math.isfinite(std) else ""
    return f"{mean:.2f}{spread} (n={len(values)})"


def escape(text: str) -> str:
    """A table cell's text with ``|`` (and the backslash) escaped, so it cannot split cells."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, aligned for reading in a terminal. Cells are text;
    ``|`` in them is escaped."""
    headers = [escape(h) for h in headers]
    rows = [[escape(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def csv_value(value: Any, digits: int = 4) -> Any:
    """A plain CSV value: None, NaN and infinities empty, floats rounded to ``digits`` decimals
    (what was measured, without float noise such as 87.99999952316284)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else ""
    return value


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV file atomically (a crash or a full disk leaves the previous version)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([csv_value(v) for v in row] for row in rows)
    text = buffer.getvalue().encode()
    atomic_write(path, lambda f: f.write(text))
    return path


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))
    return path


def schedules_table(iters_per_epoch: int = 500, scale: float = 1.0) -> str:
    """`plainnet schedules`: each paper schedule's length, bounds, reached range and where its
    rate jumps or its cycles end."""
    from plainnet.schedules import SCHEDULES, paper_schedule

    kinds = {"step": "lr drops at", "clr": "cycle ends at", "sgdr": "restarts at"}
    rows = []
    for name in SCHEDULES:
        s = paper_schedule(name, iters_per_epoch, scale)
        rates = [s(t) for t in range(s.total_iters)]
        rows.append(
            [
                name, f"{s.epochs:g}", f"{s.total_iters:,}", f"{s.lr_min:.3g} .. {s.lr_max:.3g}",
                f"{min(rates):.3g} .. {max(rates):.3g}", f"{rates[0]:.3g} -> {rates[-1]:.3g}",
                f"{kinds[name]} " + ", ".join(f"{b:g}" for b in s.boundaries),
            ]
        )  # fmt: skip
    headers = ["schedule", "epochs", "iterations", "bounds", "reached", "first -> last", "epochs"]
    return format_table(headers, rows)
