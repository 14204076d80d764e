"""Where a run ran: package and library versions, the git commit, the device, the host."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import plainnet


def git_commit() -> str | None:
    """The commit of the package's checkout, with ``-dirty`` (as ``git describe --dirty``)
    when its tracked sources differ from it: a copied or edited tree must not pass for the
    commit. None outside a git checkout."""
    try:
        git = ["git", "-C", str(Path(__file__).resolve().parent)]
        out = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or None
        if commit is not None:
            diff = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "."], timeout=5)
            commit += "-dirty" if diff.returncode == 1 else ""
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict[str, Any]:
    """``config.json``'s ``environment``: versions, git commit, device, host."""
    return {
        "plainnet": plainnet.__version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": device_name(device),
        "hostname": platform.node(),
    }
