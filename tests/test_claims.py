"""The paper's claims in `plainnet report`: every comparison, its verdict on known errors,
variants that share cells, precision and devices kept apart.

Expected values are computed here from the errors and seconds the tests choose, never read
back from the code under test.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from statistics import fmean, geometric_mean

import pytest

from plainnet.report import write_report
from plainnet.stats import welch
from rundirs import write_grid, write_run

P, R = "plain11", "resnet110"
T4 = 2.7764451  # Student's t, 97.5 % quantile, 4 degrees of freedom (tables)


def spread(mean: float, half: float = 0.5) -> list[float]:
    """Three seeds' errors around ``mean``: sample std ``half``."""
    return [mean - half, mean, mean + half]


# Chosen so that some claims hold and some do not, some decided by the seeds, some not.
MEANS = {
    (P, "step"): 28.0,
    (P, "clr"): 28.5,  # CLR worse than step for Plain-11, and worse than ResNet-110's CLR
    (P, "sgdr"): 27.5,  # 2 points behind ResNet-110's SGDR: not within about a point
    (R, "step"): 26.0,
    (R, "clr"): 28.0,
    (R, "sgdr"): 25.5,
}
ERRORS = {slot: spread(mean) for slot, mean in MEANS.items()}


def claims_tables(report: Path) -> dict[str, dict[str, dict[str, str]]]:
    """The claims tables of ``report.md``: variant title ("" for none) -> claim text (without
    the paper's section) -> column -> cell."""
    text = report.read_text().split("## The paper's claims")[1].split("## Figures")[0]
    tables: dict[str, dict[str, dict[str, str]]] = {}
    title, headers = "", None
    for line in text.splitlines():
        if line.startswith("### "):
            title, headers = line[4:], None
        elif line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if headers is None:
                headers = cells
                continue
            row = dict(zip(headers, cells, strict=True))
            claim = re.sub(r" \([^()]*\)$", "", row["claim"])
            tables.setdefault(title, {})[claim] = row
    return tables


def report_claims(root: Path) -> dict[str, dict[str, dict[str, str]]]:
    write_report(root, log=lambda _m: None)
    return claims_tables(root / "report.md")


def numbers(text: str) -> list[float]:
    """The signed numbers in a cell: ``"27.50 vs 28.50: -1.8 % (-0.50 pt)"`` -> [27.5, ...]."""
    return [float(x) for x in re.findall(r"[-+]?\d+\.?\d*", text)]


def points(*terms: tuple[int, tuple[str, str]]) -> float:
    """sum(c * mean error) over the chosen errors."""
    return sum(c * fmean(ERRORS[slot]) for c, slot in terms)


def ratio(*terms: tuple[int, tuple[str, str]]) -> float:
    """prod(geometric mean ** c) over the chosen errors: a ratio of (ratios of) errors."""
    return math.prod(geometric_mean(ERRORS[slot]) ** c for c, slot in terms)


def log_interval(*terms: tuple[int, tuple[str, str]]) -> tuple[float, float]:
    """Welch's 95 % interval of the log-error contrast, as a relative change in %."""
    iv = welch([(c, [math.log(v) for v in ERRORS[slot]]) for c, slot in terms])
    return 100 * math.expm1(iv.low), 100 * math.expm1(iv.high)


STEP, CLR, SGDR = "step", "clr", "sgdr"
# claim -> (terms, relative, verdict, decided by the seeds)
EXPECTED = {
    "With the step schedule, ResNet-110 beats Plain-11": (
        [(1, (P, STEP)), (-1, (R, STEP))], False, "holds", True),  # +2.0 pt, CI +-1.13
    "With CLR, Plain-11 beats ResNet-110": (
        [(1, (P, CLR)), (-1, (R, CLR))], False, "does not hold", False),  # +0.5 pt
    "With SGDR, Plain-11 comes within about a point of ResNet-110": (
        [(1, (P, SGDR)), (-1, (R, SGDR))], False, "does not hold", False),  # 2.0 > 1.5
    "SGDR improves Plain-11's error over step, by 5 %": (
        [(1, (P, SGDR)), (-1, (P, STEP))], True, "holds", False),  # -1.8 %
    "SGDR improves ResNet-110's error over step, by only 2 %": (
        [(1, (R, SGDR)), (-1, (R, STEP))], True, "holds", False),  # -1.9 %
    "SGDR's relative gain over step is larger for Plain-11 than for ResNet-110": (
        [(1, (P, SGDR)), (-1, (P, STEP)), (-1, (R, SGDR)), (1, (R, STEP))], True,
        "does not hold", False),  # -1.79 % is not more than -1.92 %
    "CLR improves Plain-11's error over step": (
        [(1, (P, CLR)), (-1, (P, STEP))], True, "does not hold", False),  # +1.8 %
    "CLR is worse than step for ResNet-110": (
        [(1, (R, CLR)), (-1, (R, STEP))], True, "holds", True),  # +7.7 %
    "SGDR beats CLR for Plain-11": (
        [(1, (P, SGDR)), (-1, (P, CLR))], False, "holds", False),  # -1.0 pt, CI +-1.13
    "SGDR beats CLR for ResNet-110": (
        [(1, (R, SGDR)), (-1, (R, CLR))], False, "holds", True),  # -2.5 pt
}  # fmt: skip
TIME = "Plain-11 trains about 4 times faster per epoch than ResNet-110, on {}"


@pytest.fixture
def known(tmp_path) -> Path:
    """The chosen errors; seeds 0 and 1 on GPU A, Plain-11's seed 2 on GPU B and
    ResNet-110's on GPU C (seconds per epoch: `SECONDS` plus the seed)."""
    plain = {slot: e for slot, e in ERRORS.items() if slot[0] == P}
    resnet = {slot: e for slot, e in ERRORS.items() if slot[0] == R}
    write_grid(tmp_path, plain, devices=["GPU A", "GPU A", "GPU B"])
    write_grid(tmp_path, resnet, devices=["GPU A", "GPU A", "GPU C"])
    return tmp_path


def test_every_claim_on_a_grid_with_known_errors(known):
    (rows,) = report_claims(known).values()
    assert len(rows) == len(EXPECTED) + 3  # and a speed row per device
    for text, (terms, relative, verdict, decided) in EXPECTED.items():
        row = rows[text]
        assert row["verdict"] == verdict, text
        assert row["seeds"].startswith("decided" if decided else "undecided"), text
        pt = points(*terms)
        if relative:
            change, low_high = 100 * (ratio(*terms) - 1), log_interval(*terms)
            assert numbers(row["measured"])[-2:] == [
                pytest.approx(change, abs=0.05), pytest.approx(pt, abs=0.005)]  # fmt: skip
            assert numbers(row["95 % CI"])[:2] == pytest.approx(low_high, abs=0.05)
        else:  # every cell's std is 0.5 over 3 seeds: Welch's df is 4
            half = T4 * math.sqrt(2 * 0.5**2 / 3)
            assert numbers(row["measured"])[-1] == pytest.approx(pt, abs=0.005)
            assert numbers(row["95 % CI"]) == pytest.approx([pt - half, pt + half, 4.0], abs=0.01)
    within = rows["With SGDR, Plain-11 comes within about a point of ResNet-110"]
    assert within["threshold"] == "ours" and "< 1.5 pt" in within["test"]
    assert within["paper"] == "27.09 vs 25.98: +1.11 pt"
    assert within["paper in CI"] == "yes"  # +1.11 lies in [+0.87, +3.13]
    gain = rows["SGDR improves Plain-11's error over step, by 5 %"]
    assert gain["threshold"] == "paper's direction"
    assert gain["paper"] == "27.09 vs 28.48: -4.9 % (-1.39 pt)"  # the paper's "5 %"
    assert rows["SGDR improves ResNet-110's error over step, by only 2 %"]["paper"] == (
        "25.98 vs 26.51: -2.0 % (-0.53 pt)"
    )
    contrast = rows["SGDR's relative gain over step is larger for Plain-11 than for ResNet-110"]
    assert numbers(contrast["measured"])[:2] == [pytest.approx(-1.8, abs=0.05),
                                                 pytest.approx(-1.9, abs=0.05)]  # fmt: skip


def test_speed_rows_on_a_grid_with_known_timings(known):
    (rows,) = report_claims(known).values()
    a = rows[TIME.format("GPU A")]
    expected = geometric_mean([170.0, 171.0]) / geometric_mean([40.0, 41.0])
    assert numbers(a["measured"])[-1] == pytest.approx(expected, abs=0.005)
    assert a["verdict"] == "holds" and a["seeds"] == "decided: CI excludes 3 x"
    assert a["threshold"] == "ours" and a["paper"] == "175 s / 42 s = 4.17 x"
    for device, ran in (("GPU B", "Plain-11"), ("GPU C", "ResNet-110")):
        row = rows[TIME.format(device)]
        assert row["verdict"] == "not measured" and row["measured"] == "–"
        assert row["seeds"] == f"only {ran} ran on this device"


def test_speed_is_compared_on_one_device_at_a_time(tmp_path):
    """Two devices with both networks: a row each, from its own runs; no ratio of one
    device's seconds to the other's."""
    seconds = {"GPU A": {P: 40.0, R: 170.0}, "CPU": {P: 100.0, R: 250.0}}
    for seed, device in enumerate(["GPU A", "GPU A", "CPU", "CPU"]):
        for model in (P, R):
            write_run(tmp_path, model, STEP, seed, 30.0, device=device,
                      seconds=seconds[device][model] + seed % 2)  # fmt: skip
    (rows,) = report_claims(tmp_path).values()
    speed = {k: v for k, v in rows.items() if k.startswith("Plain-11 trains")}
    assert sorted(speed) == [TIME.format("CPU"), TIME.format("GPU A")]
    cpu, gpu = speed[TIME.format("CPU")], speed[TIME.format("GPU A")]
    assert numbers(gpu["measured"])[-1] == pytest.approx(
        geometric_mean([170.0, 171.0]) / geometric_mean([40.0, 41.0]), abs=0.005
    )
    assert numbers(cpu["measured"])[-1] == pytest.approx(
        geometric_mean([250.0, 251.0]) / geometric_mean([100.0, 101.0]), abs=0.005
    )
    assert gpu["verdict"] == "holds" and cpu["verdict"] == "does not hold"  # 2.5 x < 3 x
    assert cpu["seeds"] == "decided: CI excludes 3 x"


def test_the_papers_own_numbers_satisfy_every_claim(tmp_path):
    """Seeds spread tightly around Table I's errors: every claim holds, the measured values
    are the paper's, and the paper's value lies in every interval."""
    table = {(P, STEP): 28.48, (P, CLR): 27.26, (P, SGDR): 27.09,
             (R, STEP): 26.51, (R, CLR): 27.78, (R, SGDR): 25.98}  # fmt: skip
    write_grid(tmp_path, {slot: spread(e, 0.01) for slot, e in table.items()})
    (rows,) = report_claims(tmp_path).values()
    for text, row in rows.items():
        assert row["verdict"] == "holds", text
        assert row["paper in CI"] == "yes", text
        if not text.startswith("Plain-11 trains"):
            assert row["measured"] == row["paper"], text


def test_few_seeds_leave_a_claim_undecided_and_missing_runs_unmeasured(tmp_path):
    slots = [(P, STEP), (R, STEP), (P, SGDR)]
    write_grid(tmp_path, {slot: ERRORS[slot][:1] for slot in slots})
    write_run(tmp_path, R, SGDR, 0, 26.0, status="running", done=2)
    (rows,) = report_claims(tmp_path).values()
    step = rows["With the step schedule, ResNet-110 beats Plain-11"]
    assert step["verdict"] == "holds" and step["95 % CI"] == "–"
    assert step["seeds"] == "too few seeds (n=1; need 2 per cell)"
    sgdr = rows["With SGDR, Plain-11 comes within about a point of ResNet-110"]
    assert sgdr["verdict"] == "not measured"
    assert sgdr["seeds"] == "no finished runs of ResNet-110 SGDR"
    clr = rows["SGDR beats CLR for Plain-11"]
    assert clr["verdict"] == "not measured" and clr["seeds"] == "no finished runs of Plain-11 CLR"


def test_an_error_of_zero_has_no_relative_change(tmp_path):
    """A perfect run (a tiny test set, say) has no logarithm: its relative claims are not
    measured, the rest are, and the report is written."""
    write_grid(tmp_path, {(P, STEP): [0.0, 1.0], (P, SGDR): [1.0, 2.0], (R, SGDR): [1.0, 1.5]})
    (rows,) = report_claims(tmp_path).values()
    gain = rows["SGDR improves Plain-11's error over step, by 5 %"]
    assert gain["verdict"] == "not measured"
    assert gain["seeds"] == "a test error of 0 %: no relative change"
    within = rows["With SGDR, Plain-11 comes within about a point of ResNet-110"]
    assert within["verdict"] == "holds" and within["measured"] == "1.50 vs 1.25: +0.25 pt"


def test_relative_changes_compare_geometric_means(tmp_path):
    """A relative change is a ratio of geometric means (Welch on log errors): with one cell
    widely spread the two means tell different stories, and the verdict follows the logs."""
    wide, tight = [20.0, 28.0, 36.0], spread(27.5)
    write_grid(tmp_path, {(P, STEP): wide, (P, SGDR): tight})
    (rows,) = report_claims(tmp_path).values()
    row = rows["SGDR improves Plain-11's error over step, by 5 %"]
    change = 100 * (geometric_mean(tight) / geometric_mean(wide) - 1)  # +0.96 %
    points = fmean(tight) - fmean(wide)  # -0.50 pt
    assert numbers(row["measured"])[-2:] == [pytest.approx(change, abs=0.05),
                                             pytest.approx(points, abs=0.005)]  # fmt: skip
    assert row["verdict"] == "does not hold"


# ---- variants of the recipe, and the cells they share ----

SGDR_PER_EPOCH = {"epochwise_sgdr": True}  # as `plainnet reproduce` runs every grid
DELTA4 = {slot: spread(mean + 1.0) for slot, mean in MEANS.items() if slot[1] != CLR}


def write_delta4(root: Path) -> None:
    """``reproduce --variant delta4``'s own runs: step and SGDR with δ = 4 (its CLR runs are
    the paper grid's)."""
    write_grid(root, DELTA4, name="{model}-{schedule}-delta4-s{seed}",
               options={**SGDR_PER_EPOCH, "lr_decay": 4.0})  # fmt: skip


def test_a_delta4_grid_measures_clr_with_the_paper_grids_clr_runs(tmp_path):
    write_grid(tmp_path, ERRORS, options=SGDR_PER_EPOCH)
    write_delta4(tmp_path)
    tables = report_claims(tmp_path)
    assert sorted(tables) == ["lr_decay=4.0", "lr_decay=None"]
    delta4, paper = tables["lr_decay=4.0"], tables["lr_decay=None"]
    assert [text for text, row in delta4.items() if row["verdict"] == "not measured"] == []
    sgdr_clr = delta4["SGDR beats CLR for Plain-11"]
    expected = fmean(DELTA4[P, SGDR]) - fmean(ERRORS[P, CLR])  # 28.5 - 28.5
    assert numbers(sgdr_clr["measured"])[-1] == pytest.approx(expected, abs=0.005)
    assert sgdr_clr["verdict"] == "does not hold"  # 0 is not below 0
    assert sgdr_clr["borrowed cells"] == "Plain-11 CLR from lr_decay=None"
    clr = delta4["With CLR, Plain-11 beats ResNet-110"]
    assert clr["verdict"] == "does not hold" and clr["measured"] == "28.50 vs 28.00: +0.50 pt"
    assert clr["borrowed cells"] == "Plain-11 CLR, ResNet-110 CLR from lr_decay=None"
    assert delta4["With the step schedule, ResNet-110 beats Plain-11"]["borrowed cells"] == ""
    assert "borrowed cells" not in next(iter(paper.values()))  # the paper grid lacks nothing
    text = (tmp_path / "report.md").read_text()
    assert "Borrowed (cells this variant shares): Plain-11 CLR, ResNet-110 CLR from" in text


def test_a_grid_run_only_as_delta4_is_one_variant(tmp_path):
    """Its CLR runs are no variant of their own: one table, CLR measured."""
    write_grid(tmp_path, {slot: ERRORS[slot] for slot in ERRORS if slot[1] == CLR},
               options=SGDR_PER_EPOCH)  # fmt: skip
    write_delta4(tmp_path)
    tables = report_claims(tmp_path)
    assert sorted(tables) == ["lr_decay=4.0"]
    row = tables["lr_decay=4.0"]["SGDR beats CLR for ResNet-110"]
    assert row["verdict"] == "holds" and row["measured"] == "26.50 vs 28.00: -1.50 pt"


def test_a_variant_borrows_from_the_nearest_configuration(tmp_path):
    """δ = 4 with SGDR per iteration lacks CLR: it takes the CLR runs that differ in δ alone,
    not those that also differ in how SGDR stepped."""
    write_grid(tmp_path, ERRORS, options=SGDR_PER_EPOCH)
    per_iteration = {slot: spread(mean - 1.0) for slot, mean in MEANS.items()}
    write_grid(tmp_path, per_iteration, name="{model}-{schedule}-iter-s{seed}",
               options={"epochwise_sgdr": False})  # fmt: skip
    write_grid(tmp_path, DELTA4, name="{model}-{schedule}-iter-delta4-s{seed}",
               options={"epochwise_sgdr": False, "lr_decay": 4.0})  # fmt: skip
    tables = report_claims(tmp_path)
    row = tables["epochwise_sgdr=False, lr_decay=4.0"]["With CLR, Plain-11 beats ResNet-110"]
    assert row["borrowed cells"] == (
        "Plain-11 CLR, ResNet-110 CLR from epochwise_sgdr=False, lr_decay=None"
    )
    assert row["measured"] == "27.50 vs 27.00: +0.50 pt"  # the per-iteration grid's CLR


def test_a_bf16_variant_borrows_nothing_across_precision(tmp_path):
    """A bf16 grid without CLR runs has its claims on CLR unmeasured: fp32 runs are never
    taken in, and the variant is named by its precision."""
    write_grid(tmp_path, ERRORS, options={**SGDR_PER_EPOCH, "amp": "auto"})
    bf16 = {slot: e for slot, e in ERRORS.items() if slot[1] != CLR}
    write_grid(tmp_path, bf16, name="{model}-{schedule}-bf16-s{seed}",
               options={**SGDR_PER_EPOCH, "amp": "auto"}, resolved={"amp": "bf16"})  # fmt: skip
    tables = report_claims(tmp_path)
    assert sorted(tables) == ["amp='bf16'", "amp='off'"]
    rows = tables["amp='bf16'"]
    assert rows["SGDR beats CLR for Plain-11"]["verdict"] == "not measured"
    assert rows["SGDR beats CLR for Plain-11"]["seeds"] == "no finished runs of Plain-11 CLR"
    assert rows["SGDR beats CLR for ResNet-110"]["verdict"] == "not measured"
    assert rows["With the step schedule, ResNet-110 beats Plain-11"]["verdict"] == "holds"
    assert "borrowed cells" not in next(iter(rows.values()))
    text = (tmp_path / "report.md").read_text()
    assert "SGDR (per epoch, bf16)" in text and "Borrowed" not in text
