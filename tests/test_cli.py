"""The command line's behaviour a user sees: output, files, one-line errors."""

import subprocess
import sys

from plainnet.cli import main


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
