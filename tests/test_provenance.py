"""Where a run ran: the recorded git commit and device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from plainnet.provenance import environment


def test_recorded_commit_says_when_the_sources_differ_from_it(tmp_path):
    """A run's environment names the git commit of the package it ran, with ``-dirty`` when the
    package's tracked sources differ from that commit (a copied or edited tree)."""
    package = Path(__file__).resolve().parents[1] / "src" / "plainnet"
    repo = tmp_path / "repo"
    shutil.copytree(
        package, repo / "src" / "plainnet", ignore=shutil.ignore_patterns("__pycache__")
    )
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "copy"]):
        subprocess.run([*git, *args], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)

    def recorded_commit() -> str:
        code = "from plainnet.provenance import git_commit; print(git_commit())"
        env = {**os.environ, "PYTHONPATH": str(repo / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        return out.stdout.strip()

    assert recorded_commit() == head.stdout.strip()
    with open(repo / "src" / "plainnet" / "errors.py", "a") as f:
        f.write("# edited after the commit\n")
    assert recorded_commit() == head.stdout.strip() + "-dirty"


def test_environment_names_versions_and_device():
    env = environment(torch.device("cpu"))
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["device_name"].endswith(f"({torch.get_num_threads()} threads)")
