"""One training run: the authors' recipe, with the data set resident on the device.

The whole loop is `train`: load the data once onto the device, build the model, optimizer and
schedule, then for every epoch draw that epoch's data order and augmentation from a generator
seeded by ``(seed, epoch, rank)``, step through it in batches (augmentation, normalisation and
the forward/backward pass all on the device), evaluate on the test set and checkpoint.

Because an epoch's data plan is a function of ``(seed, epoch, rank)`` alone and the checkpoint
holds the model, the optimizer's momentum, the schedule position and the position inside the
epoch, a resumed run makes exactly the updates the uninterrupted one would have made (bitwise on
the CPU with ``deterministic=True``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import plainnet
from plainnet import distributed
from plainnet.data import AUGMENTATIONS, ImageData, augment_batch, draw_augmentation, normalize
from plainnet.errors import UserError
from plainnet.models import build_model, count_parameters
from plainnet.run_dir import RunDir
from plainnet.schedules import SCHEDULES, ScheduledLR, paper_schedule

# The authors' L2 penalty lambda * sum(w^2) has gradient 2 * lambda * w: PyTorch's weight_decay
# is 2 * lambda (recipe.md): Plain family 5e-4 -> 1e-3, ResNets 2e-4 -> 4e-4.
DEFAULT_WEIGHT_DECAY = {"plain": 1e-3, "resnet": 4e-4}
PAPER_EPOCHS = {"step": 164, "clr": 160, "sgdr": 180}


@dataclass
class TrainConfig:
    """Everything that defines a run (what ``config.json`` records under ``config``).

    Lengths: ``scale`` multiplies every schedule length; ``epochs`` is the same thing said as
    the run's length in epochs (``scale = epochs / paper_epochs``). ``"auto"`` switches resolve
    by device: bf16 autocast, channels-last, ``torch.compile`` and CUDA graphs on CUDA (CUDA
    graphs in a single process only); channels-last alone on the CPU.
    """

    model: str = "plain11"
    schedule: str = "sgdr"
    dataset: str = "cifar100"
    data_dir: str | None = None
    seed: int = 0
    scale: float = 1.0
    epochs: float | None = None
    batch_size: int = 100
    lr_min: float | None = None
    lr_max: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None  # None: the authors' value for the model
    clip_norm: float = 10.0  # 0 disables clipping
    augment: str = "shift"
    epochwise_sgdr: bool = False
    train_limit: int | None = None
    test_limit: int | None = None
    width_mult: float = 1.0
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: str = "auto"
    cuda_graphs: str = "auto"  # torch.compile's reduce-overhead mode (needs CUDA and compile)
    deterministic: bool = False
    scale_batch: bool = False  # under torchrun: global batch = batch_size * world size, lr too
    sync_bn: bool = False
    eval_batch_size: int | None = None  # None: `default_eval_batch_size` for the device
    tensorboard: bool = False
    snapshots: bool = True  # keep the weights at the end of each CLR/SGDR cycle (snapshots/)

    def validate(self) -> None:
        """Raise `UserError` for any option a run cannot start with."""
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose {', '.join(SCHEDULES)}")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"unknown augmentation {self.augment!r}; choose {AUGMENTATIONS}")
        for name in ("scale", "epochs", "lr_min", "lr_max", "width_mult"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise UserError(
                    f"--{name.replace('_', '-')} must be a positive number, got {value}"
                )
        for name in ("batch_size", "train_limit", "test_limit", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UserError("--weight-decay must be >= 0")
        if self.clip_norm < 0 or not 0 <= self.momentum < 1:
            raise UserError("--clip-norm must be >= 0 and --momentum in [0, 1)")
        if self.epochs is not None and self.scale != 1.0:
            raise UserError("give --epochs or --scale, not both (--epochs N means N epochs)")
        if self.lr_min is not None and self.lr_max is not None and self.lr_min >= self.lr_max:
            raise UserError(f"--lr-min {self.lr_min} must be below --lr-max {self.lr_max}")
        for name in ("device", "amp", "channels_last", "compile", "cuda_graphs"):
            allowed = ("auto", "cpu", "cuda") if name == "device" else ("auto", "on", "off")
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        try:
            build_model(self.model, 10, width_mult=self.width_mult)
        except ValueError as err:
            raise UserError(str(err)) from None

    @property
    def effective_scale(self) -> float:
        if self.epochs is not None:
            return self.epochs / PAPER_EPOCHS[self.schedule]
        return self.scale


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def resolve_switches(
    cfg: TrainConfig, device: torch.device, *, distributed: bool = False
) -> dict[str, bool]:
    """Turn the ``auto`` speed switches into on/off for this device (see `TrainConfig`).

    ``distributed``: the run is one of several torchrun processes (CUDA graphs stay off there
    unless asked for). Raises `UserError` for CUDA graphs without CUDA or without compile.
    """
    cuda = device.type == "cuda"
    # Measured on a 2-core Xeon with AVX512-BF16 (benchmarks/throughput.py): bf16 autocast made
    # CPU training slower (104 vs 141 img/s for Plain-11), channels-last faster on both devices.
    # torch.compile does not pay on that CPU (README, Speed): Plain-11 181 vs 175 img/s
    # after 37 s of compiling, ResNet-110 102 vs 112 img/s after 97 s; so it is CUDA-only.
    # On an H100 a batch-100 step is bound by the host's kernel launches (eager Plain-11: 15.5 ms
    # of CPU against 1.9 ms of GPU per step); CUDA graphs replay them in one go: 25,300 against
    # 10,800 img/s. Not measured under DDP, whose gradient hooks run between the kernels.
    auto = {"amp": cuda, "channels_last": True, "compile": cuda}
    out = {k: auto[k] if getattr(cfg, k) == "auto" else getattr(cfg, k) == "on" for k in auto}
    graphs_ok = cuda and out["compile"]
    if cfg.cuda_graphs == "on" and not graphs_ok:
        raise UserError("--cuda-graphs on needs --device cuda and torch.compile (--compile on)")
    out["cuda_graphs"] = graphs_ok and (
        cfg.cuda_graphs == "on" or (cfg.cuda_graphs == "auto" and not distributed)
    )
    return out


def environment(device: torch.device) -> dict[str, Any]:
    """Where the run ran: versions, git commit, device name (``config.json``'s environment).

    The commit gets a ``-dirty`` suffix, as in ``git describe --dirty``, when the package's
    tracked sources differ from it: a copied or edited tree must not pass for the commit."""
    commit = None
    try:
        src = Path(__file__).resolve().parent
        git = ["git", "-C", str(src)]
        out = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() or None
        if commit is not None:
            diff = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "."], timeout=5)
            commit += "-dirty" if diff.returncode == 1 else ""
    except (OSError, subprocess.SubprocessError):
        pass
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"{name} ({torch.get_num_threads()} threads)"
    return {
        "plainnet": plainnet.__version__,
        "git_commit": commit,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "hostname": platform.node(),
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay only on the tensors the authors decayed (`decayed_parameters`)."""
    decayed = {id(p) for p in model.decayed_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


def build_model_and_optimizer(
    cfg: TrainConfig,
    num_classes: int,
    device: torch.device,
    *,
    channels_last: bool,
    sync_bn: bool = False,
) -> tuple[nn.Module, torch.optim.SGD]:
    """The model on ``device`` and its SGD optimizer as the authors' recipe has them: momentum
    ``cfg.momentum``, the model family's weight decay on `decayed_parameters` only (unless
    ``cfg.weight_decay`` overrides it), fused on CUDA and foreach on the CPU. The rate is set
    every iteration by `ScheduledLR`. Seed the global RNG first: it draws the initial weights."""
    model = build_model(cfg.model, num_classes, width_mult=cfg.width_mult)
    family = "resnet" if cfg.model.startswith("resnet") else "plain"
    weight_decay = DEFAULT_WEIGHT_DECAY[family] if cfg.weight_decay is None else cfg.weight_decay
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        param_groups(model, weight_decay),
        lr=0.0,
        momentum=cfg.momentum,
        **({"fused": True} if device.type == "cuda" else {"foreach": True}),
    )
    return model, optimizer


def epoch_plan(
    seed: int, epoch: int, rank: int, n: int, augment: str, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This epoch's order of the ``n`` local images and their augmentation, a pure function of
    ``(seed, epoch, rank)`` (drawn on the CPU, so every device gets the same plan)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_009 + rank)
    order = torch.randperm(n, generator=g)
    shifts, flips = draw_augmentation(n, augment, size, g)
    return order, shifts, flips


def make_train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: ScheduledLR,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    augment: str,
    amp: bool,
    channels_last: bool,
    compile: bool,
    clip_norm: float,
    compile_mode: str | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple]:
    """One SGD iteration as `plainnet train` runs it, on a batch already on the device.

    ``step(images_uint8, labels, shifts, flips)`` augments and normalises the batch (batched
    tensor ops), runs forward and backward (bf16 autocast if ``amp``; channels-last if asked),
    clips the global gradient norm, sets this iteration's rate and updates. It returns
    ``(loss, wrong, lr)``: the mean loss and the number of misclassified images as device
    tensors (reading them would sync) and the rate.

    With ``compile``, `torch.compile` takes the whole forward side of the step, augmentation,
    normalisation, network, loss and error count, as one graph (and so its backward as one
    graph), and the gradient clipping as another. Of the step, only the loss's backward seed
    and the optimizer's update are left to launch from Python: on a GPU the step is bound by
    launches, not by arithmetic (README, Speed). ``compile_mode`` is `torch.compile`'s mode for
    the forward side (None: its default; ``"reduce-overhead"`` adds CUDA-graph capture:
    `recipe_train_step` asks for it when CUDA graphs are on). The clipping always compiles in
    the default mode (fused kernels, no CUDA graph): its inputs, the gradients, are new tensors
    every step.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    device_type = mean.device.type

    def forward_loss(
        images: torch.Tensor, labels: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(augment_batch(images, augment, shifts, flips), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, (logits.argmax(1) != labels).sum()

    def clip_gradients() -> None:
        nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)

    if compile:
        forward_loss = torch.compile(forward_loss, mode=compile_mode)
        clip_gradients = torch.compile(clip_gradients)

    def step(images: torch.Tensor, labels: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor):
        loss, wrong = forward_loss(images, labels, shifts, flips)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm > 0:
            clip_gradients()
        lr = scheduler.step()
        optimizer.step()
        return loss.detach(), wrong, lr

    return step


def recipe_train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: ScheduledLR,
    cfg: TrainConfig,
    switches: dict[str, bool],
    data: ImageData,
    device: torch.device,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple]:
    """`make_train_step` set up from a run's `TrainConfig`, its resolved speed switches
    (`resolve_switches`; CUDA graphs as torch.compile's ``"reduce-overhead"`` mode) and its
    data set's normalisation constants."""
    return make_train_step(
        net,
        optimizer,
        scheduler,
        mean=torch.tensor(data.mean, device=device),
        std=torch.tensor(data.std, device=device),
        augment=cfg.augment,
        amp=switches["amp"],
        channels_last=switches["channels_last"],
        compile=switches["compile"],
        compile_mode="reduce-overhead" if switches["cuda_graphs"] else None,
        clip_norm=cfg.clip_norm,
    )


def default_eval_batch_size(device: torch.device) -> int:
    """Images per evaluation batch: large on a GPU (fewer launches), small on a CPU, where a
    batch of 100 stays in cache (measured on 2 cores: 1.3x faster than 1,000 for Plain-11,
    1.9x for ResNet-110)."""
    return 1000 if device.type == "cuda" else 100


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    data: ImageData,
    *,
    batch_size: int | None = None,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Logits (float32) for uint8 ``images`` already on the model's device, in eval mode,
    ``batch_size`` images at a time (None: `default_eval_batch_size`)."""
    batch_size = batch_size or default_eval_batch_size(images.device)
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size], data.mean, data.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            outs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, data: ImageData, **kw: Any) -> tuple[float, float]:
    """(mean cross-entropy, error rate in %) on ``data``'s test set."""
    logits = predict(model, data.test_images, data, **kw)
    loss = F.cross_entropy(logits, data.test_labels).item()
    error = (logits.argmax(1) != data.test_labels).float().mean().item() * 100
    return loss, error


def capture_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after each step, so a checkpoint is only ever
    taken between two complete updates (a KeyboardInterrupt could land halfway through one).

    A second SIGINT (Ctrl-C pressed again) stops at once. A repeated SIGTERM does not: senders
    send it more than once for one request (`timeout` signals the process and then its process
    group, so the process gets it twice), and they escalate with SIGKILL themselves.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread (not in a notebook worker).
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            return
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _on_keyboard_interrupt(action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` if a KeyboardInterrupt leaves the block, then let it go on."""
    try:
        yield
    except KeyboardInterrupt:
        action()
        raise


class Progress:
    """A one-line progress bar on a terminal; nothing otherwise (the epoch log line remains)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def update(self, epoch: int, step: int, steps: int, ips: float, loss: float, lr: float):
        if self.enabled:
            bar = "#" * int(20 * step / steps)
            sys.stderr.write(
                f"\repoch {epoch:>3} [{bar:<20}] {step}/{steps} "
                f"{ips:,.0f} img/s loss {loss:.3f} lr {lr:.2e}"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")


class Diverged(UserError):
    """The loss became NaN or infinite."""


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data: ImageData | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or continue) the training described by ``cfg`` in run directory ``out``.

    Returns the summary (also in ``out/summary.json``). ``data`` may be passed pre-loaded (on
    the CPU) to train several runs from one copy. ``resume=True`` insists on continuing an
    existing run; without it, a run with the same configuration is continued anyway and a
    different one is refused.
    """
    cfg.validate()
    run = RunDir(out)
    device = resolve_device(cfg.device)
    world = distributed.init(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    log = log if world.is_main else (lambda _msg: None)
    stored = None if run.is_empty() or not run.config.exists() else run.read_config()
    options = dataclasses.asdict(cfg)
    # An option added to plainnet after the run was made counts as its default.
    stored_options = None
    if stored is not None and isinstance(stored.get("config"), dict):
        stored_options = {**dataclasses.asdict(TrainConfig()), **stored["config"]}
    if stored is not None and stored_options != options:
        changed = sorted(k for k in options if (stored_options or {}).get(k) != options[k])
        raise UserError(
            f"{run.path} holds a run with another configuration (differs in: "
            f"{', '.join(changed) or 'format'}); choose another --out or the same options"
        )
    if stored is None and not run.is_empty():
        raise UserError(f"{run.path} is not empty and holds no plainnet run; choose another --out")
    if resume and stored is None:
        raise UserError(f"{run.path}: nothing to resume (no run there yet)")
    if stored is not None and run.summary.exists():
        summary = run.read_summary()
        if summary.get("status") == "finished":
            log(f"{run.path}: already finished (test error {summary['test_error']:.2f} %)")
            return summary

    with run.locked() if world.is_main else contextlib.nullcontext(), _determinism(cfg):
        return _train_locked(cfg, run, device, world, data, log)


@contextlib.contextmanager
def _determinism(cfg: TrainConfig) -> Iterator[None]:
    """``--deterministic`` for this run only: torch's switches are process-global, and a
    deterministic run must not leave the runs after it in the same process deterministic."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not cfg.deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def _train_locked(
    cfg: TrainConfig,
    run: RunDir,
    device: torch.device,
    world: distributed.World,
    data: ImageData | None,
    log: Callable[[str], None],
) -> dict:
    switches = resolve_switches(cfg, device, distributed=world.distributed)

    # ---- data: the whole set on the device, this rank's shard of the training images ----
    if data is None:
        from plainnet.data import load_dataset

        data = load_dataset(cfg.dataset, cfg.data_dir)
    data = data.subset(cfg.train_limit, cfg.test_limit)
    global_batch = cfg.batch_size * (world.size if cfg.scale_batch else 1)
    if global_batch % world.size:
        raise UserError(
            f"batch size {global_batch} does not split over {world.size} processes; "
            "pass --batch-size divisible by the number of processes or --scale-batch"
        )
    local_batch = global_batch // world.size
    iters_per_epoch = len(data.train_labels) // global_batch
    if iters_per_epoch < 1:
        raise UserError(
            f"{len(data.train_labels)} training images are fewer than one batch of {global_batch}"
        )
    shard = slice(world.rank, None, world.size)
    train_x = data.train_images[shard].to(device).contiguous()
    train_y = data.train_labels[shard].to(device)
    test = None
    if world.is_main:  # rank 0 evaluates; only the test split goes to the device beside train_x
        test = dataclasses.replace(
            data,
            train_images=train_x[:0],
            train_labels=train_y[:0],
            test_images=data.test_images.to(device),
            test_labels=data.test_labels.to(device),
        )
    size = tuple(train_x.shape[-2:])

    # ---- model, optimizer, schedule ----
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, optimizer = build_model_and_optimizer(
        cfg,
        data.num_classes,
        device,
        channels_last=switches["channels_last"],
        sync_bn=world.distributed and cfg.sync_bn,
    )
    weight_decay = optimizer.param_groups[0]["weight_decay"]
    schedule = paper_schedule(
        cfg.schedule,
        iters_per_epoch,
        cfg.effective_scale,
        epochwise_sgdr=cfg.epochwise_sgdr,
        lr_min=cfg.lr_min,
        lr_max=cfg.lr_max,
    )
    lr_scale = world.size if (world.distributed and cfg.scale_batch) else 1.0
    scheduler = ScheduledLR(optimizer, schedule, lr_scale=lr_scale)
    total_iters = schedule.total_iters
    # Snapshot ensembles keep the weights at the iteration where each CLR/SGDR cycle ends, i.e.
    # where the rate is at its minimum (also when a shortened cycle ends mid-epoch).
    snapshot_at = set()
    if cfg.snapshots and schedule.name != "step":
        snapshot_at = {round(b * iters_per_epoch) for b in schedule.boundaries}
    num_epochs = math.ceil(total_iters / iters_per_epoch)

    # ---- resume ----
    history: list[dict] = []
    start_epoch, start_step, partial = 0, 0, None
    state = run.load_checkpoint() if run.config.exists() else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        history = list(state["history"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        partial = state.get("partial")
        log(f"resuming {run.path} at epoch {start_epoch + 1}, step {start_step}")

    net: nn.Module = model
    if world.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    train_step = recipe_train_step(net, optimizer, scheduler, cfg, switches, data, device)
    eval_batch_size = cfg.eval_batch_size or default_eval_batch_size(device)

    config_record = {
        "config": dataclasses.asdict(cfg),
        "resolved": {
            **switches,
            "device": str(device),
            "weight_decay": weight_decay,
            "iters_per_epoch": iters_per_epoch,
            "total_iters": total_iters,
            "epochs": num_epochs,
            "schedule_epochs": schedule.epochs,
            "global_batch": global_batch,
            "eval_batch_size": eval_batch_size,
            "world_size": world.size,
            "train_images": len(data.train_labels),
            "test_images": len(data.test_labels),
            "num_classes": data.num_classes,
            "dataset": data.name,
        },
        "environment": environment(device),
        "command": sys.argv,
    }
    parameters = count_parameters(model)
    writer = _tensorboard(run) if (cfg.tensorboard and world.is_main) else None
    if world.is_main:
        run.write_config(config_record)
        run.write_summary(_summary(cfg, history, parameters, "running", num_epochs))
    amp = switches["amp"]
    params = [p for p in model.parameters() if p.requires_grad]
    progress = Progress(world.is_main)

    def checkpoint(epoch: int, step: int, part: dict | None) -> None:
        if world.is_main:
            run.save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": capture_rng(),
                    "epoch": epoch,
                    "step": step,
                    "partial": part,
                    "history": history,
                }
            )

    status = "running"

    def stopped_at_once() -> None:
        # A second Ctrl-C: the last checkpoint stands, and the summary says the run stopped.
        if world.is_main:
            run.write_summary(_summary(cfg, history, parameters, "interrupted", num_epochs))

    with StopRequest() as stop, _on_keyboard_interrupt(stopped_at_once):
        for epoch in range(start_epoch, num_epochs):
            steps = min(iters_per_epoch, total_iters - epoch * iters_per_epoch)
            order, shifts, flips = epoch_plan(
                cfg.seed, epoch, world.rank, len(train_y), cfg.augment, size
            )
            order, shifts, flips = order.to(device), shifts.to(device), flips.to(device)
            first = start_step if epoch == start_epoch else 0
            # The epoch's sums: the loss summed over images and the misclassified images stay
            # on the device (reading them would sync), the images seen are counted here.
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            wrong_sum = torch.zeros((), device=device, dtype=torch.int64)
            seen, seconds = 0, 0.0
            if first and partial is not None:
                # The saved sums are totals over all ranks: rank 0 alone carries them forward.
                if world.is_main:
                    loss_sum += partial["sums"][0]
                    wrong_sum += int(partial["sums"][1])
                    seen = int(partial["sums"][2])
                seconds = float(partial["seconds"])
            model.train()
            _sync(device)
            t0 = time.perf_counter()
            step, stopping = first, False
            lr = schedule(epoch * iters_per_epoch + first)
            while step < steps:
                idx = order[step * local_batch : (step + 1) * local_batch]
                loss, wrong, lr = train_step(train_x[idx], train_y[idx], shifts[idx], flips[idx])
                # Two in-place adds: on a GPU every op the host dispatches costs (README, Speed).
                loss_sum.add_(loss, alpha=len(idx))
                wrong_sum.add_(wrong)
                seen += len(idx)
                step += 1
                if epoch * iters_per_epoch + step in snapshot_at and world.is_main:
                    run.save_snapshot(epoch * iters_per_epoch + step, model.state_dict())
                stopping = stop.signal is not None and not world.distributed
                if step % 50 == 0 or step == steps:
                    # The only host-device syncs in the loop: one in 50 steps. Under torchrun the
                    # ranks agree here on stopping, so they all leave the loop at the same step.
                    loss_total, _, seen_total, signals = _summed_over_ranks(
                        loss_sum, wrong_sum, seen, stop.signal or 0, world
                    )
                    if not math.isfinite(loss_total):
                        break
                    elapsed = seconds + time.perf_counter() - t0
                    rate, mean_loss = seen_total / elapsed, loss_total / seen_total
                    progress.update(epoch + 1, step, steps, rate, mean_loss, lr)
                    stopping = stopping or signals > 0
                if stopping:
                    break
            _sync(device)
            seconds += time.perf_counter() - t0
            progress.close()
            totals = _summed_over_ranks(loss_sum, wrong_sum, seen, 0, world)[:3]
            train_loss = totals[0] / max(totals[2], 1)
            # The last update can break the weights even while its loss was finite: check them
            # too before anything of this epoch is saved.
            weights_ok = bool(torch.stack([p.detach().sum() for p in params]).isfinite().all())
            if not (math.isfinite(train_loss) and weights_ok):
                status = "diverged"
                break
            if stopping and step < steps:
                checkpoint(epoch, step, {"sums": totals, "seconds": seconds})
                status = "interrupted"
                log(f"interrupted at epoch {epoch + 1}, step {step}: checkpoint saved")
                break

            t1 = time.perf_counter()
            test_loss, test_error = (
                evaluate(
                    model,
                    test,
                    batch_size=eval_batch_size,
                    amp=amp,
                    channels_last=switches["channels_last"],
                )
                if world.is_main
                else (float("nan"), float("nan"))
            )
            eval_seconds = time.perf_counter() - t1
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_loss,
                "train_error": 100.0 * totals[1] / max(totals[2], 1),
                "test_loss": test_loss,
                "test_error": test_error,
                "train_seconds": seconds,
                "eval_seconds": eval_seconds,
                "images_per_second": totals[2] / max(seconds, 1e-9),
                "iterations": epoch * iters_per_epoch + steps,
            }
            history.append(row)
            if world.is_main:
                run.write_metrics(history)
                checkpoint(epoch + 1, 0, None)
                run.write_summary(_summary(cfg, history, parameters, "running", num_epochs))
                if writer is not None:
                    for key in ("lr", "train_loss", "train_error", "test_loss", "test_error"):
                        writer.add_scalar(key, row[key], epoch + 1)
                    writer.flush()
            log(
                f"epoch {epoch + 1:>3}/{num_epochs}  lr {lr:.2e}  "
                f"train loss {train_loss:.3f} err {row['train_error']:5.2f} %  "
                f"test loss {test_loss:.3f} err {test_error:5.2f} %  "
                f"{seconds:6.1f} s  {row['images_per_second']:,.0f} img/s"
            )
            if stopping:
                status = "interrupted"
                log(f"interrupted after epoch {epoch + 1}: checkpoint saved")
                break
        else:
            status = "finished"

    summary = _summary(cfg, history, parameters, status, num_epochs)
    if world.is_main:
        run.write_summary(summary)
    # Ranks other than 0 skip the evaluation and the writing: they wait here, so that every rank
    # leaves the loop, and later destroys the process group, together with rank 0.
    distributed.barrier(world)
    if writer is not None:
        writer.close()
    if status == "diverged":
        raise Diverged(
            f"{run.path}: loss became NaN/inf in epoch {len(history) + 1}; stopped "
            "(the last good checkpoint is kept; try a lower --lr-max or keep --clip-norm)"
        )
    if status == "interrupted":
        raise KeyboardInterrupt
    return summary


def _summed_over_ranks(
    loss_sum: torch.Tensor,
    wrong_sum: torch.Tensor,
    seen: int,
    signals: int,
    world: distributed.World,
) -> list[float]:
    """``[loss summed over images, misclassified images, images seen, stop signals]`` of this
    rank's epoch so far, summed over all ranks. Reading them syncs the device."""
    local = torch.stack([loss_sum, wrong_sum.double()])
    local = torch.cat([local, local.new_tensor([seen, signals])])
    return distributed.all_reduce_sum(local, world).tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter(str(run.path / "tensorboard"))


def _summary(
    cfg: TrainConfig, history: list[dict], parameters: int, status: str, epochs: int
) -> dict:
    """The run's result: the FINAL epoch's test error (never the best; the best is shown only)."""
    last = history[-1] if history else {}
    best = min(history, key=lambda r: r["test_error"]) if history else {}
    seconds = [r["train_seconds"] for r in history]
    # The first epoch carries compilation and autotuning: leave it out where others exist.
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return {
        "status": status,
        "model": cfg.model,
        "schedule": cfg.schedule,
        "seed": cfg.seed,
        "epochs": epochs,
        "epochs_done": len(history),
        "test_error": last.get("test_error"),
        "test_loss": last.get("test_loss"),
        "train_error": last.get("train_error"),
        "best_test_error": best.get("test_error"),
        "best_epoch": best.get("epoch"),
        "mean_train_seconds": sum(timed) / len(timed) if timed else None,
        "parameters": parameters,
    }
