"""`plainnet train`: one run, top to bottom.

`run_training` is the whole run: check the run directory, set up (`plainnet.prepare`: data on
the device, model, optimizer, the step), resume from the checkpoint if there is one, then for
every epoch train it (`train_epoch`), stop cleanly on a signal or a NaN, evaluate on the test
set and write the epoch (`end_epoch`); finally write the summary. It is a generator that yields
after every training step: `train` drives one run to its end, `train_together` several runs
in turns (each on its own CUDA stream on a GPU, so their steps overlap), each exactly as if it
ran alone.

An epoch's data plan is a function of ``(seed, epoch, rank)`` and the checkpoint holds
everything else (weights, momentum, position, sums, generators), so a resumed run makes exactly
the updates the uninterrupted one would have made (bitwise on the CPU with ``--deterministic``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from plainnet import distributed, records
from plainnet.config import TrainConfig, resolve_device
from plainnet.data import ImageData
from plainnet.errors import UserError
from plainnet.evaluate import evaluate, evaluate_path
from plainnet.prepare import Position, RunState, check_run_dir, restore, set_up
from plainnet.recipe import EpochSums
from plainnet.run_dir import RunDir
from plainnet.runtime import Progress, StopRequest, determinism, on_forced_stop

CHECK_SECONDS = 2.0  # one process reads its sums back (a sync) at most this often
CHECK_STEPS = 50  # under torchrun the ranks agree on stopping every this many steps
Log = Callable[[str], None]


class Diverged(UserError):
    """The loss or the weights became NaN or infinite."""


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    data: ImageData | None = None,
    log: Log = print,
) -> dict:
    """Run (or continue) the training described by ``cfg`` in run directory ``out``.

    Returns the summary (also in ``out/summary.json``). ``data`` may be passed pre-loaded (on
    the CPU). ``resume=True`` insists on continuing an existing run; without it, a run with the
    same configuration is continued anyway and a different one is refused. A stop request
    (Ctrl-C, SIGTERM) checkpoints and raises KeyboardInterrupt; a NaN raises `Diverged`.
    """
    with StopRequest() as stop, determinism(cfg.deterministic):
        run = run_training(cfg, out, stop, resume=resume, data=data, log=log)
        (result,) = drive([run], [contextlib.nullcontext()])
    if isinstance(result, Exception):
        raise result
    if result["status"] == "interrupted":
        raise KeyboardInterrupt
    return result


def train_together(
    cfgs: Sequence[TrainConfig],
    outs: Sequence[str | Path],
    *,
    data: ImageData | None = None,
    log: Log = print,
) -> list[dict | UserError]:
    """Train several runs in one process, in turns of one step each (``--runs-per-process``):
    each in its own run directory, resuming, diverging or failing on its own. On CUDA every run
    issues its steps on its own stream, so that the GPU overlaps them. Returns each run's
    summary, or the `UserError` that ended it."""
    device = resolve_device(cfgs[0].device)
    if len({cfg.deterministic for cfg in cfgs}) > 1:
        raise UserError("runs trained together must agree on --deterministic")
    cuda = device.type == "cuda" and len(cfgs) > 1
    streams = [torch.cuda.stream(torch.cuda.Stream(device)) if cuda else None for _ in cfgs]
    with StopRequest() as stop, determinism(cfgs[0].deterministic):
        runs = [
            run_training(cfg, out, stop, data=data, log=log, progress=False)
            for cfg, out in zip(cfgs, outs, strict=True)
        ]
        results = drive(runs, [s or contextlib.nullcontext() for s in streams])
    if any(isinstance(r, dict) and r["status"] == "interrupted" for r in results):
        raise KeyboardInterrupt
    return results


def train_group(pairs: Sequence[tuple[str, dict]], log: Log = print) -> list[str]:
    """Train runs (``(run directory, config)``) together; a finished CLR/SGDR run then gets its
    snapshot ensemble evaluated (``evaluation.json``), which the report shows."""
    cfgs = [TrainConfig(**config) for _, config in pairs]
    if len(pairs) == 1:
        results = [train(cfgs[0], pairs[0][0], log=log)]
    else:
        results = train_together(cfgs, [run for run, _ in pairs], log=log)
    statuses = []
    for (run, _), cfg, result in zip(pairs, cfgs, results, strict=True):
        if isinstance(result, UserError):
            log(f"plainnet: error: {result}")
            statuses.append("error")
            continue
        if result["status"] == "finished" and cfg.snapshots and cfg.schedule != "step":
            evaluate_path(run, ensemble=True, log=log)
        statuses.append(result["status"])
    return statuses


def drive(runs: list[Generator], turns: list) -> list[dict | UserError]:
    """Advance every run one step in turn (inside its ``turns[k]`` context, e.g. its CUDA
    stream) until all have ended. A run that ends in a `UserError` leaves the others going; a
    forced stop (a second Ctrl-C) stops them all, each recording it, and propagates."""
    results: list = [None] * len(runs)
    pending = list(range(len(runs)))
    try:
        while pending:
            for k in list(pending):
                try:
                    with turns[k]:
                        next(runs[k])
                except StopIteration as end:
                    results[k] = end.value
                    pending.remove(k)
                except UserError as err:
                    results[k] = err
                    pending.remove(k)
    except KeyboardInterrupt:
        for k in pending:
            with contextlib.suppress(KeyboardInterrupt, StopIteration):
                runs[k].throw(KeyboardInterrupt)
        raise
    return results


def run_training(
    cfg: TrainConfig,
    out: str | Path,
    stop: StopRequest,
    *,
    resume: bool = False,
    data: ImageData | None = None,
    log: Log = print,
    progress: bool = True,
) -> Generator[None, None, dict]:
    """The run as a generator: it yields after each training step and returns the summary.

    Check the run directory, build everything (`plainnet.prepare`), resume from the checkpoint
    if there is one, then train the epochs. A start that fails leaves no trace: the run's
    directory is only written once everything has been checked."""
    cfg.validate()
    device = resolve_device(cfg.device)
    world = distributed.init(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    log = log if world.is_main else (lambda _msg: None)
    run = RunDir(out)
    finished = check_run_dir(run, cfg, resume, log)
    if finished is not None:
        return finished
    with run.locked(tidy=True) if world.is_main else contextlib.nullcontext():
        s = set_up(cfg, run, device, world, data, log)
        if stop.signal is not None:  # asked to stop while setting up: do not start
            raise KeyboardInterrupt
        at = restore(s, log)
        records.start_writing(s, at.history, log)
        return (yield from train_epochs(s, at, stop, log, progress))


def train_epochs(
    s: RunState, at: Position, stop: StopRequest, log: Log, progress: bool
) -> Generator[None, None, dict]:
    """The epochs from ``at`` to the last, each trained (`train_epoch`) and ended
    (`end_epoch`); a stop request checkpoints (mid-epoch too) and a NaN ends the run."""
    history = at.history
    bar = Progress(progress and s.world.is_main, s.total_iters, s.cfg.batch_size)
    status, t0 = "finished", time.perf_counter()
    with (
        on_forced_stop(lambda: records.write_summary(s, history, "interrupted")),
        records.failed_on_error(s, history),
    ):
        for epoch in range(at.epoch, s.epochs):
            start = at if epoch == at.epoch else Position(history, epoch)
            result = yield from train_epoch(s, epoch, start, stop, bar)
            if not result.finite:
                status = "diverged"
                break
            if result.stopping and result.steps < s.steps_in(epoch):
                where = Position(history, epoch, result.steps, result.sums, result.seconds)
                records.save_checkpoint(s, where)
                log(f"interrupted at epoch {epoch + 1}, step {result.steps}: checkpoint saved")
                status = "interrupted"
                break
            end_epoch(s, epoch, result, history, log)
            if result.stopping and epoch + 1 < s.epochs:  # a stop in the last epoch: finished
                log(f"interrupted after epoch {epoch + 1}: checkpoint saved")
                status = "interrupted"
                break
    return end_run(s, history, status, time.perf_counter() - t0, log)


@dataclass
class EpochResult:
    """How far an epoch got: ``steps`` done, ``sums`` over all ranks (a resumed epoch's
    included), training ``seconds`` (likewise), whether a stop was asked for and whether the
    loss and weights stayed finite."""

    steps: int
    sums: EpochSums
    seconds: float
    stopping: bool
    finite: bool


def train_epoch(
    s: RunState, epoch: int, start: Position, stop: StopRequest, bar: Progress
) -> Generator[None, None, EpochResult]:
    """Steps ``start.step + 1 ..`` of ``epoch``, yielding after each one.

    The step asks the device nothing; only the check does, at most every `CHECK_SECONDS`
    (every `CHECK_STEPS` steps under torchrun, where the ranks agree there on stopping so that
    all of them leave the loop at the same step) and at the epoch's end.
    """
    steps, it0, world, first = s.steps_in(epoch), epoch * s.iters_per_epoch, s.world, start.step
    carried = start.sums if world.is_main else EpochSums()  # saved sums are totals: rank 0's
    batch = s.step.loader.batch_size
    s.step.start_epoch(epoch, first, it0 + first, carried)
    bar.start_epoch(epoch + 1, s.epochs, first, steps, it0 + first)
    sync(s.step.t.device)
    t0 = last_check = time.perf_counter()
    step, stopping, finite = first, False, True
    for step in s.step.steps(first, steps):
        yield
        bar.step()
        if it0 + step in s.snapshot_at and weights_finite(s.step.params):
            records.save_snapshot(s, it0 + step)  # never a diverged member of an ensemble
        stopping = stop.signal is not None and not world.distributed
        due = (step % CHECK_STEPS == 0) if world.distributed else (
            time.perf_counter() - last_check >= CHECK_SECONDS
        )  # fmt: skip
        if due or step == steps:
            sums, signals = summed_over_ranks(s, carried.images + (step - first) * batch, stop)
            last_check = time.perf_counter()
            finite = math.isfinite(sums.loss)
            if not finite:
                break
            bar.show(sums.loss / sums.images, s.schedule(it0 + step - 1))
            stopping = stopping or signals > 0
        if stopping:
            break
    sync(s.step.t.device)
    seconds = start.seconds + time.perf_counter() - t0
    bar.end_epoch()
    sums, _ = summed_over_ranks(s, carried.images + (step - first) * batch, None)
    # The last update can break the weights while its loss was finite: check them too.
    finite = finite and math.isfinite(sums.loss) and weights_finite(s.step.params)
    return EpochResult(step, sums, seconds, stopping, finite)


def end_epoch(s: RunState, epoch: int, result: EpochResult, history: list, log: Log) -> None:
    """Evaluate (rank 0), add the epoch's row to ``history``, record it (metrics, checkpoint,
    summary) and log its line."""
    t1 = time.perf_counter()
    test_loss, test_error = math.nan, math.nan
    if s.world.is_main:
        amp = s.switches.amp_dtype if s.cfg.eval_precision == "amp" else None
        test_loss, test_error = evaluate(
            s.model, s.test_images, s.test_labels, s.step.mean, s.step.std,
            batch_size=s.eval_batch_size, amp_dtype=amp, channels_last=s.switches.channels_last,
        )  # fmt: skip
    sums, images = result.sums, max(result.sums.images, 1)
    history.append(
        {
            "epoch": epoch + 1,
            "lr": s.schedule(epoch * s.iters_per_epoch + result.steps - 1),
            "train_loss": sums.loss / images,
            "train_error": 100.0 * sums.wrong / images,
            "test_loss": test_loss,
            "test_error": test_error,
            "train_seconds": result.seconds,
            "eval_seconds": time.perf_counter() - t1,
            "images_per_second": sums.images / max(result.seconds, 1e-9),
            "iterations": epoch * s.iters_per_epoch + result.steps,
            # Every rank clips the same all-reduced gradient, and counts it.
            "clipped_fraction": sums.clipped / (result.steps * s.world.size),
        }
    )
    records.write_epoch(s, history)
    if s.step.graph_error and "graph" not in s.told:
        s.told.add("graph")
        log(f"note: the step could not be captured as one CUDA graph ({s.step.graph_error})")
    log(records.epoch_line(s, history[-1]))


def end_run(s: RunState, history: list[dict], status: str, seconds: float, log: Log) -> dict:
    """Write the summary, wait for every rank, log the closing line; a NaN raises `Diverged`."""
    summary = records.write_summary(s, history, status)
    # Ranks other than 0 skip the evaluation and the writing: they wait here, so that every
    # rank leaves the loop, and later destroys the process group, together with rank 0.
    distributed.barrier(s.world)
    if s.writer is not None:
        s.writer.close()
    log(records.closing_line(summary, s.run, seconds))
    if status == "diverged":
        raise Diverged(
            f"{s.run.path}: loss became NaN/inf in epoch {len(history) + 1}; stopped "
            "(the last good checkpoint is kept; try a lower --lr-max or keep --clip-norm)"
        )
    return summary


def summed_over_ranks(s: RunState, images: int, stop: StopRequest | None) -> tuple[EpochSums, int]:
    """This epoch's sums so far (``images`` counted by the caller) and the number of ranks
    asked to stop, over all ranks. Reading them syncs the device."""
    step = s.step
    local = torch.stack([step.loss_sum, step.wrong_sum.double(), step.clipped_sum.double()])
    asked = 0 if stop is None or stop.signal is None else 1
    local = torch.cat([local, local.new_tensor([images, asked])])
    loss, wrong, clipped, images, asked = distributed.all_reduce_sum(local, s.world).tolist()
    return EpochSums(loss, round(wrong), round(images), round(clipped)), round(asked)


def weights_finite(params: Sequence[torch.Tensor]) -> bool:
    """All of ``params`` finite (one read from the device)."""
    return bool(torch.stack([p.detach().sum() for p in params]).isfinite().all())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
