"""The command line's behaviour a user sees: output, files, one-line errors."""

import json
import os
import signal
import subprocess
import sys

import pytest

import plainnet
from plainnet.cli import main
from plainnet.config import TrainConfig
from plainnet.train import train


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plainnet", *args], capture_output=True, text=True, timeout=300
    )


def test_schedules_table_and_figure(tmp_path, capsys):
    assert main(["schedules", "-o", str(tmp_path / "fig2.png")]) == 0
    out = capsys.readouterr().out
    assert "| sgdr     | 180" in out and "restarts at 12, 36, 84, 180" in out
    assert "| clr      | 160" in out and "| step     | 164" in out
    png = (tmp_path / "fig2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bad_option_is_one_line_without_traceback():
    result = run_cli("schedules", "--scale", "-2")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "must be a positive number" in result.stderr.strip().splitlines()[-1]


def test_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("schedules", "-o", str(blocker / "fig2.png"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"plainnet: error: {blocker}: ")


def help_of(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_version_and_help_that_tells_the_truth(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"plainnet {plainnet.__version__}"
    train = help_of(capsys, "train")
    assert "--momentum MOMENTUM SGD momentum (default: 0.9)" in train
    assert "--batch-size BATCH_SIZE images per step (default: 100)" in train
    assert "resnet<6n+2>" in train and "plain64-64|128" in train  # the model names it takes
    assert "--no-snapshots" in train and "(default: True)" in train
    for command in ("reproduce", "sweep", "lr-find"):
        text = help_of(capsys, command)
        assert "--momentum MOMENTUM SGD momentum (default: 0.9)" in text, command
        assert "--dataset {cifar100,cifar10,folder,sample}" in text, command
    assert "--jobs-per-device JOBS_PER_DEVICE processes packed on each GPU (default: 1)" in (
        help_of(capsys, "reproduce")
    )
    # An option without a default says nothing about one; one whose help names it, once.
    evaluate = help_of(capsys, "evaluate")
    assert "--output OUTPUT evaluation JSON (default: RUN_DIR/evaluation.json) the run:" in (
        evaluate
    )
    for command in ("train", "lr-find", "evaluate", "export", "reproduce", "sweep", "report"):
        assert "(default: None)" not in help_of(capsys, command), command


def test_argparse_mistakes_are_one_line():
    result = run_cli("train", "--schedule", "cosine", "--out", "x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid choice: 'cosine'" in lines[0], lines


def interrupt_after_first_epoch(msg: str) -> None:
    if msg.startswith("epoch   1/"):
        os.kill(os.getpid(), signal.SIGINT)


def test_resume_with_the_run_directory_alone(tiny_cifar10, tmp_path, capsys):
    """``train --resume DIR`` continues the run from its config.json; other options given
    must agree with it."""
    cfg = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=3)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, log=interrupt_after_first_epoch)
    assert main(["train", "--resume", str(run), "--seed", "5"]) == 2
    assert "differs in: seed" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and out.strip().splitlines()[-1].startswith("finished: final test")
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 3
    assert main(["train", "--out", str(run), "--resume"]) == 0  # the flag form: already done
    assert "already finished" in capsys.readouterr().out
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_config_file_starts_a_new_run_and_options_override_it(tiny_cifar10, tmp_path, capsys):
    options = tmp_path / "options.yaml"
    options.write_text(
        f"model: plain8|16\ndataset: cifar10\ndata-dir: {tiny_cifar10}\nepochs: 1\nseed: 2\n"
    )
    assert (
        main(["train", "--config", str(options), "--seed", "3", "--out", str(tmp_path / "a")]) == 0
    )
    stored = json.loads((tmp_path / "a" / "config.json").read_text())
    assert stored["config"]["model"] == "plain8|16" and stored["config"]["seed"] == 3
    # A run's own config.json starts a new run like it.
    again = ["train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")]
    assert main(again) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["config"] == stored["config"]
    capsys.readouterr()
    (tmp_path / "bad.json").write_text('{"modle": "plain11"}')
    assert (
        main(["train", "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "c")]) == 2
    )
    assert "unknown option 'modle'" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert (
        main(["train", "--config", str(tmp_path / "list.json"), "--out", str(tmp_path / "c")]) == 2
    )
    assert "expected options as a mapping" in capsys.readouterr().err


def _literal(text: str) -> bool:
    """A default written as a value (a number, true/false, a list) rather than in words."""
    try:
        float(text)
    except ValueError:
        return text in ("True", "False") or text.startswith("[")
    return True


def _shown_defaults(parser) -> dict[str, str]:
    """Each option's "(default: X)" as ``--help`` prints it, by its dest."""
    import re

    shown = {}
    for action in parser._actions:
        match = re.search(r"\(default: ([^)]*)\)$", (action.help or "").replace("%%", "%"))
        if match and action.dest != "help":
            shown[action.dest] = match[1]
    return shown


def test_every_default_that_help_shows_is_the_one_the_command_uses(monkeypatch):
    """For every subcommand and option: what ``--help`` says the default is, is the value the
    command runs with when the option is not given (a grid's own defaults included). Each
    command runs up to the library call that would do the work, which records what it got."""
    import argparse
    import dataclasses

    from plainnet.cli import build_parser

    got: dict = {}

    def record(*args, **kwargs):
        got.update(kwargs)
        for value in args:
            if isinstance(value, TrainConfig):
                got.update(dataclasses.asdict(value))
            elif isinstance(value, dict):  # a grid's base configuration
                got.update(value)

    for target in ("plainnet.train.train", "plainnet.lr_find.lr_find",
                   "plainnet.reproduce.reproduce", "plainnet.sweep.sweep"):  # fmt: skip
        monkeypatch.setattr(target, record)
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    required = {"train": ["--out", "x"], "lr-find": ["--out", "x"], "evaluate": ["x"],
                "export": ["x"], "report": ["x"], "reproduce": ["--out", "x"],
                "sweep": ["--out", "x"], "schedules": []}  # fmt: skip
    checked = 0
    for name, sub in commands.choices.items():
        got.clear()
        args = parser.parse_args([name, *required[name]])
        if name in ("train", "lr-find", "reproduce", "sweep"):
            args.argv = [name]
            args.func(args)
        for dest, text in _shown_defaults(sub).items():
            value = got.get(dest, getattr(args, dest, None))
            if value is None:  # no value: the help says in words what happens then
                assert not _literal(text), (name, dest, text)
            else:
                assert text == str(value), (name, dest, text, value)
            checked += 1
    assert checked > 60, checked
