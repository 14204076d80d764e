"""One run on two processes: torchrun + DistributedDataParallel with gloo on the CPU.

What is and is not identical to a single-process run, and why:
- identical: the initial weights (same seed; DDP also broadcasts rank 0's), the global batch
  (100 = 2 x 50), the iterations per epoch, the learning rate at every iteration, and the
  training images seen per epoch (the two shards together cover the training set);
- not identical: which images share a batch and in what order (each rank shuffles its own
  shard), BatchNorm statistics (computed over each rank's 50 images unless --sync-bn), and the
  order of floating-point sums in the gradient all-reduce. So the weights differ, and only the
  outcome (test error on real data) can be compared, within a tolerance.
A torchrun run killed and restarted is, however, bitwise identical to an uninterrupted torchrun
run: each rank's data plan is a function of (seed, epoch, rank) and gloo sums in a fixed order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plainnet.run_dir import RunDir

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)
SMALL = "plain16-16|32-32|64"


def torchrun(out: Path, *args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(nproc), "-m", "plainnet", "train", "--out", str(out),
        "--deterministic", *args,
    ]  # fmt: skip


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so
    killing its process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_two_processes_match_single_process_on_real_data(cifar10_jpeg, tmp_path):
    cache = os.environ.get("PLAINNET_CACHE")
    args = [
        "--dataset", "folder", "--data-dir", str(cifar10_jpeg), "--model", SMALL,
        "--schedule", "clr", "--epochs", "6", "--train-limit", "3000", "--test-limit", "1000",
    ]  # fmt: skip
    e = env() if cache is None else {**env(), "PLAINNET_CACHE": cache}
    ddp = subprocess.run(torchrun(tmp_path / "ddp", *args), capture_output=True, text=True, env=e)
    assert ddp.returncode == 0, ddp.stdout[-1500:] + ddp.stderr[-3000:]
    single_cmd = [sys.executable, "-m", "plainnet", "train", "--out", str(tmp_path / "one")]
    single = subprocess.run([*single_cmd, *args], capture_output=True, text=True, env=e)
    assert single.returncode == 0, single.stderr[-3000:]

    a, b = RunDir(tmp_path / "ddp"), RunDir(tmp_path / "one")
    assert a.read_config()["resolved"]["world_size"] == 2
    assert a.read_config()["resolved"]["global_batch"] == 100
    rows_a, rows_b = a.read_metrics(), b.read_metrics()
    assert [r["lr"] for r in rows_a] == [r["lr"] for r in rows_b]
    assert [r["iterations"] for r in rows_a] == [r["iterations"] for r in rows_b]
    # Only rank 0 logs and writes: one line per epoch, one checkpoint, no per-rank files.
    assert ddp.stdout.count("epoch   1/6") == 1
    names = {p.name for p in (tmp_path / "ddp").iterdir()}
    assert names == {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", ".lock",
                     "snapshots"}  # fmt: skip
    err_a, err_b = a.read_summary()["test_error"], b.read_summary()["test_error"]
    assert err_a < 70 and err_b < 70, (err_a, err_b)  # both learn (chance: 90 %)
    assert abs(err_a - err_b) < 10, (err_a, err_b)


def test_killed_torchrun_run_resumes_bitwise(cifar_factory, tmp_path):
    data = tmp_path / "data"
    cifar_factory.write_cifar10(data, n_per_batch=200, n_test=100)
    args = ["--dataset", "cifar10", "--data-dir", str(data), "--model", "plain32-32|64",
            "--schedule", "sgdr", "--epochs", "18"]  # fmt: skip
    straight = subprocess.run(
        torchrun(tmp_path / "straight", *args), capture_output=True, text=True, env=env()
    )
    assert straight.returncode == 0, straight.stdout[-1500:] + straight.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        torchrun(out, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env()
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or len(RunDir(out).read_metrics()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    for pid in [proc.pid, *descendants(proc.pid)]:  # the whole job: agent and both ranks
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert RunDir(out).read_summary()["status"] == "running"

    resumed = subprocess.run(torchrun(out, *args), capture_output=True, text=True, env=env())
    assert resumed.returncode == 0, resumed.stdout[-1500:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert RunDir(out).read_summary()["status"] == "finished"
    x, y = RunDir(tmp_path / "straight").load_checkpoint(), RunDir(out).load_checkpoint()
    for key in x["model"]:
        assert torch.equal(x["model"][key], y["model"][key]), key


def test_batch_that_does_not_split_is_one_line(tiny_cifar10, tmp_path):
    args = ["--dataset", "cifar10", "--data-dir", str(tiny_cifar10), "--model", "plain8|16",
            "--epochs", "1", "--batch-size", "99"]  # fmt: skip
    result = subprocess.run(
        torchrun(tmp_path / "r", *args), capture_output=True, text=True, env=env()
    )
    assert result.returncode != 0
    assert "plainnet: error: batch size 99 does not split over 2 processes" in result.stderr
    # torchrun prints a traceback of its own agent when a worker fails; none comes from ours.
    assert "plainnet/train.py" not in result.stderr and "plainnet/cli.py" not in result.stderr


def test_scale_batch_logs_the_rate_it_applies(cifar_factory, tmp_path):
    """Under ``--scale-batch`` each process takes a whole batch and the rate is multiplied by
    the number of processes (the linear scaling rule): metrics.jsonl records that rate, the
    one applied, not the single-process schedule's."""
    from plainnet.schedules import paper_schedule

    data = tmp_path / "data"
    cifar_factory.write_cifar10(data, n_per_batch=100, n_test=20)  # 500 training images
    args = ["--dataset", "cifar10", "--data-dir", str(data), "--model", "plain8|16",
            "--schedule", "clr", "--epochs", "2", "--batch-size", "50", "--scale-batch"]  # fmt: skip
    result = subprocess.run(torchrun(tmp_path / "r", *args), capture_output=True, text=True,
                            env=env())  # fmt: skip
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    run = RunDir(tmp_path / "r")
    resolved = run.read_config()["resolved"]
    assert (resolved["global_batch"], resolved["lr_scale"], resolved["iters_per_epoch"]) == (
        100,
        2.0,
        5,
    )
    single = paper_schedule("clr", 5, 2 / 160)  # the paper's CLR at this length, one process
    rows = run.read_metrics()
    assert [r["iterations"] for r in rows] == [5, 10]
    assert [r["lr"] for r in rows] == [2 * single(t - 1) for t in (5, 10)]
