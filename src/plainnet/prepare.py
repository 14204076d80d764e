"""Everything a run needs before its first step, and nothing written until all of it holds:
the run directory checked against the configuration (`check_run_dir`), the data on the device,
the model, the optimizer and the step built and tried (`set_up`, giving the `RunState`), the
checkpoint checked against the run and loaded (`restore`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from plainnet import distributed
from plainnet.config import Switches, TrainConfig, resolve_switches, upgrade
from plainnet.data import ImageData, load_dataset
from plainnet.errors import UserError
from plainnet.evaluate import default_eval_batch_size
from plainnet.models import build_model, count_parameters
from plainnet.provenance import environment
from plainnet.recipe import (
    NO_SUMS,
    EpochSums,
    TrainStep,
    batch_sizes,
    build_step,
    schedule_for,
    share_lr,
)
from plainnet.run_dir import RunDir, dumps
from plainnet.runtime import restore_rng
from plainnet.schedules import Schedule, lr_table

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "history")


@dataclass
class RunState:
    """One run, built and ready for its first (or next) step: the configuration and where it
    runs, the step (which holds the model, its optimizer and the training data), the schedule,
    the test set (rank 0 alone holds it and writes the files) and ``config.json``'s record."""

    cfg: TrainConfig
    run: RunDir
    world: distributed.World
    switches: Switches
    step: TrainStep
    schedule: Schedule
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    iters_per_epoch: int
    epochs: int
    snapshot_at: frozenset[int]
    eval_batch_size: int
    parameters: int
    record: dict  # config.json
    writer: object | None = None  # TensorBoard's SummaryWriter with --tensorboard
    told: set = dataclasses.field(default_factory=set)  # notes already logged once

    model = property(lambda self: self.step.model)
    optimizer = property(lambda self: self.step.optimizer)

    @property
    def total_iters(self) -> int:
        return self.schedule.total_iters

    def steps_in(self, epoch: int) -> int:
        """Steps in ``epoch`` (the last epoch of a shortened schedule may be partial)."""
        return min(self.iters_per_epoch, self.total_iters - epoch * self.iters_per_epoch)


@dataclass
class Position:
    """Where a run goes on: the epochs done (``history``), the next ``epoch`` and ``step`` in
    it, and the sums and seconds of that epoch's steps already done (a mid-epoch stop)."""

    history: list[dict]
    epoch: int = 0
    step: int = 0
    sums: EpochSums = NO_SUMS
    seconds: float = 0.0


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
) -> RunState:
    """Build the run; raise `UserError` for anything that cannot work, before any write."""
    switches = resolve_switches(cfg, device, distributed=world.distributed)
    if cfg.tensorboard and world.is_main:
        _check_tensorboard()
    if data is None:
        log(f"loading {cfg.dataset}" + (f" from {cfg.data_dir}" if cfg.data_dir else ""))
        data = load_dataset(cfg.dataset, cfg.data_dir, log=log)
    data, iters_per_epoch = fit_data(cfg, data, world)
    schedule = schedule_for(cfg, iters_per_epoch, world.size)
    rates = lr_table(schedule, schedule.total_iters, device)
    step = build_step(cfg, data, device, switches, rates, world=world)
    snapshot_at = frozenset()
    if cfg.snapshots and schedule.name != "step":
        # Snapshots keep the weights where each cycle ends, at the rate's minimum.
        snapshot_at = frozenset(round(b * iters_per_epoch) for b in schedule.boundaries)
    eval_batch = cfg.eval_batch_size or default_eval_batch_size(device)
    epochs = math.ceil(schedule.total_iters / iters_per_epoch)
    record = config_record(cfg, data, device, world, switches, schedule, step, eval_batch)
    test = [t.to(device) for t in (data.test_images, data.test_labels)] if world.is_main else []
    return RunState(
        cfg, run, world, switches, step, schedule, *(test or [None, None]), iters_per_epoch,
        epochs, snapshot_at, eval_batch, count_parameters(step.model), record,
    )  # fmt: skip


def fit_data(
    cfg: TrainConfig, data: ImageData, world: distributed.World | None = None
) -> tuple[ImageData, int]:
    """The data ``cfg`` trains on (its class-balanced subsets) and the iterations of an epoch;
    a `UserError` for a subset the data cannot give, a batch that does not split over the
    processes or is larger than the data, or a model that cannot take such a batch."""
    world = world or distributed.World()
    data = data.subset(cfg.train_limit, cfg.test_limit)
    global_batch, local_batch = batch_sizes(cfg, world)
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
    try_model(cfg, data, local_batch)
    return data, iters_per_epoch


def config_record(cfg, data, device, world, switches, schedule, step, eval_batch) -> dict:
    """``config.json``: the options, what they resolved to here, the data's and the model's
    identity, where the run ran and the command."""
    ipe = schedule.iters_per_epoch
    return {
        "config": dataclasses.asdict(cfg),
        "resolved": {
            **switches.record(), "device": str(device),
            "weight_decay": step.optimizer.param_groups[0]["weight_decay"],
            "lr_decay": schedule.delta, "iters_per_epoch": ipe,
            "total_iters": schedule.total_iters,
            "epochs": math.ceil(schedule.total_iters / ipe), "schedule_epochs": schedule.epochs,
            "global_batch": batch_sizes(cfg, world)[0], "lr_scale": schedule.lr_scale,
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


def restore(s: RunState, log: Callable[[str], None]) -> Position:
    """Load the checkpoint, if the run has one, after checking that it belongs to this run, and
    say where the run goes on; a fresh run starts at the beginning. ``metrics.jsonl`` is made
    to hold exactly the checkpoint's epochs (`match_metrics`)."""
    stored = s.run.read_config() if s.run.config.exists() else None
    state = s.run.load_checkpoint() if stored is not None else None
    if state is None:
        return Position([])
    check_checkpoint(s, stored, state)
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    share_lr(s.optimizer, s.step.lr)
    restore_rng(state["rng"])
    partial = state.get("partial") or {}
    at = Position(
        list(state["history"]), int(state["epoch"]), int(state["step"]),
        EpochSums(*partial.get("sums", ())), float(partial.get("seconds", 0.0)),
    )  # fmt: skip
    if s.world.is_main:
        match_metrics(s.run, at.history, log)
    if at.epoch >= s.epochs:
        log(f"resuming {s.run.path}: all {s.epochs} epochs are done")
    else:
        log(f"resuming {s.run.path} at epoch {at.epoch + 1}/{s.epochs}, step {at.step}")
    return at


def match_metrics(run: RunDir, history: list[dict], log: Callable[[str], None]) -> None:
    """Rewrite ``metrics.jsonl`` from the checkpoint's history where the two differ (a damaged
    line, missing or extra epochs), and say so: the report reads the file, and a run whose
    file cannot be read would be lost from it."""
    expected = [json.loads(dumps(row)) for row in history]  # as the file stores them
    try:
        found, why = run.read_metrics(), None
    except UserError as err:
        found, why = None, str(err)
    if found == expected:
        return
    if why is None and len(found) != len(expected):
        why = f"{run.metrics} holds {len(found)} epochs, the checkpoint {len(expected)}"
    elif why is None:
        why = f"{run.metrics} differs from the checkpoint's record of its epochs"
    run.write_metrics(history)
    log(f"note: {why}; rewrote it from the checkpoint's {len(history)} epochs")


def check_checkpoint(s: RunState, stored: dict, state: object) -> None:
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
