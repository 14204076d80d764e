"""Tables and figures: cells that cannot break a table, plain CSV values, atomic files."""

from __future__ import annotations

import math

import pytest

from plainnet.errors import UserError
from plainnet.plots import plot_schedules
from plainnet.tables import csv_value, fmt, format_table, write_csv


def test_markdown_cells_cannot_split_a_row():
    table = format_table(["model", "error"], [["plain8-8|16", "1.00"], ["a\\b", fmt(math.nan)]])
    rows = table.splitlines()
    assert rows[2] == "| plain8-8\\|16 | 1.00  |"
    assert rows[3] == "| a\\\\b         | –     |"
    assert all(r.count(" | ") == 1 for r in (rows[0], rows[2], rows[3]))


def test_csv_holds_plain_rounded_values(tmp_path):
    path = write_csv(
        tmp_path / "t.csv", ["a", "b", "c", "d"], [[87.99999952316284, None, math.nan, "x|y"]]
    )
    assert path.read_text().splitlines() == ["a,b,c,d", "88.0,,,x|y"]
    assert csv_value(0.123456789) == 0.1235 and csv_value(3) == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_figure_in_an_unknown_format_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"cannot draw a \.xyz file; use one of"):
        plot_schedules(tmp_path / "fig.xyz")
    assert not (tmp_path / "fig.xyz").exists()
    assert plot_schedules(tmp_path / "fig.svg").read_text().startswith("<?xml")
