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
    assert f"batch {QUICK['batch_size']}, the built-in {QUICK['dataset']} data set" in text


def test_variant_and_an_explicit_decay_are_one_line(tmp_path, capsys):
    args = ["reproduce", "--variant", "delta4", "--lr-decay", "2", "--out", str(tmp_path)]
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sets --lr-decay itself" in err[0]


def test_commands_are_recorded_for_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr("plainnet.launch.run_processes", lambda *a, **k: {})
    monkeypatch.setattr("plainnet.reproduce.write_report", lambda out, log: out)
    monkeypatch.setattr("plainnet.reproduce.check_outcome", lambda *a: None)
    args = ["reproduce", "--models", "plain8", "--schedules", "clr", "--seeds", "0"]
    args += ["--dataset", "sample"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "commands.txt").read_text().count("reproduce") == 1


def test_quick_trains_on_the_built_in_sample_unless_data_is_given(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("plainnet.reproduce.reproduce", lambda out, base, **kw: seen.update(base))
    base = ["reproduce", "--quick", "--out", str(tmp_path)]
    assert main(base) == 0 and (seen["dataset"], seen["data_dir"]) == ("sample", None)
    assert main([*base, "--dataset", "cifar10"]) == 0 and seen["dataset"] == "cifar10"
    assert main([*base, "--data-dir", "here"]) == 0
    assert (seen["dataset"], seen["data_dir"]) == ("cifar100", "here")


def test_the_grid_trains_in_the_authors_precision_unless_asked(tmp_path, monkeypatch):
    """fp32 without TF32 by default, what the command gives winning; and the bf16 variant
    refuses an --amp of its own."""
    seen = {}
    monkeypatch.setattr("plainnet.reproduce.reproduce", lambda out, base, **kw: seen.update(base))
    base = ["reproduce", "--out", str(tmp_path)]
    assert main(base) == 0 and (seen["amp"], seen["tf32"], seen["epochwise_sgdr"]) == (
        "off",
        "off",
        True,
    )
    assert main([*base, "--amp", "bf16", "--tf32", "auto"]) == 0
    assert (seen["amp"], seen["tf32"]) == ("bf16", "auto")
    monkeypatch.undo()
    with pytest.raises(UserError, match="--variant bf16 sets --amp itself"):
        from plainnet.reproduce import reproduce

        reproduce(tmp_path, {**seen, "amp": "bf16"}, variant="bf16")


def test_the_bf16_variant_runs_in_its_own_directories():
    specs = paper_grid(seeds=[0], variant="bf16")
    assert [s.name for s in specs if s.model == "plain11"] == [
        "plain11-step-bf16-s0", "plain11-clr-bf16-s0", "plain11-sgdr-bf16-s0"
    ]  # fmt: skip
    assert all(s.overrides()["amp"] == "bf16" for s in specs)


def test_precision_variants_train_and_land_in_their_own_rows(tiny_cifar10, tmp_path, capsys):
    """End to end on tiny data: each run's config.json records fp32 and TF32 off (asked and
    resolved); the bf16 variant's runs are other directories and another row of Table I."""
    import json

    out = tmp_path / "grid"
    args = ["reproduce", "--models", "plain8", "--schedules", "clr", "--seeds", "0",
            "--dataset", "cifar10", "--data-dir", str(tiny_cifar10), "--scale", "0.02",
            "--batch-size", "20", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert main([*args, "--variant", "bf16"]) == 0
    fp32 = json.loads((out / "plain8-clr-s0" / "config.json").read_text())
    bf16 = json.loads((out / "plain8-clr-bf16-s0" / "config.json").read_text())
    assert (fp32["config"]["amp"], fp32["config"]["tf32"]) == ("off", "off")
    assert (fp32["resolved"]["amp"], fp32["resolved"]["tf32"]) == ("off", False)
    assert (bf16["config"]["amp"], bf16["resolved"]["amp"]) == ("bf16", "bf16")
    report = (out / "report.md").read_text().splitlines()
    rows = [line for line in report if line.startswith("| plain8 ")]
    assert len(rows) == 2 and any("bf16" in row for row in rows), rows
    assert any("amp='bf16'" in row for row in rows) and any("amp='off'" in row for row in rows)
