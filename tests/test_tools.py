"""tools/: the GPU helpers (valid scripts with a usage line; the inputs' packing round trip)
and the GPU check's rehearsal on the CPU (marked ``rehearsal``: it runs pytest inside pytest
and takes a minute, so it runs on purpose, not in the default suite)."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plainnet.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def _jpeg_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)


def test_pack_gpu_inputs_round_trip(tmp_path, monkeypatch):
    src = tmp_path / "jpegs"
    _jpeg_folder(src)
    archive = tmp_path / "out" / "cifar10-jpeg.tar.gz"
    script = ROOT / "tools" / "pack_gpu_inputs.sh"
    result = subprocess.run(
        ["bash", str(script), str(src), str(archive)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "12 images" in result.stdout
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert all(m.uid == 0 and m.mtime == 0 for m in tar.getmembers())
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert names[0] == "cifar10-jpeg/test/cat/0000.jpg" and len(names) == 12
    monkeypatch.setenv("PLAINNET_CACHE", str(tmp_path / "cache"))
    unpacked = load_dataset("folder", tmp_path / "unpacked" / "cifar10-jpeg")
    original = load_dataset("folder", src)
    assert torch.equal(unpacked.train_images, original.train_images)
    assert unpacked.classes == ["cat", "dog"]

    bad = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "no train/ and test/" in bad.stderr


def test_gpu_check_script_is_valid_bash():
    for name in ("gpu_check.sh", "gpu_runs.sh", "pack_gpu_inputs.sh"):
        result = subprocess.run(["bash", "-n", str(ROOT / "tools" / name)])
        assert result.returncode == 0, name
    usage = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh")], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "usage" in usage.stderr


@pytest.mark.rehearsal
def test_gpu_check_rehearsal_runs_every_step(tmp_path):
    """The GPU check's CPU rehearsal: every step runs and writes its figures (a pytest inside
    pytest: run on purpose, ``python3 -m pytest -m rehearsal``)."""
    env = {**os.environ, "PLAINNET_GPU_CHECK_DEVICE": "cpu"}
    script = ROOT / "tools" / "gpu_check.sh"
    result = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    status = (tmp_path / "status.txt").read_text()
    steps = ("plain11", "resnet110", "k3", "grouped_conv", "resnet110_nchw", "pytest", "research")
    for step in steps:
        assert f"   {step}: exit 0 after" in status, status
    k3 = json.loads((tmp_path / "k3.json").read_text())["models"]
    assert all({"together x3", "fused x3"} <= set(m) for m in k3.values())
    work = json.loads((tmp_path / "plain11.json").read_text())["models"]
    assert next(iter(work.values()))["host_work_per_step"]["host_ops"] > 0
