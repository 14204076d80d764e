"""The paper's four claims, measured on a grid: each a difference (or ratio) of means over the
seeds with Welch's 95 % confidence interval, a verdict, and whether the seeds decide it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from plainnet.grid import NICE, Cell, differences
from plainnet.stats import Interval, welch

P, R = "plain11", "resnet110"


@dataclass
class Claim:
    """One of the paper's claims, measured: estimate with its 95 % CI and a verdict."""

    text: str
    criterion: str
    paper: str
    measured: str = "–"
    interval: str = "–"
    verdict: str = "not measured (runs missing)"
    note: str = ""


def variants(table: Sequence[Cell]) -> list[tuple[str, list[Cell]]]:
    """The grid's cells split by everything but model and schedule: one claims table each,
    titled by what sets it apart ("" when the grid has one variant)."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in table:
        key = tuple(kv for kv in cell.key if kv[0] not in ("model", "schedule"))
        groups.setdefault(key, []).append(cell)
    if len(groups) == 1:
        return [("", next(iter(groups.values())))]
    names = differences(list(groups))
    return [
        (", ".join(f"{n}={dict(key).get(n, '?')}" for n in names), cells)
        for key, cells in groups.items()
    ]


def _judge(iv: Interval, holds: Callable[[float], bool], threshold: float) -> tuple[str, str]:
    """A plain verdict from the point estimate, and a note on whether the seeds decide it."""
    verdict = "holds" if holds(iv.estimate) else "does not hold"
    if not iv.known:
        return verdict, f"too few seeds to decide (n={min(iv.n)} per configuration; need >= 2)"
    if iv.low <= threshold <= iv.high:
        return verdict, f"undecided by the seeds: the 95 % CI includes {threshold:g}"
    return verdict, "decided by the seeds (the 95 % CI excludes the threshold)"


def _ci(iv: Interval) -> str:
    return f"[{iv.low:+.2f}, {iv.high:+.2f}] pt (df {iv.df:.1f})" if iv.known else "–"


def claims(table: Sequence[Cell]) -> list[Claim]:
    """The paper's four claims from the finished runs of one variant (a claim lacking runs
    says so)."""

    def e(model: str, schedule: str) -> list[float]:
        found = (c.errors for c in table if (c.model, c.schedule) == (model, schedule))
        return next(found, [])

    out = []

    def add(claim: Claim, terms, holds: Callable[[float], bool], threshold: float) -> None:
        if any(not values for _, values in terms):
            out.append(claim)
            return
        iv = welch(terms)
        claim.verdict, claim.note = _judge(iv, holds, threshold)
        claim.measured, claim.interval = f"{iv.estimate:+.2f} pt", _ci(iv)
        out.append(claim)

    add(
        Claim(
            "Plain-11 with SGDR comes within about a point of ResNet-110 (SGDR)",
            "error(Plain-11 SGDR) - error(ResNet-110 SGDR) <= 1.5 pt",
            "27.09 - 25.98 = +1.11 pt",
        ),
        [(1, e(P, "sgdr")), (-1, e(R, "sgdr"))],
        lambda d: d <= 1.5,
        1.5,
    )
    add(
        Claim(
            "SGDR improves Plain-11 much more than ResNet-110",
            "(step - SGDR gain of Plain-11) - (gain of ResNet-110) > 0",
            "1.39 - 0.53 = +0.86 pt",
        ),
        [(1, e(P, "step")), (-1, e(P, "sgdr")), (-1, e(R, "step")), (1, e(R, "sgdr"))],
        lambda d: d > 0,
        0.0,
    )
    out.append(time_claim(table))
    for model, paper in ((P, "27.09 - 27.26 = -0.17 pt"), (R, "25.98 - 27.78 = -1.80 pt")):
        add(
            Claim(f"SGDR beats CLR for {NICE[model]}", "error(SGDR) - error(CLR) < 0", paper),
            [(1, e(model, "sgdr")), (-1, e(model, "clr"))],
            lambda d: d < 0,
            0.0,
        )
    return out


def time_claim(table: Sequence[Cell]) -> Claim:
    """ResNet-110 about 4x slower per epoch: Welch on log seconds, reported as a ratio."""
    claim = Claim(
        "ResNet-110 takes about 4 times longer per epoch than Plain-11",
        "ratio of seconds per epoch >= 3",
        "175 s / 42 s = 4.2 x",
    )

    def times(model: str) -> list[float]:
        return [math.log(s) for c in table if c.model == model and c.finished for s in c.seconds]

    tp, tr = times(P), times(R)
    if not (tp and tr):
        return claim
    iv = welch([(1, tr), (-1, tp)])
    claim.verdict, note = _judge(iv, lambda d: d >= math.log(3), math.log(3))
    claim.note = note.replace(f"includes {math.log(3):g}", "includes a ratio of 3")
    claim.note += " (times depend on the device and code, see below)"
    claim.measured = f"{math.exp(iv.estimate):.2f} x"
    claim.interval = f"[{math.exp(iv.low):.2f}, {math.exp(iv.high):.2f}] x" if iv.known else "–"
    return claim
