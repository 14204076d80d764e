"""benchmarks/: the throughput benchmark end to end on the CPU, its conventional pipeline's
preprocessing and its FLOP count (the tools/ scripts: tests/test_tools.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plainnet.data import augment_batch, normalize

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "throughput.py"
TINY = "plain8-8|16"


def load_bench():
    spec = importlib.util.spec_from_file_location("throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


def test_benchmark_runs_end_to_end_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--models", TINY, "--steps", "2", "--reps", "2", "--warmup", "1"]
    args += ["--train-images", "300", "--test-images", "200", "--eval-images", "200"]
    result = run_bench(*args, "--workers", "1", "--profile", "--json", str(out))
    assert result.returncode == 0, result.stderr
    r = json.loads(out.read_text())
    assert r["environment"]["device"] == "cpu"
    assert r["batch_size"] == 100
    assert r["peak_flops_per_second"] > 1e9  # a measured matmul: at least 1 GFLOP/s
    m = r["models"][TINY]
    for kind in ("plainnet", "conventional"):
        p = m[kind]
        rate = p["train_images_per_second"]
        assert len(rate["reps"]) == 2 and all(v > 0 for v in rate["reps"])
        assert rate["min"] <= rate["median"] <= rate["max"]
        assert p["seconds_per_epoch"] == pytest.approx(50_000 / rate["median"])
        assert p["eval_images_per_second"]["median"] > 0
        assert p["peak_memory_mib"] > 10  # this process's resident set: torch alone is more
        assert p["achieved_flops_per_second"] == pytest.approx(
            m["training_flops_per_image"] * rate["median"]
        )
    # plainnet runs what `plainnet train` runs on a CPU: channels-last, fp32, eager.
    switches = m["plainnet"]["switches"]
    assert (switches["amp"], switches["channels_last"]) == ("off", True)
    assert not switches["compile"] and not switches["cuda_graphs"]
    pairs = [
        a / b
        for a, b in zip(
            m["plainnet"]["train_images_per_second"]["reps"],
            m["conventional"]["train_images_per_second"]["reps"],
            strict=True,
        )
    ]
    assert m["ratio"]["train"]["median"] == pytest.approx(float(np.median(pairs)))
    # The printed table carries the same figures.
    assert "| " + TINY.replace("|", "\\|") in result.stdout and "**ratio**" in result.stdout
    # The profile of plainnet's eager CPU step: a table of top ops, the host's dispatches per
    # step (the network's layers alone are more than 50), and no CUDA launches to count.
    assert "Self CPU time total" in m["profile"]
    assert m["host_work_per_step"]["host_ops"] > 50
    assert set(m["host_work_per_step"]) == {"host_ops"}
    assert f"per step: {m['host_work_per_step']['host_ops']:.0f} host ops" in result.stdout


def test_json_keeps_each_model_measured_before_a_time_limit(tmp_path):
    """The JSON is rewritten after each model: killed during the second model, the run has
    left the first model's figures (the GPU check's steps run under time limits)."""
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--models", f"{TINY},resnet110", "--steps", "2", "--reps", "2"]
    args += ["--warmup", "1", "--train-images", "300", "--test-images", "200"]
    args += ["--eval-images", "200", "--workers", "1", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), *args], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    try:
        while not out.exists() and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the JSON appeared only at the end"
        proc.kill()  # as a time limit would, during ResNet-110
    finally:
        proc.kill()
        proc.communicate()
    r = json.loads(out.read_text())
    assert list(r["models"]) == [TINY]
    assert r["models"][TINY]["plainnet"]["train_images_per_second"]["median"] > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_user_mistakes_end_in_one_line(capsys):
    bench = load_bench()
    assert bench.main(["--device", "cpu", "--models", "nosuchnet", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("throughput: error: unknown model 'nosuchnet'")
    args = ["--device", "cpu", "--models", TINY, "--train-images", "50", "--test-images", "10"]
    assert bench.main(args) == 2
    assert "at least one batch" in capsys.readouterr().err
    assert bench.main(["--device", "cpu", "--models", " , "]) == 2
    assert capsys.readouterr().err == "throughput: error: --models names no model\n"


def test_conventional_preprocessing_matches_plainnet(cifar10_jpeg_data):
    """The DataLoader pipeline's per-image transforms produce what plainnet's batched
    augmentation and normalisation produce: the same images, just made another way."""
    bench = load_bench()
    data = cifar10_jpeg_data
    images = data.train_images[:16]
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = data.train_labels[:16].numpy()
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    expected = normalize(images, mean, std)

    plain = bench.ConventionalCIFAR(hwc, labels, data.mean, data.std, train=False)
    got = torch.stack([plain[i][0] for i in range(16)])
    assert [plain[i][1] for i in range(16)] == labels.tolist()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    # Training: each output is one of the 9 x 9 x 2 pad-4 crops and flips of its image, and
    # over many draws the shifts cover the whole range.
    torch.manual_seed(0)
    augmented = bench.ConventionalCIFAR(hwc, labels, data.mean, data.std, train=True)
    candidates = [
        (dy, dx, flip) for dy in range(-4, 5) for dx in range(-4, 5) for flip in (False, True)
    ]
    seen = set()
    for i in range(16):
        x = augmented[i][0]
        img = images[i : i + 1].expand(len(candidates), -1, -1, -1)
        shifts = torch.tensor([[dy, dx] for dy, dx, _ in candidates])
        flips = torch.tensor([f for _, _, f in candidates])
        options = normalize(augment_batch(img, "padcrop", shifts, flips), mean, std)
        match = [k for k in range(len(candidates)) if torch.allclose(options[k], x, atol=1e-5)]
        assert match, f"image {i}: not a pad-4 crop/flip of its source"
        seen.add(candidates[match[0]][:2])
    assert len(seen) > 8  # random crops, not one fixed offset


def test_training_flops_count_forward_and_backward():
    """A two-conv plain net by hand: forward, weight gradients, and input gradients for all
    layers except the first (the images need no gradient)."""
    bench = load_bench()
    conv1 = 2 * 3 * 8 * 9 * 32 * 32  # 3 -> 8 channels, 3x3, at 32 x 32
    conv2 = 2 * 8 * 16 * 9 * 16 * 16  # 8 -> 16 after the 2x2 pooling
    fc = 2 * 16 * 512
    classifier = 2 * 512 * 100
    forward = conv1 + conv2 + fc + classifier
    expected = 2 * forward + (conv2 + fc + classifier)
    assert bench.training_flops("plain8|16", 100) == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_benchmark_on_cuda(tmp_path):
    from plainnet.config import TrainConfig, resolve_switches

    bench = load_bench()
    out = tmp_path / "bench.json"
    args = ["--device", "cuda", "--models", TINY, "--quick", "--train-images", "1000"]
    args += ["--test-images", "500", "--workers", "2"]  # a check of function, not of speed
    assert bench.main([*args, "--profile", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["models"][TINY]
    expected = resolve_switches(TrainConfig(), torch.device("cuda")).record()
    assert r["plainnet"]["switches"] == expected
    for kind in ("plainnet", "conventional"):
        assert r[kind]["train_images_per_second"]["median"] > 0
        assert r[kind]["peak_memory_mib"] > 0  # CUDA allocator peak
    # With the whole step as one CUDA graph, a step is one graph replay and few launches.
    work = r["host_work_per_step"]
    assert work["graph_launches"] >= 1, work


def test_k_runs_in_one_process_are_measured_against_k_runs_one_after_another(tmp_path):
    """``--together K`` (K runs in turns, as --runs-per-process trains them) is timed in the
    same run as the same K runs trained one after the other, and compared with them repetition
    by repetition."""
    out = tmp_path / "k.json"
    args = ["--device", "cpu", "--models", TINY, "--steps", "2", "--reps", "2", "--warmup", "1"]
    args += ["--train-images", "300", "--test-images", "200", "--eval-images", "200"]
    result = run_bench(*args, "--only", "plainnet", "--together", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    m = json.loads(out.read_text())["models"][TINY]
    kinds = {"plainnet", "one after another x2", "together x2"}
    assert set(m) >= kinds and "conventional" not in m
    sequential = m["one after another x2"]["train_images_per_second"]["reps"]
    ratios = m["together x2"]["over_sequential"]["reps"]
    rates = m["together x2"]["train_images_per_second"]["reps"]
    assert ratios == pytest.approx([a / b for a, b in zip(rates, sequential, strict=True)])
    assert "x one after another" in result.stdout
