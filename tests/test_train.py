"""`plainnet train`: learning on real data, exact resume, run directories and bad input."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plainnet.data import load_dataset
from plainnet.errors import UserError
from plainnet.models import build_model
from plainnet.run_dir import RunDir
from plainnet.train import (
    StopRequest,
    TrainConfig,
    default_eval_batch_size,
    predict,
    train,
)

SMALL = "plain16-16|32-32|64"  # a 5-layer member of the plain family: seconds per epoch on a CPU


def quiet(_msg: str) -> None:
    pass


def test_learns_on_real_cifar10_jpegs(cifar10_jpeg_data, tmp_path):
    cfg = TrainConfig(
        model=SMALL, schedule="clr", dataset="folder", epochs=8, train_limit=3000, test_limit=1000
    )
    summary = train(cfg, tmp_path / "run", data=cifar10_jpeg_data, log=quiet)
    assert summary["status"] == "finished"
    assert summary["epochs_done"] == 8
    # Chance is 90 %; this small net on 3,000 images reaches 64-67 % (the exact figure moves
    # with the JPEG decoder's version), a broken step stays near 90 %.
    assert summary["test_error"] < 72.0, summary
    rows = RunDir(tmp_path / "run").read_metrics()
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    keys = {"epoch", "lr", "train_loss", "train_error", "test_loss", "test_error"}
    keys |= {"train_seconds", "eval_seconds", "images_per_second"}
    assert keys <= set(rows[0])
    # The result is the final epoch's error, never the best one.
    assert summary["test_error"] == rows[-1]["test_error"]
    assert summary["best_test_error"] == min(r["test_error"] for r in rows)


def test_evaluation_does_not_depend_on_its_batch_size(cifar10_jpeg_data):
    # The default batch differs by device (1,000 on CUDA, 100 on the CPU); the result must not.
    torch.manual_seed(0)
    model = build_model(SMALL, 10)
    images = cifar10_jpeg_data.test_images[:1000]
    assert default_eval_batch_size(images.device) == 100
    by_batch = {b: predict(model, images, cifar10_jpeg_data, batch_size=b) for b in (37, 1000)}
    default = predict(model, images, cifar10_jpeg_data)
    for logits in by_batch.values():
        torch.testing.assert_close(logits, default, rtol=1e-4, atol=1e-4)
        assert torch.equal(logits.argmax(1), default.argmax(1))


def test_run_directory_contents(tiny_cifar10, tmp_path):
    cfg = TrainConfig(
        model="plain8|16", schedule="sgdr", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=2
    )
    summary = train(cfg, tmp_path / "run", log=quiet)
    run = RunDir(tmp_path / "run")
    config = run.read_config()
    assert config["config"]["model"] == "plain8|16"
    assert config["config"]["epochs"] == 2
    assert config["resolved"]["iters_per_epoch"] == 1  # 100 images, batch 100
    assert config["resolved"]["weight_decay"] == 1e-3
    assert config["resolved"]["eval_batch_size"] == 100  # the CPU default
    assert config["environment"]["torch"] == torch.__version__
    assert config["environment"]["device"] == "cpu"
    assert set(summary) >= {"test_error", "mean_train_seconds", "epochs", "parameters", "status"}
    state = run.load_checkpoint()
    assert state["epoch"] == 2 and state["scheduler"]["t"] == 2
    # Rerunning a finished run does nothing and returns its summary.
    assert train(cfg, tmp_path / "run", log=quiet) == summary


def _weights(run: Path) -> dict:
    return RunDir(run).load_checkpoint()["model"]


def _train_cmd(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "plainnet", "train", "--dataset", "cifar10",
        "--data-dir", str(data_dir), "--model", "plain32-32|64-64", "--schedule", "sgdr",
        "--epochs", "4", "--deterministic", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture
def resume_data(cifar_factory, tmp_path) -> Path:
    root = tmp_path / "data"
    cifar_factory.write_cifar10(root, n_per_batch=300, n_test=200)  # 1,500 training images
    return root


def _wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = RunDir(run).read_metrics() if (run / "metrics.jsonl").exists() else []
        if len(rows) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("training did not progress")


# "SIGTERM twice" is what `timeout` sends: to the process, then to its process group.
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, "SIGTERM twice"])
def test_resume_after_kill_is_bitwise_identical(resume_data, tmp_path, sig):
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(resume_data, straight), check=True, capture_output=True)

    broken = tmp_path / "broken"
    proc = subprocess.Popen(
        _train_cmd(resume_data, broken), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_epochs(broken, 1, proc)
    time.sleep(0.3)  # into the second epoch
    for s in [signal.SIGTERM] * 2 if sig == "SIGTERM twice" else [sig]:
        proc.send_signal(s)
    out, err = proc.communicate(timeout=60)
    if sig != signal.SIGKILL:
        assert proc.returncode == 130, err
        assert b"Traceback" not in err
        assert b": checkpoint saved" in out  # stopped between two steps, not at once
        state = RunDir(broken).load_checkpoint()
        assert state["step"] > 0 or state["epoch"] >= 2  # saved where it stopped
        assert RunDir(broken).read_summary()["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
        # What a SIGKILL during a checkpoint write leaves behind: a half-written temporary file.
        (broken / ".checkpoint.pt.tmp").write_bytes(b"PK\x03\x04 half a zip")

    resumed = subprocess.run(_train_cmd(resume_data, broken), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a, b = _weights(straight), _weights(broken)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_a, rows_b = RunDir(straight).read_metrics(), RunDir(broken).read_metrics()
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert [r["test_error"] for r in rows_a] == [r["test_error"] for r in rows_b]


def test_stop_request_repeats():
    """A repeated SIGTERM is the same request (`timeout` sends two); a second Ctrl-C stops at
    once. Each signal here is handled before the next is sent."""
    with StopRequest() as stop:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pytest.fail("a repeated SIGTERM stopped the run at once")
        assert stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_second_ctrl_c_stops_at_once_and_says_so(tiny_cifar10, tmp_path):
    cfg = TrainConfig(
        model="plain8|16", schedule="sgdr", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=3
    )

    def ctrl_c_twice(msg: str) -> None:
        if msg.startswith("epoch   2/"):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # raises here, inside the epoch loop

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", log=ctrl_c_twice)
    run = RunDir(tmp_path / "run")
    assert run.read_summary()["status"] == "interrupted"  # not "running"
    assert run.load_checkpoint()["epoch"] == 2  # the last complete checkpoint
    summary = train(cfg, tmp_path / "run", log=quiet)
    assert summary["status"] == "finished" and summary["epochs_done"] == 3


def test_other_configuration_in_same_directory_is_refused(tiny_cifar10, tmp_path):
    base = dict(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=1)
    train(TrainConfig(**base), tmp_path / "run", log=quiet)
    with pytest.raises(UserError, match=r"another configuration.*seed"):
        train(TrainConfig(**base, seed=1), tmp_path / "run", log=quiet)
    with pytest.raises(UserError, match="nothing to resume"):
        train(TrainConfig(**base), tmp_path / "empty", resume=True, log=quiet)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        train(TrainConfig(**base), tmp_path / "other", log=quiet)


def test_run_made_before_a_new_option_existed_resumes(tiny_cifar10, tmp_path):
    """A config.json without an option that plainnet added later (here ``cuda_graphs``) is the
    same configuration when the option is at its default, and another one when it is not."""
    base = dict(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=2)
    run = RunDir(tmp_path / "run")
    train(TrainConfig(**base), run.path, log=quiet)
    record = run.read_config()
    del record["config"]["cuda_graphs"]
    run.write_config(record)
    run.write_summary({**run.read_summary(), "status": "running"})
    summary = train(TrainConfig(**base), run.path, log=quiet)
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    with pytest.raises(UserError, match=r"another configuration \(differs in: cuda_graphs\)"):
        train(TrainConfig(**base, cuda_graphs="off"), run.path, log=quiet)


def test_divergence_stops_with_status_and_keeps_last_good_checkpoint(tiny_cifar10, tmp_path):
    run = tmp_path / "run"
    # The step schedule's warm-up epoch runs at lr_min, then lr_max blows the weights up.
    cfg = TrainConfig(
        model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), schedule="step",
        lr_min=0.01, lr_max=1e30, clip_norm=0,
    )  # fmt: skip
    with pytest.raises(UserError, match="NaN"):
        train(cfg, run, log=quiet)
    assert RunDir(run).read_summary()["status"] == "diverged"
    rows = RunDir(run).read_metrics()
    assert 1 <= len(rows) < 164 and rows[0]["train_loss"] < 10
    state = RunDir(run).load_checkpoint()
    assert state["epoch"] == len(rows)  # the checkpoint of the last epoch that stayed finite
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(
    tiny_cifar10, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    cfg = TrainConfig(
        model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), schedule="step", epochs=3
    )
    real_save, calls = torch.save, []

    def fills_disk_on_second_call(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *a, **k)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fills_disk_on_second_call)
    with pytest.raises(UserError, match="disk full"):
        train(cfg, run, log=quiet)
    assert RunDir(run).load_checkpoint()["epoch"] == 1
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    assert train(cfg, run, log=quiet)["status"] == "finished"  # free space, rerun, continue


def test_second_process_on_same_directory_is_refused(resume_data, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        _train_cmd(resume_data, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for_epochs(out, 1, first)
        second = subprocess.run(_train_cmd(resume_data, out), capture_output=True, text=True)
        assert second.returncode == 2
        assert "already in use by pid" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # A killed holder leaves no stuck lock: the next start resumes.
    third = subprocess.run(_train_cmd(resume_data, out), capture_output=True, text=True)
    assert third.returncode == 0, third.stderr


def test_planted_checkpoint_cannot_run_code(tiny_cifar10, tmp_path):
    run = tmp_path / "run"
    base = dict(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=1)
    cfg = TrainConfig(**base)
    train(cfg, run, log=quiet)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, run / "checkpoint.pt")
    (run / "summary.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(UserError, match=r"checkpoint\.pt: unreadable checkpoint"):
        train(cfg, run, log=quiet)
    assert not marker.exists()


def test_bad_input_is_one_line(tmp_path, tiny_cifar10):
    cases = [
        (["--model", "vgg19"], "unknown model"),
        (["--model", "resnet21"], "6n+2"),
        (["--scale", "0"], "must be a positive number"),
        (["--lr-max", "-1"], "must be a positive number"),
        (["--epochs", "0"], "must be a positive number"),
        (["--schedule", "cosine"], "invalid choice"),
        (["--device", "cpu", "--cuda-graphs", "on"], "--cuda-graphs on needs --device cuda"),
        (["--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")], "cifar"),
    ]
    for extra, message in cases:
        cmd = [sys.executable, "-m", "plainnet", "train", "--out", str(tmp_path / "r"), *extra]
        env = {**os.environ, "PLAINNET_DATA": str(tmp_path / "nodata")}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 2, (extra, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1], (extra, result.stderr)
    # A corrupt checkpoint is named.
    run = tmp_path / "corrupt"
    train(
        TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=2),
        run,
        log=quiet,
    )
    RunDir(run).write_summary({"status": "running"})
    (run / "checkpoint.pt").write_bytes(b"\x00" * 100)
    cmd = [sys.executable, "-m", "plainnet", "train", "--out", str(run), "--model", "plain8|16",
           "--dataset", "cifar10", "--data-dir", str(tiny_cifar10), "--epochs", "2"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{run / 'checkpoint.pt'}: unreadable checkpoint" in result.stderr


def test_loaded_dataset_matches_official_cifar100_layout(tiny_cifar100, tmp_path):
    data = load_dataset("cifar100", tiny_cifar100, download=False)
    cfg = TrainConfig(model="plain8|16", dataset="cifar100", epochs=1)
    summary = train(cfg, tmp_path / "run", data=data, log=quiet)
    assert (
        summary["parameters"] > 0
        and RunDir(tmp_path / "run").read_config()["resolved"]["num_classes"] == 100
    )


def test_tensorboard_option_needs_the_package(tiny_cifar10, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = TrainConfig(
        model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=1, tensorboard=True
    )
    with pytest.raises(UserError, match="pip install tensorboard"):
        train(cfg, tmp_path / "run", log=quiet)
    assert RunDir(tmp_path / "run").is_empty()  # nothing written: the same command can rerun


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
        code = "import torch; from plainnet.train import environment as e; "
        code += "print(e(torch.device('cpu'))['git_commit'])"
        env = {**os.environ, "PYTHONPATH": str(repo / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        return out.stdout.strip()

    assert recorded_commit() == head.stdout.strip()
    with open(repo / "src" / "plainnet" / "errors.py", "a") as f:
        f.write("# edited after the commit\n")
    assert recorded_commit() == head.stdout.strip() + "-dirty"


def test_deterministic_run_leaves_the_process_as_it_found_it(tiny_cifar10, tmp_path):
    """torch's determinism switch is process-global: a ``--deterministic`` run turns it on for
    itself only, so the runs after it in the same process (a grid, a notebook) are unaffected."""
    base = dict(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=1)
    assert not torch.are_deterministic_algorithms_enabled()
    train(TrainConfig(**base, deterministic=True), tmp_path / "run", log=quiet)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()
