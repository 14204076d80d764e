"""`plainnet sweep`: test error and time against depth and width.

The plain family over depths and width multipliers, the CIFAR ResNets over depths, one schedule,
run through the same grid runner as `reproduce`; then ``sweep.md``, ``sweep.csv`` and
``sweep.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from plainnet.errors import UserError
from plainnet.grid import RunSpec, finite_number
from plainnet.launch import RunnerOptions, check_outcome, run_grid
from plainnet.models import build_model, trainable_layers
from plainnet.plots import plot_sweep
from plainnet.run_dir import RunDir
from plainnet.stats import mean_std
from plainnet.tables import MISSING, error_text, fmt, format_table, write_csv, write_text

PLAIN11_UNITS = (2, 3, 3, 1)  # conv units per block of Plain-11 (widths 64, 128, 256, 512)
PLAIN_WIDTHS = (64, 128, 256, 512)


def plain_units(depth: int) -> list[int]:
    """Conv units per block for a plain network of ``depth`` trainable layers (convs + 2 FC).

    Plain-11's four blocks keep their widths; its 9 convs are scaled to ``depth - 2`` in
    Plain-11's proportions 2:3:3:1 (largest remainder, at least one unit a block): depth 6 ->
    1-1-1-1, 11 -> 2-3-3-1 (Plain-11 itself), 20 -> 4-6-6-2.
    """
    convs = depth - 2
    if convs < len(PLAIN11_UNITS):
        raise UserError(f"plain depth {depth} is too shallow: the smallest is 6 (one conv a block)")
    exact = [u * convs / sum(PLAIN11_UNITS) for u in PLAIN11_UNITS]
    units = [max(1, int(x)) for x in exact]
    by_remainder = sorted(range(4), key=lambda i: (exact[i] - int(exact[i]), -i), reverse=True)
    for i in by_remainder:
        if sum(units) >= convs:
            break
        units[i] += 1
    while sum(units) > convs:  # the at-least-one rule overshot: take from the biggest block
        units[units.index(max(units))] -= 1
    return units


def plain_model(depth: int) -> str:
    """The `build_model` name of the plain network of ``depth`` layers (width multiplier 1)."""
    blocks = ["-".join([str(w)] * n) for w, n in zip(PLAIN_WIDTHS, plain_units(depth), strict=True)]
    return "plain" + "|".join(blocks)


def sweep_grid(
    depths: Sequence[int],
    widths: Sequence[float],
    resnet_depths: Sequence[int],
    schedule: str,
    seeds: Sequence[int],
) -> list[RunSpec]:
    """Plain networks for every depth x width multiplier, then ResNets for every depth."""
    specs = [
        RunSpec(plain_model(d), schedule, seed, width_mult=w, label=f"plain-d{d}-w{w:g}")
        for d in depths
        for w in widths
        for seed in seeds
    ]
    for d in resnet_depths:
        if d < 8 or (d - 2) % 6:
            raise UserError(f"ResNet depth {d} is not 6n+2 (e.g. 20, 32, 56, 110)")
        specs += [RunSpec(f"resnet{d}", schedule, seed, label=f"resnet-d{d}") for seed in seeds]
    return specs


def sweep(
    out: str | Path,
    base: dict,
    *,
    depths: Sequence[int],
    widths: Sequence[float],
    resnet_depths: Sequence[int],
    schedule: str = "sgdr",
    seeds: Sequence[int] = (0,),
    runner: RunnerOptions | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the sweep's missing runs into ``out``, then write ``sweep.md/.csv/.png``; a
    `UserError` once it is written if a run failed or none finished."""
    specs = sweep_grid(depths, widths, resnet_depths, schedule, seeds)
    runner = runner or RunnerOptions()
    run_grid(specs, base, out, runner, log, command=command)
    report = write_sweep_report(out, specs, log=log)
    check_outcome(specs, Path(out), runner)
    return report


def sweep_rows(out: Path, specs: Sequence[RunSpec]) -> list[dict]:
    """One row per sweep point (family, depth, width): error and time over its seeds."""
    points: dict[tuple, list[RunSpec]] = {}
    for spec in specs:
        family = "ResNet" if spec.model.startswith("resnet") else "plain"
        width = spec.width_mult if spec.width_mult is not None else 1.0
        points.setdefault((family, spec.model, width), []).append(spec)
    rows = []
    for (family, model, width), group in points.items():
        summaries = []
        for spec in group:
            try:
                summaries.append(RunDir(out / spec.name).read_summary())
            except UserError:
                summaries.append({"status": "missing"})
        done = [s for s in summaries if s.get("status") == "finished"]
        errors = [e for s in done if (e := finite_number(s.get("test_error"))) is not None]
        seconds = [t for s in done if (t := finite_number(s.get("mean_train_seconds"))) is not None]
        mean, std = mean_std(errors)
        rows.append(
            {
                "family": family,
                "depth": trainable_layers(build_model(model, 10, width_mult=width)),
                "width_mult": width,
                "model": model,
                "parameters": next((s.get("parameters") for s in done), None),
                "test_error_mean": mean,
                "test_error_std": std,
                "error": error_text(errors),
                "seeds": len(errors),
                "seconds_per_epoch": mean_std(seconds)[0],
                "status": ", ".join(sorted({str(s.get("status", "?")) for s in summaries})),
                "runs": [spec.name for spec in group],
            }
        )
    return sorted(rows, key=lambda r: (r["family"] != "plain", r["width_mult"], r["depth"]))


def write_sweep_report(
    out: str | Path, specs: Sequence[RunSpec], log: Callable[[str], None] = print
) -> Path:
    """Write ``sweep.md``, ``sweep.csv`` and ``sweep.png`` for the sweep's runs in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep_rows(out, specs)
    headers = ["family", "depth", "width x", "parameters", "test error %", "s / epoch"]
    headers += ["status", "runs"]
    body = [
        [
            r["family"], str(r["depth"]), f"{r['width_mult']:g}",
            f"{r['parameters']:,}" if r["parameters"] else MISSING, r["error"],
            fmt(r["seconds_per_epoch"], 1), r["status"],
            " ".join(f"[{n}]({n}/)" for n in r["runs"]),
        ]
        for r in rows
    ]  # fmt: skip
    plot_sweep(out / "sweep.png", sweep_series(rows))
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
    write_text(out / "sweep.md", text)
    keys = ["family", "depth", "width_mult", "model", "parameters", "test_error_mean"]
    keys += ["test_error_std", "seeds", "seconds_per_epoch", "status"]
    write_csv(
        out / "sweep.csv",
        [*keys, "runs"],
        [[r[k] for k in keys] + [" ".join(r["runs"])] for r in rows],
    )
    log(text)
    log(f"wrote {out / 'sweep.md'}, {out / 'sweep.csv'} and {out / 'sweep.png'}")
    return out / "sweep.md"


def sweep_series(rows: Sequence[dict]) -> list[tuple]:
    """A line per plain width and one for the ResNets, over the points with a result."""
    series: dict[str, list[dict]] = {}
    for r in rows:
        key = f"plain x{r['width_mult']:g}" if r["family"] == "plain" else "ResNet"
        series.setdefault(key, []).append(r)
    out = []
    for key, points in series.items():
        pts = [p for p in sorted(points, key=lambda p: p["depth"]) if p["seeds"]]
        if pts:
            std = [p["test_error_std"] if math.isfinite(p["test_error_std"]) else 0.0 for p in pts]
            out.append((key, [p["depth"] for p in pts], [p["test_error_mean"] for p in pts], std,
                        [p["seconds_per_epoch"] for p in pts]))  # fmt: skip
    return out
