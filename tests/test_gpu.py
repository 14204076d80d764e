"""The training step's fast paths on each device: the same code with a device argument.

The ``cuda`` cases are marked ``gpu`` and skip without a CUDA device; benchmarks/gpu_check.sh
runs them (``pytest -m gpu``). The ``cpu`` cases run in the ordinary suite, so the code paths
the GPU takes (bf16 autocast, channels-last, the step factory) stay tested without one.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from plainnet.errors import UserError
from plainnet.models import build_model
from plainnet.schedules import ScheduledLR, paper_schedule
from plainnet.train import TrainConfig, make_train_step, param_groups, resolve_switches, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = "plain16-16|32-32|64"
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, NO_CUDA])]


def on(device: str) -> torch.device:
    return torch.device(device)


def make_step(model, device, compile_mode=None, **switches):
    """A step built the way `plainnet train` builds it (fused SGD on CUDA, foreach on CPU)."""
    optimizer = torch.optim.SGD(
        param_groups(model, 1e-3),
        lr=0.0,
        momentum=0.9,
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )
    # A small rate keeps the comparison about the step, not about chaotic divergence.
    scheduler = ScheduledLR(optimizer, paper_schedule("sgdr", 10, 1.0, lr_max=0.01))
    options = {"amp": False, "channels_last": False, "compile": False, **switches}
    return make_train_step(
        model,
        optimizer,
        scheduler,
        mean=torch.tensor([125.3, 123.0, 113.9], device=device),
        std=torch.tensor([63.0, 62.1, 66.7], device=device),
        augment="shift",
        clip_norm=10.0,
        compile_mode=compile_mode,
        **options,
    )


def batches(device, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, 256, (100, 3, 32, 32), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (100,), generator=g)
        shifts = torch.randint(-4, 5, (100, 2), generator=g)
        flips = torch.rand(100, generator=g) < 0.5
        out.append(tuple(t.to(device) for t in (x, y, shifts, flips)))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_follows_the_fp32_step(device):
    """bf16 autocast + channels-last (+ torch.compile on CUDA) takes the same steps as the
    plain fp32 step from the same weights, to bf16 accuracy."""
    dev = on(device)
    torch.manual_seed(0)
    reference = build_model(SMALL, 10).to(dev)
    fast = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    ref_step = make_step(reference, dev)
    fast_step = make_step(fast, dev, amp=True, channels_last=True, compile=dev.type == "cuda")
    for batch in batches(dev):
        ref_loss, ref_wrong, ref_lr = ref_step(*batch)
        loss, wrong, lr = fast_step(*batch)
        assert lr == ref_lr
        assert float(loss) == pytest.approx(float(ref_loss), rel=0.01)
        assert abs(int(wrong) - int(ref_wrong)) <= 5  # of 100
    for p_ref, p in zip(reference.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p.float(), p_ref, rtol=0.05, atol=1e-2)


def load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks/throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_follows_the_eager_step_and_dispatches_less(device):
    """With compile, torch.compile takes the whole forward side of the step (augmentation,
    normalisation, network, loss, error count) and the clipping: the same updates as the eager
    step, while the host dispatches a fraction of the ops (on a GPU: of the kernel launches)."""
    dev = on(device)
    torch.manual_seed(0)
    eager_model = build_model(SMALL, 10).to(dev)
    compiled_model = copy.deepcopy(eager_model)
    eager = make_step(eager_model, dev)
    compiled = make_step(compiled_model, dev, compile=True)
    for batch in batches(dev):
        loss, wrong, lr = compiled(*batch)
        ref_loss, ref_wrong, ref_lr = eager(*batch)
        assert lr == ref_lr
        assert float(loss) == pytest.approx(float(ref_loss), rel=5e-3)
        assert abs(int(wrong) - int(ref_wrong)) <= 2  # of 100
    for p_ref, p in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=0.05, atol=1e-2)

    host_dispatches = load_benchmark().host_dispatches
    dispatched = {}
    for name, step in (("eager", eager), ("compiled", compiled)):
        with torch.profiler.profile() as prof:
            step(*batch)
        dispatched[name] = [e.name for e in host_dispatches(prof.events())]
    # The augmentation's gather, the loss and the clipping's global norm run in compiled code.
    for op in ("aten::gather", "aten::cross_entropy_loss", "aten::linalg_vector_norm"):
        assert op in dispatched["eager"] and op not in dispatched["compiled"], op
    assert len(dispatched["compiled"]) < len(dispatched["eager"]) / 2, dispatched


@pytest.mark.gpu
@NO_CUDA
def test_cuda_step_matches_cpu_step():
    """The same fp32 step on both devices from the same weights and batch gives the same loss
    and weights (up to TF32 convolutions and reduction order)."""
    dev = on("cuda")
    torch.manual_seed(0)
    cpu_model = build_model(SMALL, 10)
    cuda_model = copy.deepcopy(cpu_model).to(dev)
    cpu_step, cuda_step = make_step(cpu_model, torch.device("cpu")), make_step(cuda_model, dev)
    for cpu_batch in batches(torch.device("cpu"), n=2):
        loss_cpu = float(cpu_step(*cpu_batch)[0])
        loss_cuda = float(cuda_step(*(t.to(dev) for t in cpu_batch))[0])
        assert loss_cuda == pytest.approx(loss_cpu, rel=5e-3)
    for p_cpu, p_cuda in zip(cpu_model.parameters(), cuda_model.parameters(), strict=True):
        torch.testing.assert_close(p_cuda.cpu(), p_cpu, rtol=0.02, atol=1e-3)


@pytest.mark.gpu
@NO_CUDA
def test_cuda_graphs_step_matches_default_compile():
    """torch.compile's reduce-overhead mode (CUDA graphs) makes the same updates."""
    dev = on("cuda")
    torch.manual_seed(0)
    a = build_model(SMALL, 10).to(dev).to(memory_format=torch.channels_last)
    b = copy.deepcopy(a)
    switches = {"amp": True, "channels_last": True, "compile": True}
    step_a = make_step(a, dev, **switches)
    step_b = make_step(b, dev, compile_mode="reduce-overhead", **switches)
    for batch in batches(dev, n=6):
        loss_a = float(step_a(*batch)[0])
        loss_b = float(step_b(*batch)[0])
        assert loss_b == pytest.approx(loss_a, rel=0.02)


@pytest.mark.gpu
@NO_CUDA
def test_auto_switches_on_cuda():
    dev = on("cuda")
    assert resolve_switches(TrainConfig(), dev) == {
        "amp": True,
        "channels_last": True,
        "compile": True,
        "cuda_graphs": True,
    }
    # Under torchrun (DDP) CUDA graphs stay off unless asked for; without compile they cannot be.
    assert not resolve_switches(TrainConfig(), dev, distributed=True)["cuda_graphs"]
    assert resolve_switches(TrainConfig(cuda_graphs="on"), dev, distributed=True)["cuda_graphs"]
    assert not resolve_switches(TrainConfig(compile="off"), dev)["cuda_graphs"]


def test_speed_switches_on_the_cpu():
    """The CPU gets channels-last alone; CUDA graphs asked for there are one clear error."""
    cpu = on("cpu")
    assert resolve_switches(TrainConfig(), cpu) == {
        "amp": False,
        "channels_last": True,
        "compile": False,
        "cuda_graphs": False,
    }
    for cfg in (TrainConfig(cuda_graphs="on"), TrainConfig(cuda_graphs="on", compile="on")):
        with pytest.raises(UserError, match="--cuda-graphs on needs --device cuda"):
            resolve_switches(cfg, cpu)
    with pytest.raises(UserError, match="--cuda-graphs must be one of"):
        TrainConfig(cuda_graphs="yes").validate()


@pytest.mark.gpu
@NO_CUDA
def test_trains_on_real_jpegs_on_cuda(cifar10_jpeg_data, tmp_path):
    """`plainnet train` on the GPU with every fast path on learns real CIFAR-10."""
    on("cuda")
    cfg = TrainConfig(
        model=SMALL,
        schedule="clr",
        dataset="folder",
        device="cuda",
        epochs=6,
        train_limit=10_000,
        test_limit=2_000,
    )
    summary = train(cfg, tmp_path / "run", data=cifar10_jpeg_data, log=lambda _m: None)
    assert summary["status"] == "finished" and summary["epochs_done"] == 6
    assert summary["test_error"] < 60.0, summary  # chance is 90 %


@pytest.mark.gpu
@NO_CUDA
def test_benchmark_on_cuda(tmp_path):
    dev = on("cuda")
    bench = load_benchmark()
    out = tmp_path / "bench.json"
    args = ["--device", "cuda", "--models", SMALL, "--quick", "--train-images", "1000"]
    args += ["--test-images", "500", "--workers", "2"]  # a check of function, not of speed
    assert bench.main([*args, "--profile", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["models"][SMALL]
    assert r["plainnet"]["switches"] == resolve_switches(TrainConfig(), dev)
    for kind in ("plainnet", "conventional"):
        assert r[kind]["train_images_per_second"]["median"] > 0
        assert r[kind]["peak_memory_mib"] > 0  # CUDA allocator peak
    # The profiler's names for kernel launches and graph replays are the ones counted: with
    # CUDA graphs, a step replays its forward and backward graphs and still launches some kernels.
    work = r["host_work_per_step"]
    assert work["graph_launches"] >= 2 and work["kernel_launches"] > 0, work
