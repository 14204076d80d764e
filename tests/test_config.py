"""`TrainConfig`: one check of every option, old records read as today's options, and the speed
switches chosen per device (GPUs faked by their compute capability)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import plainnet.config as config
from plainnet.config import TrainConfig, resolve_switches, upgrade
from plainnet.errors import UserError

NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clip_norm": float("nan")}, "--clip-norm must be a number >= 0, got nan"),
        ({"weight_decay": float("inf")}, "--weight-decay must be a number >= 0, got inf"),
        ({"weight_decay": float("nan")}, "--weight-decay must be a number >= 0, got nan"),
        ({"lr_max": float("nan")}, "--lr-max must be a positive number, got nan"),
        ({"scale": float("inf")}, "--scale must be a positive number, got inf"),
        ({"momentum": 1.0}, "--momentum must be in [0, 1)"),
        ({"lr_decay": 0.5}, "--lr-decay must be a number >= 1"),
        ({"seed": 2**64}, "--seed must be an integer in [0, 4294967295]"),
        ({"seed": -1}, "--seed must be an integer in [0, 4294967295]"),
        ({"batch_size": 0}, "--batch-size must be a positive number"),
        ({"batch_size": 2.5}, "--batch-size must be an integer"),
        ({"train_limit": True}, "--train-limit must be a number"),
        ({"schedule": "cosine"}, "--schedule must be one of step, clr, sgdr"),
        ({"amp": "on"}, "--amp must be one of auto, bf16, fp16, off"),
        ({"model": "vgg19"}, "unknown model"),
        ({"model": "resnet21"}, "6n+2"),
        ({"epochs": 3.0, "scale": 0.5}, "give --epochs or --scale"),
        ({"lr_min": 0.1, "lr_max": 0.01}, "must be below --lr-max"),
        ({"model": 5}, "--model must be a string, got 5"),  # from a --config file, say
        ({"snapshots": "yes"}, "--snapshots must be true or false"),
        ({"batch_size": None}, "--batch-size needs a value"),
    ],
)
def test_every_bad_option_is_one_line(options, message):
    with pytest.raises(UserError) as err:
        TrainConfig(**options).validate()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_defaults_validate_and_lengths():
    TrainConfig().validate()
    assert TrainConfig(schedule="sgdr", epochs=18).effective_scale == pytest.approx(0.1)
    assert TrainConfig(schedule="clr", scale=0.5).effective_scale == 0.5


def test_old_records_read_as_todays_options():
    """A config.json of an older plainnet: options added since take their defaults, and
    ``amp: on`` (bf16 autocast, before fp16 existed) is bf16."""
    old = {"model": "plain11", "amp": "on", "seed": 3, "no_longer_an_option": 1}
    new = upgrade(old)
    assert new["amp"] == "bf16" and new["seed"] == 3 and "no_longer_an_option" not in new
    assert new["eval_precision"] == "fp32" and new["lr_decay"] is None
    assert set(new) == {f.name for f in dataclasses.fields(TrainConfig)}


def fake_gpu(monkeypatch, capability, triton=True) -> torch.device:
    monkeypatch.setattr(config, "device_capability", lambda device: capability)
    monkeypatch.setattr(config, "has_triton", lambda: triton)
    return torch.device("cuda")


@pytest.mark.parametrize(
    ("capability", "amp", "compile_"),
    [((9, 0), "bf16", True), ((8, 0), "bf16", True), ((7, 5), "fp16", True),
     ((7, 0), "fp16", True), ((6, 0), "off", False)],
    ids=["H100", "A100", "T4", "V100", "P100"],
)  # fmt: skip
def test_auto_switches_fit_every_gpu(monkeypatch, capability, amp, compile_):
    """bf16 from compute capability 8.0, fp16 with a scaler on 7.x, fp32 below; compile where
    Triton supports the GPU (7.0 up); the whole step as a CUDA graph in one process, not with
    fp16's gradient scaler; and config.json records why."""
    device = fake_gpu(monkeypatch, capability)
    s = resolve_switches(TrainConfig(), device)
    assert (s.amp, s.compile, s.channels_last) == (amp, compile_, True)
    assert s.cuda_graphs == (amp != "fp16")
    why = s.record()["why"]
    assert f"capability {capability[0]}.{capability[1]}" in why["amp"]
    assert not resolve_switches(TrainConfig(), device, distributed=True).cuda_graphs
    assert resolve_switches(TrainConfig(cuda_graphs="on"), device, distributed=True).cuda_graphs


def test_explicit_switches_that_cannot_work_are_one_line(monkeypatch):
    device = fake_gpu(monkeypatch, (7, 5))
    with pytest.raises(UserError, match=r"--amp bf16: this GPU \(compute capability 7.5\)"):
        resolve_switches(TrainConfig(amp="bf16"), device)
    old = fake_gpu(monkeypatch, (6, 1))
    with pytest.raises(UserError, match=r"Triton needs compute capability 7\.0, this GPU has 6\.1"):
        resolve_switches(TrainConfig(compile="on"), old)
    no_triton = fake_gpu(monkeypatch, (9, 0), triton=False)
    with pytest.raises(UserError, match="Triton is not installed"):
        resolve_switches(TrainConfig(compile="on"), no_triton)
    assert not resolve_switches(TrainConfig(), no_triton).compile
    assert resolve_switches(TrainConfig(amp="fp16"), fake_gpu(monkeypatch, (9, 0))).amp == "fp16"


def test_switches_on_the_cpu():
    """The CPU gets channels-last alone; CUDA graphs asked for there are one clear error."""
    cpu = torch.device("cpu")
    s = resolve_switches(TrainConfig(), cpu)
    assert (s.amp, s.channels_last, s.compile, s.cuda_graphs) == ("off", True, False, False)
    assert s.amp_dtype is None and resolve_switches(TrainConfig(amp="bf16"), cpu).amp_dtype
    with pytest.raises(UserError, match="--cuda-graphs on needs --device cuda"):
        resolve_switches(TrainConfig(cuda_graphs="on"), cpu)
    assert resolve_switches(TrainConfig(compile="on"), cpu).compile


@pytest.mark.gpu
@NO_CUDA
def test_auto_switches_on_this_gpu():
    s = resolve_switches(TrainConfig(), torch.device("cuda"))
    capability = torch.cuda.get_device_capability()
    assert s.amp == ("bf16" if capability >= (8, 0) else "fp16" if capability >= (7, 0) else "off")
    assert s.channels_last and s.cuda_graphs == (s.amp != "fp16")


@pytest.mark.parametrize(
    ("capability", "auto"), [((9, 0), True), ((8, 0), True), ((7, 5), False), (None, False)],
    ids=["H100", "A100", "T4", "CPU"],
)  # fmt: skip
def test_tf32_is_on_where_the_gpu_has_it_unless_switched_off(monkeypatch, capability, auto):
    """``auto`` turns TF32 on from compute capability 8.0 (the fast path of `plainnet train`),
    ``off`` keeps fp32 exact as the authors' GPUs computed it; config.json records both."""
    device = fake_gpu(monkeypatch, capability) if capability else torch.device("cpu")
    s = resolve_switches(TrainConfig(), device)
    assert s.tf32 is auto and s.record()["tf32"] is auto
    assert "tf32" in s.record()["why"]
    assert resolve_switches(TrainConfig(tf32="off"), device).tf32 is False
    if auto:
        assert resolve_switches(TrainConfig(tf32="on"), device).tf32 is True
    else:
        with pytest.raises(UserError, match="--tf32 on needs"):
            resolve_switches(TrainConfig(tf32="on"), device)


def test_the_step_builder_sets_tf32_on_cuda_and_leaves_the_cpu_alone():
    from plainnet.recipe import set_tf32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for enabled in (True, False):
            set_tf32(torch.device("cuda"), enabled)
            assert torch.backends.cuda.matmul.allow_tf32 is enabled
            assert torch.backends.cudnn.allow_tf32 is enabled
        set_tf32(torch.device("cpu"), True)
        assert torch.backends.cuda.matmul.allow_tf32 is False  # untouched
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
