"""research/fused_pipeline.py: ``throughput.py --fused K`` times K runs fused into one network
against the same K runs one after the other, and `FusedStep` trains each member as the
product's step trains that run alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipelines import PlainnetPipeline, synthetic_data
from research.fused_pipeline import FusedPipeline

from plainnet.config import TrainConfig

BENCHMARKS = Path(__file__).resolve().parents[2]
TINY = "plain8-8|16"


def test_fused_runs_are_measured_against_the_same_runs_one_after_another(tmp_path):
    out = tmp_path / "k.json"
    args = ["--device", "cpu", "--models", TINY, "--steps", "2", "--reps", "2", "--warmup", "1"]
    args += ["--train-images", "300", "--test-images", "200", "--eval-images", "200"]
    args += ["--only", "plainnet", "--fused", "2", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent / "src")}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "throughput.py"), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    m = json.loads(out.read_text())["models"][TINY]
    sequential = m["one after another x2"]["train_images_per_second"]["reps"]
    rates = m["fused x2"]["train_images_per_second"]["reps"]
    ratios = m["fused x2"]["over_sequential"]["reps"]
    assert ratios == pytest.approx([a / b for a, b in zip(rates, sequential, strict=True)])


def test_a_fused_member_trains_as_its_run_alone():
    """Member k of the fused step follows run k (seed k) built by the product's builder: the
    same losses for a few steps (float32: equal to a small tolerance), the same clipping."""
    data = synthetic_data(400, 100, num_classes=10)
    cfg = TrainConfig(device="cpu", amp="off", compile="off", channels_last="off")
    fused = FusedPipeline(TINY, data, torch.device("cpu"), cfg, 2)
    alone = [PlainnetPipeline(TINY, data, torch.device("cpu"), cfg, seed) for seed in (0, 1)]
    for _ in range(3):
        fused.advance(1)
        losses = []
        for run in alone:
            run.advance(1)
            losses.append(float(run.step.last_loss))
        # The fused step's loss is the members' losses summed.
        assert float(fused.step.last_loss) == pytest.approx(sum(losses), rel=1e-4)
    assert int(fused.step.clipped_sum) == sum(int(run.step.clipped_sum) for run in alone)
