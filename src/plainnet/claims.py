"""The paper's claims, each tested on a grid's runs as the paper states it.

Every comparison that Table I and Sections V-B and V-C make is a `Comparison`: a weighted sum
of cells' mean final test errors, in points; or, where the paper states a relative change
("improves its error rate by 5 %"), the same sum of mean log errors, so that Welch's interval
on the logs becomes a relative change (a ratio of geometric means) and its interval. A claim
holds when the estimate lies on the paper's side of a threshold: 0 where the paper states a
direction, or a number of ours where it says "about" (marked as ours). The 95 % interval says
whether the seeds decide it. Training speed is compared per device, never across devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

from plainnet.grid import NICE, Cell, finite_number
from plainnet.paper import PAPER_SECONDS, PAPER_TABLE
from plainnet.stats import Interval, welch
from plainnet.tables import MISSING
from plainnet.variants import Variant, slot_name

P, R = "plain11", "resnet110"
PAPERS = "paper's direction"
OURS = "ours"
TIME_RATIO = 3.0  # ours: "about 4 times faster" holds from a ratio of seconds per epoch of 3


@dataclass(frozen=True)
class Comparison:
    """One comparison the paper makes, as a test on final test errors.

    ``terms`` are (coefficient, model, schedule); the estimate is sum(c * mean error) in
    points, or for a ``relative`` comparison exp(sum(c * mean log error)) - 1. The claim holds
    when the estimate is below ``threshold`` (``below``), else when it is above.
    """

    claim: str
    source: str  # where the paper says so
    quantity: str  # the estimate, in words
    terms: tuple[tuple[int, str, str], ...]
    below: bool
    threshold: float = 0.0  # points, or a relative change
    relative: bool = False
    ours: bool = False  # the threshold is ours: the paper gives no number


def _pair(a: tuple[str, str], b: tuple[str, str]) -> tuple[tuple[int, str, str], ...]:
    """The terms of error(a) - error(b)."""
    return ((1, *a), (-1, *b))


def _contrast(first: tuple, second: tuple) -> tuple[tuple[int, str, str], ...]:
    """The terms of one comparison less another (each a `_pair`)."""
    return first + tuple((-k, m, s) for k, m, s in second)


COMPARISONS = (
    # V-B: the two architectures under each schedule.
    Comparison("With the step schedule, ResNet-110 beats Plain-11", "V-B",
               "Plain-11 - ResNet-110, step", _pair((P, "step"), (R, "step")), below=False),
    Comparison("With CLR, Plain-11 beats ResNet-110", "Table I",
               "Plain-11 - ResNet-110, CLR", _pair((P, "clr"), (R, "clr")), below=True),
    Comparison("With SGDR, Plain-11 comes within about a point of ResNet-110", "V-B",
               "Plain-11 - ResNet-110, SGDR", _pair((P, "sgdr"), (R, "sgdr")), below=True,
               threshold=1.5, ours=True),
    # V-B: what SGDR gains over step, as relative changes of the error rate.
    Comparison("SGDR improves Plain-11's error over step, by 5 %", "V-B",
               "SGDR / step - 1, Plain-11", _pair((P, "sgdr"), (P, "step")), below=True,
               relative=True),
    Comparison("SGDR improves ResNet-110's error over step, by only 2 %", "V-B",
               "SGDR / step - 1, ResNet-110", _pair((R, "sgdr"), (R, "step")), below=True,
               relative=True),
    Comparison("SGDR's relative gain over step is larger for Plain-11 than for ResNet-110",
               "V-B", "SGDR / step of Plain-11, over that of ResNet-110, - 1",
               _contrast(_pair((P, "sgdr"), (P, "step")), _pair((R, "sgdr"), (R, "step"))),
               below=True, relative=True),
    # Table I and V-C: CLR against step.
    Comparison("CLR improves Plain-11's error over step", "Table I",
               "CLR / step - 1, Plain-11", _pair((P, "clr"), (P, "step")), below=True,
               relative=True),
    Comparison("CLR is worse than step for ResNet-110", "V-C", "CLR / step - 1, ResNet-110",
               _pair((R, "clr"), (R, "step")), below=False, relative=True),
    # V-C: SGDR against CLR.
    Comparison("SGDR beats CLR for Plain-11", "V-C", "SGDR - CLR, Plain-11",
               _pair((P, "sgdr"), (P, "clr")), below=True),
    Comparison("SGDR beats CLR for ResNet-110", "V-C", "SGDR - CLR, ResNet-110",
               _pair((R, "sgdr"), (R, "clr")), below=True),
)  # fmt: skip


@dataclass
class Claim:
    """One claim, measured: a row of the report's claims table."""

    text: str
    test: str  # the estimate and the side of the threshold on which the claim holds
    threshold: str  # `PAPERS` or `OURS`
    paper: str  # the paper's own numbers and the estimate from them
    measured: str = MISSING
    interval: str = MISSING
    verdict: str = "not measured"
    seeds: str = ""  # whether the seeds decide the verdict (or what is missing)
    paper_in_ci: str = MISSING  # whether the 95 % interval holds the paper's value
    borrowed: str = ""  # the cells taken from another variant, and from which


def claims(variant: Variant) -> list[Claim]:
    """Every comparison of the paper on one variant's runs, then training speed per device."""
    return [*(measure(c, variant) for c in COMPARISONS), *time_claims(variant.cells)]


def measure(comparison: Comparison, variant: Variant) -> Claim:
    """One comparison on the variant's finished runs ("not measured" while a cell has none)."""
    c = comparison
    threshold = _limit(c.threshold, c.relative)
    claim = Claim(
        text=f"{c.claim} ({c.source})",
        test=f"{c.quantity} {'<' if c.below else '>'} {threshold}",
        threshold=OURS if c.ours else PAPERS,
        paper=_describe(c, [[PAPER_TABLE[m, s]] for _, m, s in c.terms]),
        borrowed=variant.lenders((m, s) for _, m, s in c.terms),
    )
    cells = [variant.cell(m, s) for _, m, s in c.terms]
    values = [cell.errors if cell else [] for cell in cells]
    missing = [slot_name((m, s)) for (_, m, s), v in zip(c.terms, values, strict=True) if not v]
    if missing:
        claim.seeds = "no finished runs of " + ", ".join(dict.fromkeys(missing))
        return claim
    if c.relative and min(min(vs) for vs in values) <= 0:
        claim.seeds = "a test error of 0 %: no relative change"
        return claim
    scale = math.log if c.relative else float
    iv = welch([(k, [scale(v) for v in vs]) for (k, _, _), vs in zip(c.terms, values, strict=True)])
    limit = math.log1p(c.threshold) if c.relative else c.threshold
    claim.verdict, claim.seeds = judge(iv, c.below, limit, threshold)
    claim.measured = _describe(c, values)
    claim.interval = _interval(iv, c.relative)
    paper = sum(k * scale(PAPER_TABLE[m, s]) for k, m, s in c.terms)
    claim.paper_in_ci = _inside(iv, paper)
    return claim


def judge(iv: Interval, below: bool, limit: float, limit_text: str) -> tuple[str, str]:
    """The verdict from the point estimate, and whether the seeds decide it: they do when the
    95 % interval lies wholly on one side of the threshold."""
    holds = iv.estimate < limit if below else iv.estimate > limit
    verdict = "holds" if holds else "does not hold"
    if not iv.known:
        return verdict, f"too few seeds (n={min(iv.n)}; need 2 per cell)"
    if iv.low <= limit <= iv.high:
        return verdict, f"undecided: CI includes {limit_text}"
    return verdict, f"decided: CI excludes {limit_text}"


def _estimate(terms: Sequence[tuple], values: Sequence[Sequence[float]], relative: bool) -> float:
    """sum(c * mean) in points; relative: exp(sum(c * mean log)) - 1."""
    pairs = zip((k for k, _, _ in terms), values, strict=True)
    if relative:
        return math.expm1(sum(k * fmean(math.log(v) for v in vs) for k, vs in pairs))
    return sum(k * fmean(vs) for k, vs in pairs)


def _amount(value: float, relative: bool) -> str:
    """An estimate: ``+1.97 pt``, or a relative change ``-4.9 %``."""
    return f"{100 * value:+.1f} %" if relative else f"{value:+.2f} pt"


def _limit(value: float, relative: bool) -> str:
    """A threshold: ``0 pt``, ``1.5 pt``, ``0 %``."""
    return f"{100 * value:g} %" if relative else f"{value:g} pt"


def _describe(c: Comparison, values: Sequence[Sequence[float]]) -> str:
    """``"27.09 vs 28.48: -4.9 % (-1.39 pt)"``: the two cells' mean errors (or a contrast's
    two relative changes) and the estimate, a relative one with its difference in points."""
    if len(c.terms) == 4:  # a contrast of two comparisons (`_contrast`): each, then the two
        halves = [(c.terms[i : i + 2], values[i : i + 2]) for i in (0, 2)]
        parts = [
            _amount(_estimate([(k * t[0][0], m, s) for k, m, s in t], v, c.relative), c.relative)
            for t, v in halves
        ]
    else:
        parts = [f"{fmean(v):.2f}" for v in values]
    text = _amount(_estimate(c.terms, values, c.relative), c.relative)
    if c.relative:
        text += f" ({_amount(_estimate(c.terms, values, False), False)})"
    return f"{' vs '.join(parts)}: {text}"


def _interval(iv: Interval, relative: bool) -> str:
    """The 95 % interval on the comparison's own scale: points, or a relative change."""
    if not iv.known:
        return MISSING
    if relative:
        low, high = (f"{100 * math.expm1(v):+.1f}" for v in (iv.low, iv.high))
        return f"[{low}, {high}] %, df {iv.df:.1f}"
    return f"[{iv.low:+.2f}, {iv.high:+.2f}] pt, df {iv.df:.1f}"


def _inside(iv: Interval, value: float) -> str:
    return ("yes" if iv.low <= value <= iv.high else "no") if iv.known else MISSING


# ---- training speed, per device ----


def time_claims(cells: Sequence[Cell]) -> list[Claim]:
    """Plain-11 about 4 times faster per epoch: one row per device the runs ran on, each from
    that device's runs alone (seconds depend on the device, so no ratio spans two)."""
    seconds = seconds_by_device(cells)
    if not seconds:
        return [_time_claim("", {})]
    return [_time_claim(device, by_model) for device, by_model in sorted(seconds.items())]


def seconds_by_device(cells: Sequence[Cell]) -> dict[str, dict[str, list[float]]]:
    """Seconds per epoch of Plain-11's and ResNet-110's runs (the finished ones where a cell
    has any), by the device each ran on (config.json: environment.device_name)."""
    out: dict[str, dict[str, list[float]]] = {}
    for cell in cells:
        if cell.model not in (P, R):
            continue
        for run in cell.finished or cell.runs:
            value = finite_number(run.summary.get("mean_train_seconds"))
            device = run.config.get("environment", {}).get("device_name") or "unknown device"
            if value is not None and value > 0:
                out.setdefault(str(device), {}).setdefault(cell.model, []).append(value)
    return out


def _time_claim(device: str, by_model: dict[str, list[float]]) -> Claim:
    where = f", on {device}" if device else ""
    paper = PAPER_SECONDS[R] / PAPER_SECONDS[P]
    claim = Claim(
        text=f"Plain-11 trains about 4 times faster per epoch than ResNet-110{where} (V-B)",
        test=f"ResNet-110 / Plain-11 seconds per epoch > {TIME_RATIO:g} x",
        threshold=OURS,
        paper=f"{PAPER_SECONDS[R]:g} s / {PAPER_SECONDS[P]:g} s = {paper:.2f} x",
    )
    plain, resnet = by_model.get(P, []), by_model.get(R, [])
    if not (plain and resnet):
        ran = [NICE[m] for m in (P, R) if by_model.get(m)]
        claim.seeds = f"only {ran[0]} ran on this device" if ran else "no timings recorded"
        return claim
    logs = [[math.log(s) for s in resnet], [math.log(s) for s in plain]]
    iv = welch([(1, logs[0]), (-1, logs[1])])
    claim.verdict, claim.seeds = judge(iv, False, math.log(TIME_RATIO), f"{TIME_RATIO:g} x")
    geo = [math.exp(fmean(v)) for v in logs]
    claim.measured = f"{geo[0]:.1f} s / {geo[1]:.1f} s = {math.exp(iv.estimate):.2f} x"
    if iv.known:
        claim.interval = f"[{math.exp(iv.low):.2f}, {math.exp(iv.high):.2f}] x, df {iv.df:.1f}"
    claim.paper_in_ci = _inside(iv, math.log(paper))
    return claim
