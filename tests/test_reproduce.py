"""`plainnet reproduce`: the grid as the authors ran it, its variants, and ``--quick``."""

from __future__ import annotations

import pytest

from plainnet.cli import build_parser, main
from plainnet.errors import UserError
from plainnet.reproduce import QUICK, paper_grid, quick_help


def test_the_grid_and_its_variants():
    paper = paper_grid()
    assert len(paper) == 18 and all(s.overrides().get("lr_decay") is None for s in paper)
    code = paper_grid(variant="delta4")
    names = [s.name for s in code if s.model == "plain11" and s.seed == 0]
    assert names == ["plain11-step-delta4-s0", "plain11-clr-s0", "plain11-sgdr-delta4-s0"]
    decays = {s.schedule: s.overrides().get("lr_decay") for s in code}
    assert decays == {"step": 4.0, "clr": None, "sgdr": 4.0}  # CLR keeps the paper's 10
    with pytest.raises(UserError, match="--variant"):
        paper_grid(variant="bogus")


def test_quick_fills_only_what_was_not_given(tmp_path, monkeypatch):
    """``--quick --batch-size 100`` trains at batch 100: an explicit option always wins, and
    the grid's SGDR is stepped per epoch unless asked otherwise."""
    seen = {}

    def record(out, base, **kw):
        seen.update(base=base, **kw)

    monkeypatch.setattr("plainnet.reproduce.reproduce", record)
    base = ["reproduce", "--quick", "--out", str(tmp_path), "--device", "cpu"]
    assert main([*base, "--batch-size", "100"]) == 0
    assert seen["base"]["batch_size"] == 100 and seen["base"]["scale"] == QUICK["scale"]
    assert seen["base"]["train_limit"] == QUICK["train_limit"] and seen["seeds"] == [0]
    assert seen["base"]["epochwise_sgdr"] is True
    assert main([*base, "--no-epochwise-sgdr", "--seeds", "4"]) == 0
    assert seen["base"]["epochwise_sgdr"] is False and seen["base"]["batch_size"] == 50
    assert seen["seeds"] == [4]


def test_quick_help_says_what_quick_does(capsys):
    """``reproduce --help`` states every value ``--quick`` sets, as `QUICK` holds it."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert " ".join(quick_help().split()) in text
    assert f"seed {QUICK['seeds'][0]}," in text and f"{QUICK['scale']:g} of their" in text
    assert f"{QUICK['train_limit']:,} training / {QUICK['test_limit']:,} test" in text
    assert f"batch {QUICK['batch_size']} " in text


def test_variant_and_an_explicit_decay_are_one_line(tmp_path, capsys):
    args = ["reproduce", "--variant", "delta4", "--lr-decay", "2", "--out", str(tmp_path)]
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sets --lr-decay itself" in err[0]


def test_commands_are_recorded_for_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr("plainnet.launch.run_processes", lambda *a, **k: {})
    monkeypatch.setattr("plainnet.reproduce.write_report", lambda out, log: out)
    args = ["reproduce", "--models", "plain8", "--schedules", "clr", "--seeds", "0"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "commands.txt").read_text().count("reproduce") == 1
