"""The authors' recipe: the model and its optimizer, the schedule, and one training step, as
plainnet runs them.

SGD with momentum 0.9, weight decay only on the tensors the authors decayed (`param_groups`),
gradient clipping at global norm 10, batches of 100 from `DeviceLoader`, the learning rate of
every iteration from its schedule (`schedule_for`). `build_step` is the one place that turns a
configuration, data and a device into a `TrainStep`: training, the range test and the
benchmarks all call it. `TrainStep` is the iteration with all its state on the device: the
batch's position, the iteration counter, the learning rate (read from a table of every
iteration's rate into the optimizer as a 0-d tensor) and the epoch's running sums. A step is a
fixed sequence of device work that asks the host nothing, so on a GPU it can be captured once
and replayed as a single CUDA graph (``cuda_graphs``), and it never waits for the device.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from plainnet.config import Switches, TrainConfig
from plainnet.data import DeviceLoader, ImageData, augment_batch, normalize
from plainnet.distributed import World
from plainnet.errors import UserError
from plainnet.models import build_model, count_parameters
from plainnet.schedules import Schedule, paper_schedule

# The authors' L2 penalty lambda * sum(w^2) has gradient 2 * lambda * w: PyTorch's weight_decay
# is 2 * lambda (docs/recipe.md): Plain family 5e-4 -> 1e-3, ResNets 2e-4 -> 4e-4.
DEFAULT_WEIGHT_DECAY = {"plain": 1e-3, "resnet": 4e-4}
CAPTURE_AFTER = 3  # eager steps before the step is captured as a CUDA graph (warm-up)
ForwardLoss = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def resolved_weight_decay(cfg: TrainConfig) -> float:
    """``cfg.weight_decay``, else the authors' value for the model's family."""
    if cfg.weight_decay is not None:
        return cfg.weight_decay
    return DEFAULT_WEIGHT_DECAY["resnet" if cfg.model.startswith("resnet") else "plain"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay only on the tensors the authors decayed (``model.decayed_parameters()``)."""
    decayed = {id(p) for p in model.decayed_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


def seed_everything(seed: int) -> None:
    """Seed the generators that draw the initial weights (the data plan has its own)."""
    torch.manual_seed(seed)
    random.seed(seed)


def batch_sizes(cfg: TrainConfig, world: World) -> tuple[int, int]:
    """(images per step over all processes, images per step on this process): the global
    batch stays ``cfg.batch_size`` under torchrun, split over the processes, unless
    ``cfg.scale_batch`` makes it the batch of each process."""
    if cfg.scale_batch:
        return cfg.batch_size * world.size, cfg.batch_size
    return cfg.batch_size, cfg.batch_size // world.size


def schedule_for(cfg: TrainConfig, iters_per_epoch: int, world_size: int = 1) -> Schedule:
    """The run's learning rate at every iteration (of the global batch): the paper's schedule
    ``cfg.schedule`` at ``cfg.effective_scale`` of its length, with the run's bounds, global
    decay and SGDR stepping, times the number of processes under ``--scale-batch``."""
    schedule = paper_schedule(
        cfg.schedule, iters_per_epoch, cfg.effective_scale, epochwise_sgdr=cfg.epochwise_sgdr,
        lr_min=cfg.lr_min, lr_max=cfg.lr_max, delta=cfg.lr_decay,
    )  # fmt: skip
    if cfg.scale_batch and world_size > 1:
        schedule = dataclasses.replace(schedule, lr_scale=float(world_size))
    return schedule


def build_model_and_optimizer(
    cfg: TrainConfig,
    num_classes: int,
    device: torch.device,
    switches: Switches,
    *,
    sync_bn: bool = False,
) -> tuple[nn.Module, torch.optim.SGD]:
    """``cfg.model`` on ``device`` (channels-last if switched on) and its fused SGD: momentum
    ``cfg.momentum``, the weight decay on the decayed tensors only, and a learning rate that is
    one 0-d tensor on the device shared by both groups (`TrainStep` writes each iteration's
    rate into it). Seed first (`seed_everything`): the global generator draws the weights. A
    model too large for the device's memory is a one-line `UserError`."""
    try:
        model = build_model(cfg.model, num_classes, width_mult=cfg.width_mult)
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device)
        if switches.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, build_optimizer(model, cfg, device)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if "memory" not in str(err).lower():
            raise
        with torch.device("meta"):
            n = count_parameters(build_model(cfg.model, num_classes, width_mult=cfg.width_mult))
        raise UserError(
            f"{cfg.model} (width x{cfg.width_mult:g}, {n:,} parameters) does not fit in the "
            f"memory of {device}: choose a smaller model or --width-mult"
        ) from None


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.SGD:
    """The recipe's fused SGD for ``model`` (any network with ``decayed_parameters``)."""
    optimizer = torch.optim.SGD(
        param_groups(model, resolved_weight_decay(cfg)), lr=0.0, momentum=cfg.momentum, fused=True
    )
    share_lr(optimizer, torch.zeros((), device=device))
    return optimizer


def share_lr(optimizer: torch.optim.Optimizer, lr: torch.Tensor) -> None:
    """Make every group's rate the one tensor ``lr`` (also after ``load_state_dict``, which
    puts the saved groups' values in), fused on the device."""
    for group in optimizer.param_groups:
        group.update(lr=lr, fused=True, foreach=None)


def build_step(
    cfg: TrainConfig,
    data: ImageData,
    device: torch.device,
    switches: Switches,
    rates: torch.Tensor,
    *,
    world: World | None = None,
) -> TrainStep:
    """`cfg`'s training step on ``data``, as every caller builds it: seeded with ``cfg.seed``,
    the model and its optimizer on ``device`` (`build_model_and_optimizer`), under torchrun
    wrapped in DDP (with ``cfg.sync_bn``) and fed this rank's shard, batches of this process's
    size (`batch_sizes`) in the seed's order, the data's normalisation, and ``rates`` (one per
    iteration, e.g. `lr_table` of `schedule_for`)."""
    world = world or World()
    set_tf32(device, switches.tf32)
    seed_everything(cfg.seed)
    sync_bn = world.distributed and cfg.sync_bn
    model, optimizer = build_model_and_optimizer(
        cfg, data.num_classes, device, switches, sync_bn=sync_bn
    )
    net: nn.Module = model
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    shard = slice(world.rank, None, world.size)
    loader = DeviceLoader(
        data.train_images[shard], data.train_labels[shard], batch_size=batch_sizes(cfg, world)[1],
        augment=cfg.augment, seed=cfg.seed, rank=world.rank, device=device,
    )  # fmt: skip
    mean, std = (torch.tensor(v, device=device) for v in (data.mean, data.std))
    return TrainStep(
        net, optimizer, loader, rates, mean=mean, std=std, switches=switches,
        clip_norm=cfg.clip_norm, model=model,
    )  # fmt: skip


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA, on or off (process-wide switches:
    every run of a process shares its configuration); nothing to set on the CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


class EpochSums(NamedTuple):
    """An epoch's totals so far: the loss summed over images, misclassified images, images
    seen and steps whose gradient was clipped (over all processes once read by the loop)."""

    loss: float = 0.0
    wrong: int = 0
    images: int = 0
    clipped: int = 0


NO_SUMS = EpochSums()  # an epoch's start


class TrainStep:
    """One SGD iteration of the recipe, on ``loader``'s next batch: augment and normalise on the
    device, forward and backward (autocast and channels-last as switched), clip the global
    gradient norm, set this iteration's rate from ``rates`` (one per iteration), update, and add
    the batch's loss and errors to the epoch's sums. Calling it returns nothing and reads
    nothing back: the state stays on the device (``t``, ``loss_sum``, ``wrong_sum``,
    ``clipped_sum``, ``last_loss``), read by the loop only when it needs a number.

    ``net`` is what the step calls (the model, or its DDP wrapper), ``model`` the model itself
    (default: ``net``). With ``switches.compile`` the forward side (augmentation to error count)
    is compiled as one graph (and its backward as one); with ``switches.cuda_graphs`` the whole
    step is captured as one CUDA graph after `CAPTURE_AFTER` eager warm-up steps and replayed
    from then on; if the capture fails, the step goes on with torch.compile's
    ``reduce-overhead`` graphs of its forward side where it is compiled, else eagerly
    (``graph_error`` says why). Another network layout subclasses it and overrides
    `forward_fn` and `clip_gradients`.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DeviceLoader,
        rates: torch.Tensor,
        *,
        mean: torch.Tensor,
        std: torch.Tensor,
        switches: Switches,
        clip_norm: float,
        model: nn.Module | None = None,
    ):
        self.net, self.optimizer, self.loader, self.rates = net, optimizer, loader, rates
        self.model = model if model is not None else net
        self.mean, self.std = mean, std
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.clip_norm, self.switches = clip_norm, switches
        device = rates.device
        self.lr = optimizer.param_groups[0]["lr"]
        self.t = torch.zeros(1, dtype=torch.int64, device=device)  # the next iteration
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.wrong_sum = torch.zeros((), dtype=torch.int64, device=device)
        self.clipped_sum = torch.zeros((), dtype=torch.int64, device=device)
        self.last_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.scaler = torch.amp.GradScaler(device.type) if switches.amp == "fp16" else None
        self._forward = self.forward_fn()
        self.forward_loss, self.clip = self._forward, self.clip_gradients
        if switches.compile:
            self.forward_loss = torch.compile(self._forward)
            self.clip = torch.compile(self.clip_gradients)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None
        self._eager_steps = 0

    def forward_fn(self) -> ForwardLoss:
        """The forward side of a step: ``(images, labels, shifts, flips) -> (mean loss,
        misclassified images)`` (`forward_loss_fn`)."""
        return forward_loss_fn(self.net, self.mean, self.std, self.loader.augment, self.switches)

    def clip_gradients(self) -> torch.Tensor:
        """Clip the global gradient norm at ``clip_norm``; return how many steps were clipped
        (0 or 1), counted on the device from the norm the clipping computes anyway."""
        norm = nn.utils.clip_grad_norm_(self.params, self.clip_norm, foreach=True)
        return (norm > self.clip_norm).to(torch.int64)

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.switches.cuda_graphs and self.graph_error is None:
            self._warm_up_or_capture()
        else:
            self._step()

    def _step(self) -> None:
        images, labels, shifts, flips = self.loader.next_batch()
        loss, wrong = self.forward_loss(images, labels, shifts, flips)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clipped = self.clip() if self.clip_norm > 0 else None
        torch.index_select(self.rates, 0, self.t, out=self.lr.view(1))
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        with torch.no_grad():  # no detach to dispatch
            self.t.add_(1)
            self.last_loss.copy_(loss)
            self.loss_sum.add_(loss, alpha=self.loader.batch_size)
            self.wrong_sum.add_(wrong)
            if clipped is not None:
                self.clipped_sum.add_(clipped)

    def _warm_up_or_capture(self) -> None:
        """Warm-up steps run on a side stream (as CUDA graph capture wants: the allocator and
        cuBLAS set up their state there); then one step is recorded, not run, and replayed."""
        if self._eager_steps < CAPTURE_AFTER:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step()
            torch.cuda.current_stream().wait_stream(side)
            self._eager_steps += 1
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
        except Exception as err:  # something that cannot be captured: go on without
            torch.cuda.synchronize()
            self.graph_error = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            if self.switches.compile:  # the fallback: torch.compile's graphs of the forward side
                self.forward_loss = torch.compile(self._forward, mode="reduce-overhead")
            self._step()
            return
        self.graph = graph
        graph.replay()

    def start_epoch(
        self, epoch: int, first: int, iteration: int, sums: EpochSums = NO_SUMS
    ) -> None:
        """Point at batch ``first`` of ``epoch`` (global iteration ``iteration``) and start the
        epoch's device sums from ``sums`` (its images are counted by the loop)."""
        self.loader.start_epoch(epoch, first)
        self.t.fill_(iteration)
        self.loss_sum.fill_(float(sums.loss))
        self.wrong_sum.fill_(int(sums.wrong))
        self.clipped_sum.fill_(int(sums.clipped))

    def steps(self, first: int, last: int) -> Iterator[int]:
        """Run the steps ``first + 1 .. last`` of the current epoch, yielding each one's number
        after it ran (the caller decides what to do between steps: this is the one loop)."""
        for step in range(first, last):
            self()
            yield step + 1


def forward_loss_fn(
    net: nn.Module, mean: torch.Tensor, std: torch.Tensor, augment: str, switches: Switches
) -> ForwardLoss:
    """The forward side of a step: uint8 batch -> (mean loss, misclassified images)."""
    device_type = mean.device.type

    def forward_loss(
        images: torch.Tensor, labels: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(augment_batch(images, augment, shifts, flips), mean, std)
        if switches.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = switches.amp_dtype
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, (logits.argmax(1) != labels).sum()

    return forward_loss
