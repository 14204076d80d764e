"""Everything a run needs before its first step, and nothing written until all of it holds:
the run directory checked against the configuration, the data on the device, the model, the
optimizer and the step built and tried, the checkpoint checked against the run and loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from plainnet import distributed
from plainnet.config import Switches, TrainConfig, resolve_switches, upgrade
from plainnet.data import DeviceLoader, ImageData, load_dataset
from plainnet.errors import UserError
from plainnet.evaluate import default_eval_batch_size
from plainnet.models import build_model, count_parameters
from plainnet.provenance import environment
from plainnet.recipe import TrainStep, build_model_and_optimizer, seed_everything, share_lr
from plainnet.run_dir import RunDir
from plainnet.runtime import capture_rng, restore_rng
from plainnet.schedules import Schedule, lr_table, paper_schedule

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "history")


@dataclass
class Setup:
    """The built objects of one run (rank 0 alone holds the test set and writes the files)."""

    cfg: TrainConfig
    run: RunDir
    world: distributed.World
    switches: Switches
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: TrainStep
    schedule: Schedule
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor
    iters_per_epoch: int
    epochs: int
    snapshot_at: frozenset[int]
    eval_batch_size: int
    parameters: int
    record: dict  # config.json
    writer: object | None = None  # TensorBoard's SummaryWriter with --tensorboard
    told: set = dataclasses.field(default_factory=set)  # notes already logged once

    @property
    def total_iters(self) -> int:
        return self.schedule.total_iters

    def steps_in(self, epoch: int) -> int:
        """Steps in ``epoch`` (the last epoch of a shortened schedule may be partial)."""
        return min(self.iters_per_epoch, self.total_iters - epoch * self.iters_per_epoch)

    def checkpoint(self, history: list[dict], epoch: int, step: int, partial: dict | None):
        """Everything to continue exactly: ``epoch`` and ``step`` is the next position."""
        if self.world.is_main:
            self.run.save_checkpoint(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": {"t": epoch * self.iters_per_epoch + step},
                    "rng": capture_rng(),
                    "epoch": epoch,
                    "step": step,
                    "partial": partial,
                    "history": history,
                    "identity": self.record["identity"],
                }
            )


def check_run_dir(run: RunDir, cfg: TrainConfig, resume: bool, log: Callable) -> dict | None:
    """Refuse a directory that holds another run or something else; return the summary of a
    run that has already finished (nothing to do), else None."""
    stored = None if run.is_empty() or not run.config.exists() else run.read_config()
    if stored is not None:
        options = dataclasses.asdict(cfg)
        before = upgrade(stored["config"])
        changed = sorted(k for k in options if before.get(k) != options[k])
        if changed:
            raise UserError(
                f"{run.path} holds a run with another configuration (differs in: "
                f"{', '.join(changed)}); choose another --out or the same options"
            )
    elif not run.is_empty():
        raise UserError(f"{run.path} is not empty and holds no plainnet run; choose another --out")
    if resume and stored is None:
        raise UserError(f"{run.path}: nothing to resume (no run there yet)")
    if stored is not None and run.summary.exists():
        summary = run.read_summary()
        if summary.get("status") == "finished":
            log(f"{run.path}: already finished (test error {summary['test_error']:.2f} %)")
            return summary
    return None


def set_up(
    cfg: TrainConfig,
    run: RunDir,
    device: torch.device,
    world: distributed.World,
    data: ImageData | None,
    log: Callable[[str], None],
) -> Setup:
    """Build the run; raise `UserError` for anything that cannot work, before any write."""
    switches = resolve_switches(cfg, device, distributed=world.distributed)
    if cfg.tensorboard and world.is_main:
        _check_tensorboard()
    if data is None:
        log(f"loading {cfg.dataset}" + (f" from {cfg.data_dir}" if cfg.data_dir else ""))
        data = load_dataset(cfg.dataset, cfg.data_dir, log=log)
    data = data.subset(cfg.train_limit, cfg.test_limit)
    global_batch = cfg.batch_size * (world.size if cfg.scale_batch else 1)
    if global_batch % world.size:
        raise UserError(
            f"batch size {global_batch} does not split over {world.size} processes; "
            "pass --batch-size divisible by the number of processes or --scale-batch"
        )
    iters_per_epoch = len(data.train_labels) // global_batch
    if iters_per_epoch < 1:
        raise UserError(
            f"{len(data.train_labels)} training images are fewer than one batch of {global_batch}"
        )
    local_batch = global_batch // world.size
    try_model(cfg, data, local_batch)
    schedule = paper_schedule(
        cfg.schedule, iters_per_epoch, cfg.effective_scale, epochwise_sgdr=cfg.epochwise_sgdr,
        lr_min=cfg.lr_min, lr_max=cfg.lr_max, delta=cfg.lr_decay,
    )  # fmt: skip
    seed_everything(cfg.seed)
    model, optimizer = allocate(cfg, data.num_classes, device, switches, world)
    net: nn.Module = model
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    shard = slice(world.rank, None, world.size)
    loader = DeviceLoader(
        data.train_images[shard], data.train_labels[shard], batch_size=local_batch,
        augment=cfg.augment, seed=cfg.seed, rank=world.rank, device=device,
    )  # fmt: skip
    lr_scale = world.size if (world.distributed and cfg.scale_batch) else 1.0
    rates = lr_table(schedule, schedule.total_iters, device, lr_scale)
    mean, std = (torch.tensor(v, device=device) for v in (data.mean, data.std))
    step = TrainStep(
        net, optimizer, loader, rates, mean=mean, std=std, switches=switches,
        clip_norm=cfg.clip_norm,
    )  # fmt: skip
    snapshot_at = frozenset()
    if cfg.snapshots and schedule.name != "step":
        # Snapshots keep the weights where each cycle ends, at the rate's minimum.
        snapshot_at = frozenset(round(b * iters_per_epoch) for b in schedule.boundaries)
    eval_batch = cfg.eval_batch_size or default_eval_batch_size(device)
    epochs = math.ceil(schedule.total_iters / iters_per_epoch)
    record = config_record(cfg, data, device, world, switches, schedule, optimizer, eval_batch)
    test = [t.to(device) for t in (data.test_images, data.test_labels)] if world.is_main else []
    return Setup(
        cfg, run, world, switches, model, optimizer, step, schedule, *(test or [None, None]),
        mean, std, iters_per_epoch, epochs, snapshot_at, eval_batch, count_parameters(model),
        record,
    )  # fmt: skip


def config_record(cfg, data, device, world, switches, schedule, optimizer, eval_batch) -> dict:
    """``config.json``: the options, what they resolved to here, the data's and the model's
    identity, where the run ran and the command."""
    ipe = schedule.iters_per_epoch
    return {
        "config": dataclasses.asdict(cfg),
        "resolved": {
            **switches.record(), "device": str(device),
            "weight_decay": optimizer.param_groups[0]["weight_decay"],
            "lr_decay": schedule.delta, "iters_per_epoch": ipe,
            "total_iters": schedule.total_iters,
            "epochs": math.ceil(schedule.total_iters / ipe), "schedule_epochs": schedule.epochs,
            "global_batch": cfg.batch_size * (world.size if cfg.scale_batch else 1),
            "eval_batch_size": eval_batch,
            "world_size": world.size, "train_images": len(data.train_labels),
            "test_images": len(data.test_labels), "num_classes": data.num_classes,
            "dataset": data.name,
            "normalization": {"mean": list(data.mean), "std": list(data.std)},
        },
        "identity": identity(cfg, data),
        "environment": environment(device),
        "command": sys.argv,
    }  # fmt: skip


def _check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None


def try_model(cfg: TrainConfig, data: ImageData, batch: int) -> None:
    """One forward pass of a training batch on the meta device (shapes only, no memory): a
    batch BatchNorm cannot use or images the network shrinks to nothing fail here, in one
    line, and not at the first step of a run that already wrote its files."""
    size = tuple(data.train_images.shape[1:])
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, data.num_classes, width_mult=cfg.width_mult)
            model(torch.zeros(batch, *size))
    except (ValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()[0][:200]
        raise UserError(
            f"{cfg.model} cannot train on batches of {batch} images of {size[1]}x{size[2]} "
            f"pixels ({detail})"
        ) from None


def allocate(cfg, num_classes, device, switches, world) -> tuple[nn.Module, torch.optim.SGD]:
    """The model and optimizer on the device; running out of memory is one line."""
    try:
        return build_model_and_optimizer(
            cfg, num_classes, device, switches, sync_bn=world.distributed and cfg.sync_bn
        )
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if "memory" not in str(err).lower():
            raise
        with torch.device("meta"):
            n = count_parameters(build_model(cfg.model, num_classes, width_mult=cfg.width_mult))
        raise UserError(
            f"{cfg.model} (width x{cfg.width_mult:g}, {n:,} parameters) does not fit in the "
            f"memory of {device}: choose a smaller model or --width-mult"
        ) from None


def identity(cfg: TrainConfig, data: ImageData) -> dict:
    """What a checkpoint must match to continue: the model and the exact data it trained on
    (a fingerprint of the images and labels of both splits, after any subset)."""
    h = hashlib.sha256()
    for t in (data.train_labels, data.test_labels):
        h.update(t.numpy().tobytes())
    for t in (data.train_images, data.test_images):
        h.update(f"{tuple(t.shape)}:{int(t.sum(dtype=torch.int64))}".encode())
    return {
        "model": cfg.model,
        "width_mult": cfg.width_mult,
        "num_classes": data.num_classes,
        "dataset": data.name,
        "train_images": len(data.train_labels),
        "test_images": len(data.test_labels),
        "classes": list(data.classes),
        "data_fingerprint": h.hexdigest()[:16],
    }


def restore(s: Setup, log: Callable[[str], None]) -> tuple[list[dict], int, int, dict | None]:
    """Load the checkpoint, if the run has one, after checking that it belongs to this run:
    (history, epoch, step, partial sums), or a fresh start."""
    stored = s.run.read_config() if s.run.config.exists() else None
    state = s.run.load_checkpoint() if stored is not None else None
    if state is None:
        return [], 0, 0, None
    check_checkpoint(s, stored, state)
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    share_lr(s.optimizer, s.step.lr)
    restore_rng(state["rng"])
    epoch, step = int(state["epoch"]), int(state["step"])
    log(f"resuming {s.run.path} at epoch {epoch + 1}, step {step}")
    return list(state["history"]), epoch, step, state.get("partial")


def check_checkpoint(s: Setup, stored: dict, state: object) -> None:
    """One line for a checkpoint that is not this run's: another model, other data, or not a
    plainnet checkpoint at all. Old checkpoints carry no identity: config.json's record of the
    data and the weights' names and shapes stand in for it."""
    where = s.run.checkpoint
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
        raise UserError(
            f"{where}: not a plainnet checkpoint (no {', '.join(missing)}); move it away"
        )
    now = s.record["identity"]
    was = state.get("identity") or {
        k: stored["resolved"].get(k) for k in ("train_images", "test_images", "num_classes")
    }
    differs = [k for k in was if k in now and was[k] != now[k]]
    if differs:
        detail = "; ".join(f"{k}: {was[k]} then, {now[k]} now" for k in differs if k != "classes")
        raise UserError(
            f"{s.run.path}: the checkpoint was trained on other data or another model "
            f"({detail or 'the class names differ'}); restore them or start a new --out"
        )
    expected = {k: tuple(v.shape) for k, v in s.model.state_dict().items()}
    got = state["model"]
    found = {k: tuple(v.shape) for k, v in got.items()} if isinstance(got, dict) else {}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or [
            k for k in expected if expected[k] != found[k]
        ]
        raise UserError(
            f"{where}: the weights do not fit {s.cfg.model} (first mismatch: {wrong[0]})"
        )


def header(s: Setup) -> str:
    """The run in one line: model, data, schedule and length, device and switches, where."""
    r, w = s.record["resolved"], s.switches
    on = [n for n, v in (("channels-last", w.channels_last), ("compile", w.compile),
                         ("CUDA graphs", w.cuda_graphs)) if v]  # fmt: skip
    return (
        f"{s.cfg.model} ({s.parameters:,} parameters), {r['dataset']} ({r['train_images']:,} "
        f"train / {r['test_images']:,} test images, {r['num_classes']} classes), "
        f"{s.cfg.schedule} for {r['epochs']} epochs = {r['total_iters']:,} steps of "
        f"{r['global_batch']}, on {s.record['environment']['device_name']} "
        f"(amp {w.amp}{', ' if on else ''}{', '.join(on)}) -> {s.run.path}"
    )


def summary_of(cfg: TrainConfig, history: list[dict], parameters: int, status: str, epochs: int):
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
