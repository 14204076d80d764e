"""`TrainStep`: the recipe's iteration with its state on the device.

It must make the updates of the conventional step (host-side batch slicing, a float rate set on
the optimizer each iteration), never ask the device for a value inside a step, and keep every
piece of its state in the same storage from step to step (what a captured CUDA graph needs).
The ``cuda`` cases are marked ``gpu`` and run in tools/gpu_check.sh.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from plainnet.config import Switches, TrainConfig, resolve_switches
from plainnet.data import DeviceLoader, augment_batch, epoch_plan, normalize
from plainnet.models import build_model
from plainnet.recipe import TrainStep, build_model_and_optimizer, param_groups, seed_everything
from plainnet.runtime import determinism
from plainnet.schedules import lr_table, paper_schedule

SMALL = "plain16-16|32-32|64"
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, NO_CUDA])]
MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]
EAGER = Switches(amp="off", channels_last=False, compile=False, cuda_graphs=False)


def images(n: int = 500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, 10, (n,), generator=g)


def make_step(
    device: str, switches: Switches = EAGER, batch: int = 100, model=None, lr_max: float = 0.05
):
    """A step as `plainnet train` builds it, on 500 random images, SGDR over 2 epochs."""
    dev = torch.device(device)
    cfg = TrainConfig(model=SMALL)
    seed_everything(0)
    built, optimizer = build_model_and_optimizer(cfg, 10, dev, switches)
    if model is not None:
        built.load_state_dict(model.state_dict())
    x, y = images()
    loader = DeviceLoader(x, y, batch_size=batch, augment="shift", seed=3, device=dev)
    schedule = paper_schedule("sgdr", len(y) // batch, 4 / 180, lr_max=lr_max)
    step = TrainStep(
        built, optimizer, loader, lr_table(schedule, schedule.total_iters, dev),
        mean=torch.tensor(MEAN, device=dev), std=torch.tensor(STD, device=dev),
        switches=switches, clip_norm=10.0,
    )  # fmt: skip
    return built, step, schedule


def reference_run(model: nn.Module, schedule, epochs: int, batch: int = 100) -> list[float]:
    """The conventional step the loop ran before: the batch sliced on the host from the epoch
    plan, the rate set as a float each iteration, foreach SGD. Returns each step's loss."""
    x, y = images()
    optimizer = torch.optim.SGD(param_groups(model, 1e-3), lr=0.0, momentum=0.9, foreach=True)
    params = [p for p in model.parameters() if p.requires_grad]
    losses, t = [], 0
    for epoch in range(epochs):
        order, shifts, flips = epoch_plan(3, epoch, 0, len(y), "shift", (32, 32))
        for b in range(len(y) // batch):
            idx = order[b * batch : (b + 1) * batch]
            inputs = normalize(augment_batch(x[idx], "shift", shifts[idx], flips[idx]), MEAN, STD)
            loss = F.cross_entropy(model(inputs), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 10.0, foreach=True)
            for group in optimizer.param_groups:
                group["lr"] = schedule(t)
            optimizer.step()
            losses.append(float(loss.detach()))
            t += 1
    return losses


def test_step_follows_the_conventional_step_across_an_epoch():
    """Two epochs of five steps from the same weights: the same losses and weights to a few
    float32 ulp (the rate is a float32 tensor now, a float before; fused SGD against foreach)."""
    model, step, schedule = make_step("cpu")
    reference = copy.deepcopy(model)
    expected = reference_run(reference, schedule, epochs=2)
    got = []
    for epoch in range(2):
        step.start_epoch(epoch, 0, epoch * 5)
        for _ in step.steps(0, 5):
            got.append(float(step.last_loss))
    assert int(step.t) == 10
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=0)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    # The epoch's sums are the sums of the steps' losses times the batch.
    assert float(step.loss_sum) == pytest.approx(100 * sum(got[5:]), rel=1e-6)


class NoHostSync(TorchDispatchMode):
    """Fails on every op that hands a device value to the host (or whose output shape depends
    on values, which is the same thing): inside a step nothing may."""

    SYNCS: ClassVar = {
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.item.default,
        torch.ops.aten.is_nonzero.default,
        torch.ops.aten.nonzero.default,
        torch.ops.aten.nonzero_static.default,
        torch.ops.aten.equal.default,
        torch.ops.aten.allclose.default,
        torch.ops.aten.masked_select.default,
        torch.ops.aten._unique2.default,
        torch.ops.aten.unique_consecutive.default,
    }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS:
            raise AssertionError(f"{func} reads a value back to the host inside a step")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("switches", [EAGER, Switches("fp16", True, False, False)], ids=str)
def test_step_asks_the_host_nothing(switches):
    """Not one read-back inside a step, also with fp16 autocast and its gradient scaler."""
    _, step, _ = make_step("cpu", switches)
    step.start_epoch(0, 0, 0)
    step()  # the first step creates the momentum buffers
    with NoHostSync():
        for _ in range(3):
            step()
    assert int(step.t) == 4
    # The mode does catch a read-back:
    with pytest.raises(AssertionError, match="to the host"), NoHostSync():
        float(step.loss_sum)


def test_step_state_keeps_its_storage():
    """Weights, BatchNorm statistics, momentum buffers, counters and sums stay where they are
    from one step to the next (and across an epoch's start): a CUDA graph replays addresses."""
    model, step, _ = make_step("cpu")
    step.start_epoch(0, 0, 0)
    step()

    def storage() -> dict[str, int]:
        tensors = {f"p.{k}": v for k, v in model.state_dict(keep_vars=True).items()}
        for i, p in enumerate(step.params):
            tensors[f"momentum.{i}"] = step.optimizer.state[p]["momentum_buffer"]
        for name in ("t", "lr", "loss_sum", "wrong_sum", "last_loss", "rates"):
            tensors[name] = getattr(step, name)
        for name in ("order", "shifts", "flips", "window", "images"):
            tensors[name] = getattr(step.loader, name)
        return {k: v.data_ptr() for k, v in tensors.items()}

    before = storage()
    for _ in step.steps(1, 5):
        pass
    step.start_epoch(1, 0, 5)
    step()
    assert storage() == before


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_follows_the_fp32_step(device):
    """bf16 autocast + channels-last (+ torch.compile on CUDA) takes the same steps as the
    plain fp32 step from the same weights, to bf16 accuracy."""
    # A small rate keeps the comparison about the step, not about chaotic divergence.
    reference, ref_step, _ = make_step(device, lr_max=0.01)
    fast_switches = Switches("bf16", True, device == "cuda", False)
    fast, fast_step, _ = make_step(device, fast_switches, model=reference, lr_max=0.01)
    for step in (ref_step, fast_step):
        step.start_epoch(0, 0, 0)
    for _ in range(4):
        ref_step()
        fast_step()
        assert float(fast_step.last_loss) == pytest.approx(float(ref_step.last_loss), rel=0.01)
    assert abs(int(fast_step.wrong_sum) - int(ref_step.wrong_sum)) <= 8  # of 400
    for p_ref, p in zip(reference.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p.float(), p_ref, rtol=0.05, atol=1e-2)


def load_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_follows_the_eager_step_and_dispatches_less(device):
    """With compile, torch.compile takes the whole forward side of the step (augmentation,
    normalisation, network, loss, error count) and the clipping: the same updates as the eager
    step, while the host dispatches a fraction of the ops (on a GPU: of the kernel launches)."""
    eager_model, eager, _ = make_step(device, lr_max=0.01)
    compiled_model, compiled, _ = make_step(
        device, Switches("off", False, True, False), model=eager_model, lr_max=0.01
    )
    for step in (eager, compiled):
        step.start_epoch(0, 0, 0)
    for _ in range(4):
        compiled()
        eager()
        loss, ref = float(compiled.last_loss), float(eager.last_loss)
        assert loss == pytest.approx(ref, rel=5e-3)
    for p_ref, p in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=0.05, atol=1e-2)
    host_dispatches = load_benchmark().host_dispatches
    dispatched = {}
    for name, step in (("eager", eager), ("compiled", compiled)):
        with torch.profiler.profile() as prof:
            step()
        dispatched[name] = [e.name for e in host_dispatches(prof.events())]
    # The augmentation's gather, the loss and the clipping's global norm run in compiled code.
    for op in ("aten::gather", "aten::cross_entropy_loss", "aten::linalg_vector_norm"):
        assert op in dispatched["eager"] and op not in dispatched["compiled"], op
    assert len(dispatched["compiled"]) < len(dispatched["eager"]) / 2, dispatched


@pytest.mark.gpu
@NO_CUDA
def test_whole_step_cuda_graph_replays_the_eager_step_bitwise():
    """The whole step captured as one CUDA graph (after its warm-up steps) and replayed makes
    exactly the eager step's updates: bitwise equal weights after 20 steps in one process."""
    fp32_graphs = Switches("off", True, False, True)
    eager_model, eager, _ = make_step("cuda", Switches("off", True, False, False))
    graph_model, graphed, _ = make_step("cuda", fp32_graphs, model=eager_model)
    with determinism(True):  # the same kernels in both, and torch's switches restored
        for step in (eager, graphed):
            for epoch in range(4):  # 20 steps, across epoch boundaries
                step.start_epoch(epoch, 0, 5 * epoch)
                for _ in range(5):
                    step()
    assert graphed.graph is not None, graphed.graph_error
    for p, q in zip(
        eager_model.state_dict().values(), graph_model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q)
    assert torch.equal(eager.loss_sum, graphed.loss_sum)


@pytest.mark.gpu
@NO_CUDA
def test_cuda_step_matches_cpu_step():
    """The same fp32 step on both devices from the same weights gives the same losses and
    weights (up to TF32 convolutions and reduction order)."""
    cpu_model, cpu_step, _ = make_step("cpu")
    cuda_model, cuda_step, _ = make_step("cuda", model=cpu_model)
    for step in (cpu_step, cuda_step):
        step.start_epoch(0, 0, 0)
    for _ in range(2):
        cpu_step()
        cuda_step()
        assert float(cuda_step.last_loss) == pytest.approx(float(cpu_step.last_loss), rel=5e-3)
    for p_cpu, p_cuda in zip(cpu_model.parameters(), cuda_model.parameters(), strict=True):
        torch.testing.assert_close(p_cuda.cpu(), p_cpu, rtol=0.02, atol=1e-3)


def test_build_model_and_optimizer_follows_the_recipe():
    cfg = TrainConfig(model=SMALL)
    seed_everything(0)
    model, optimizer = build_model_and_optimizer(
        cfg, 10, torch.device("cpu"), resolve_switches(cfg, torch.device("cpu"))
    )
    decayed, rest = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.decayed_parameters()}
    assert decayed["lr"] is rest["lr"] and decayed["lr"].dim() == 0  # one shared 0-d rate
    assert decayed["fused"] and decayed["momentum"] == 0.9
    seed_everything(0)
    again, _ = build_model_and_optimizer(cfg, 10, torch.device("cpu"), EAGER)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)  # the seed decides the weights
    assert build_model(SMALL, 10).fc.bn.momentum == 0.01  # Keras BatchNorm
