"""`plainnet train`: learning on real data, exact resume, run directories and bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plainnet.config import TrainConfig
from plainnet.data import load_dataset
from plainnet.errors import UserError
from plainnet.evaluate import default_eval_batch_size, predict
from plainnet.models import build_model
from plainnet.run_dir import RunDir
from plainnet.train import train, train_together

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
    stats = (cifar10_jpeg_data.mean, cifar10_jpeg_data.std)
    by_batch = {b: predict(model, images, *stats, batch_size=b) for b in (37, 1000)}
    default = predict(model, images, *stats)
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
    assert config["config"]["eval_precision"] == "fp32"  # as the authors evaluated
    assert config["resolved"]["lr_decay"] == 1.0 and config["identity"]["num_classes"] == 10
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
# SIGKILL in the default run; the same resume after the other stops at another moment: slow.
AGAIN = pytest.mark.slow


@pytest.mark.parametrize(
    "sig",
    [signal.SIGKILL, pytest.param(signal.SIGINT, marks=AGAIN),
     pytest.param("SIGTERM twice", marks=AGAIN)],
)  # fmt: skip
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


def test_deterministic_run_leaves_the_process_as_it_found_it(tiny_cifar10, tmp_path):
    """torch's determinism switch is process-global: a ``--deterministic`` run turns it on for
    itself only, so the runs after it in the same process (a grid, a notebook) are unaffected."""
    base = dict(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=1)
    assert not torch.are_deterministic_algorithms_enabled()
    train(TrainConfig(**base, deterministic=True), tmp_path / "run", log=quiet)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_real_jpegs_on_cuda(cifar10_jpeg_data, tmp_path):
    """`plainnet train` on the GPU with every fast path on learns real CIFAR-10."""
    cfg = TrainConfig(
        model=SMALL, schedule="clr", dataset="folder", device="cuda", epochs=6,
        train_limit=10_000, test_limit=2_000,
    )  # fmt: skip
    summary = train(cfg, tmp_path / "run", data=cifar10_jpeg_data, log=quiet)
    assert summary["status"] == "finished" and summary["epochs_done"] == 6
    assert summary["test_error"] < 60.0, summary  # chance is 90 %
    resolved = RunDir(tmp_path / "run").read_config()["resolved"]
    assert resolved["cuda_graphs"] and resolved["compile"]


def test_runs_trained_together_equal_runs_trained_alone(tiny_cifar10, tmp_path):
    """Two seeds in one process, in turns: each run's directory is exactly what training it
    alone gives (bitwise on the CPU), and a member's checkpoint is a normal run's."""
    base = dict(model="plain8|16", schedule="clr", dataset="cifar10", data_dir=str(tiny_cifar10),
                epochs=2, batch_size=20)  # fmt: skip
    cfgs = [TrainConfig(**base, seed=s) for s in (0, 1)]
    together = train_together(cfgs, [tmp_path / "t0", tmp_path / "t1"], log=quiet)
    assert [r["status"] for r in together] == ["finished", "finished"]
    for seed in (0, 1):
        alone = train(cfgs[seed], tmp_path / f"a{seed}", log=quiet)
        assert together[seed]["test_error"] == alone["test_error"]
        a, b = _weights(tmp_path / f"t{seed}"), _weights(tmp_path / f"a{seed}")
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(_weights(tmp_path / "t0")["fc.linear.weight"],
                           _weights(tmp_path / "t1")["fc.linear.weight"])  # fmt: skip
    longer = TrainConfig(**{**base, "epochs": 3}, seed=0)
    with pytest.raises(UserError, match="differs in: epochs"):
        train(longer, tmp_path / "t0", log=quiet)  # a member's directory is a normal run's


def test_a_diverging_member_stops_alone(tiny_cifar10, tmp_path):
    good = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=3,
                       schedule="step", batch_size=20)  # fmt: skip
    bad = TrainConfig(**{**vars(good), "lr_min": 0.01, "lr_max": 1e30, "clip_norm": 0.0})
    results = train_together([bad, good], [tmp_path / "bad", tmp_path / "good"], log=quiet)
    assert isinstance(results[0], UserError) and "NaN" in str(results[0])
    assert RunDir(tmp_path / "bad").read_summary()["status"] == "diverged"
    assert results[1]["status"] == "finished" and results[1]["epochs_done"] == 3


def test_an_error_inside_a_run_marks_it_failed(tiny_cifar10, tmp_path, monkeypatch):
    cfg = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=2)

    def boom(*args, **kwargs):
        raise RuntimeError("out of something")

    monkeypatch.setattr("plainnet.train.evaluate", boom)
    with pytest.raises(RuntimeError):
        train(cfg, tmp_path / "run", log=quiet)
    summary = RunDir(tmp_path / "run").read_summary()
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: out of something"


def test_header_and_closing_lines(tiny_cifar10, tmp_path):
    lines: list[str] = []
    cfg = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=2)
    train(cfg, tmp_path / "run", log=lines.append)
    assert lines[0].startswith("loading cifar10")
    assert lines[1].startswith("plain8|16 (16,298 parameters), cifar10 (100 train / 20 test")
    assert "sgdr for 2 epochs = 2 steps of 100" in lines[1] and "amp off" in lines[1]
    assert (
        lines[-1].startswith("finished: final test error ") and str(tmp_path / "run") in lines[-1]
    )


def test_a_checkpoint_in_the_older_layout_still_resumes(tiny_cifar10, tmp_path):
    """Runs made by the plainnet before this layout: foreach SGD with a float rate in the
    optimizer's state, no identity in the checkpoint, ``amp: on`` and no ``eval_precision``
    or ``lr_decay`` in config.json. They resume, and finish as an uninterrupted run does."""
    cfg = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=3,
                      batch_size=20, deterministic=True)  # fmt: skip
    straight = train(cfg, tmp_path / "straight", log=quiet)
    run = RunDir(tmp_path / "old")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run.path, log=lambda m: os.kill(os.getpid(), signal.SIGINT) if "1/3" in m else 0)
    state = run.load_checkpoint()
    del state["identity"]
    for group in state["optimizer"]["param_groups"]:
        group.update(lr=float(group["lr"]), foreach=True, fused=None)
    torch.save(state, run.checkpoint)
    record = run.read_config()
    del record["identity"]
    for key in ("eval_precision", "lr_decay"):
        del record["config"][key]
    run.write_config(record)
    resumed = train(cfg, run.path, log=quiet)
    assert resumed["test_error"] == straight["test_error"]
    a, b = _weights(tmp_path / "straight"), _weights(run.path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_snapshot_of_diverged_weights_is_kept(tiny_cifar10, tmp_path):
    """SGDR starts at its top rate; at 1e30 the weights are NaN after the first step, before the
    epoch's check sees it, and the first cycle ends (a snapshot) at iteration 2 of 10."""
    cfg = TrainConfig(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10),
                      schedule="sgdr", epochs=3, batch_size=10, lr_max=1e30, clip_norm=0.0)  # fmt: skip
    with pytest.raises(UserError, match="NaN"):
        train(cfg, tmp_path / "run", log=quiet)
    assert RunDir(tmp_path / "run").read_summary()["status"] == "diverged"
    for path in RunDir(tmp_path / "run").snapshot_paths():
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_a_stop_during_the_last_epoch_that_lets_it_end_finishes_the_run(tiny_cifar10, tmp_path):
    """The stop request arrives while the last epoch's last step runs: the epoch ends, and with
    it the run, which is finished, not interrupted."""
    base = dict(model="plain8|16", dataset="cifar10", data_dir=str(tiny_cifar10), epochs=2)

    def stop_in_the_last_step(message: str) -> None:
        if message.startswith("epoch   1/2"):
            os.kill(os.getpid(), signal.SIGINT)  # lands in the first step of epoch 2

    # Epoch 2 has two steps; the stop lands after the first: the run stops mid-epoch. With
    # one step an epoch, it lands in the last step and the run ends finished.
    one_step = TrainConfig(**base)
    summary = train(one_step, tmp_path / "one", log=stop_in_the_last_step)
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, batch_size=50), tmp_path / "two", log=stop_in_the_last_step)
    assert RunDir(tmp_path / "two").read_summary()["status"] == "interrupted"
