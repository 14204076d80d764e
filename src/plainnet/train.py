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

from plainnet import distributed
from plainnet.config import TrainConfig, resolve_device
from plainnet.data import ImageData
from plainnet.errors import UserError
from plainnet.evaluate import evaluate
from plainnet.prepare import Setup, check_run_dir, header, restore, set_up, summary_of
from plainnet.run_dir import RunDir
from plainnet.runtime import Progress, StopRequest, determinism, duration, on_forced_stop

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
    """The run as a generator: it yields after each training step and returns the summary."""
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
    with run.locked() if world.is_main else contextlib.nullcontext():
        s = set_up(cfg, run, device, world, data, log)
        if stop.signal is not None:  # asked to stop while setting up: do not start
            raise KeyboardInterrupt
        history, start, first, partial = restore(s, log)
        start_writing(s, history, log)
        bar = Progress(progress and world.is_main, s.total_iters, cfg.batch_size)
        status, t0 = "running", time.perf_counter()
        with (
            on_forced_stop(lambda: write_summary(s, history, "interrupted")),
            failed_on_error(s, history),
        ):
            for epoch in range(start, s.epochs):
                begin = first if epoch == start else 0
                result = yield from train_epoch(
                    s, epoch, begin, partial if begin else None, stop, bar
                )
                if not result.finite:
                    status = "diverged"
                    break
                if result.stopping and result.steps < s.steps_in(epoch):
                    s.checkpoint(history, epoch, result.steps, result.partial())
                    log(f"interrupted at epoch {epoch + 1}, step {result.steps}: checkpoint saved")
                    status = "interrupted"
                    break
                history.append(end_epoch(s, epoch, result, history, log))
                if result.stopping:
                    log(f"interrupted after epoch {epoch + 1}: checkpoint saved")
                    status = "interrupted"
                    break
            else:
                status = "finished"
        return finish(s, history, status, time.perf_counter() - t0, log)


@dataclass
class EpochResult:
    """How far an epoch got: ``steps`` done, ``totals`` = [loss summed over images,
    misclassified images, images] over all ranks, training ``seconds`` (a resumed epoch's
    included), whether a stop was asked for and whether the loss and weights stayed finite."""

    steps: int
    totals: list[float]
    seconds: float
    stopping: bool
    finite: bool

    def partial(self) -> dict:
        return {"sums": self.totals, "seconds": self.seconds}


def train_epoch(
    s: Setup, epoch: int, first: int, partial: dict | None, stop: StopRequest, bar: Progress
) -> Generator[None, None, EpochResult]:
    """Steps ``first + 1 ..`` of ``epoch``, yielding after each one.

    The step asks the device nothing; only the check does, at most every `CHECK_SECONDS`
    (every `CHECK_STEPS` steps under torchrun, where the ranks agree there on stopping so that
    all of them leave the loop at the same step) and at the epoch's end.
    """
    steps, it0, world = s.steps_in(epoch), epoch * s.iters_per_epoch, s.world
    carried = partial or {"sums": [0.0, 0, 0], "seconds": 0.0}
    sums = carried["sums"] if world.is_main else [0.0, 0, 0]  # saved sums are totals: rank 0's
    s.step.start_epoch(epoch, first, it0 + first, sums[:2])
    bar.start_epoch(epoch + 1, s.epochs, first, steps, it0 + first)
    sync(s.step.t.device)
    t0 = last_check = time.perf_counter()
    step, stopping, finite = first, False, True
    for step in s.step.steps(first, steps):
        yield
        bar.step()
        if it0 + step in s.snapshot_at:
            save_snapshot(s, it0 + step)
        stopping = stop.signal is not None and not world.distributed
        due = (step % CHECK_STEPS == 0) if world.distributed else (
            time.perf_counter() - last_check >= CHECK_SECONDS
        )  # fmt: skip
        if due or step == steps:
            seen = sums[2] + (step - first) * s.step.loader.batch_size
            loss, _, seen, signals = summed_over_ranks(s, seen, stop.signal or 0)
            last_check = time.perf_counter()
            finite = math.isfinite(loss)
            if not finite:
                break
            bar.show(loss / seen, s.schedule(it0 + step - 1))
            stopping = stopping or signals > 0
        if stopping:
            break
    sync(s.step.t.device)
    seconds = carried["seconds"] + time.perf_counter() - t0
    bar.end_epoch()
    seen = sums[2] + (step - first) * s.step.loader.batch_size
    totals = summed_over_ranks(s, seen, 0)[:3]
    # The last update can break the weights while its loss was finite: check them too.
    finite = finite and math.isfinite(totals[0]) and weights_finite(s.step.params)
    return EpochResult(step, totals, seconds, stopping, finite)


def end_epoch(s: Setup, epoch: int, result: EpochResult, history: list, log: Log) -> dict:
    """Evaluate (rank 0), write the epoch's row, checkpoint and summary, log its line."""
    t1 = time.perf_counter()
    test_loss, test_error = math.nan, math.nan
    if s.world.is_main:
        amp = s.switches.amp_dtype if s.cfg.eval_precision == "amp" else None
        test_loss, test_error = evaluate(
            s.model, s.test_images, s.test_labels, s.mean, s.std, batch_size=s.eval_batch_size,
            amp_dtype=amp, channels_last=s.switches.channels_last,
        )  # fmt: skip
    loss_sum, wrong, seen = result.totals
    row = {
        "epoch": epoch + 1,
        "lr": s.schedule(epoch * s.iters_per_epoch + result.steps - 1),
        "train_loss": loss_sum / max(seen, 1),
        "train_error": 100.0 * wrong / max(seen, 1),
        "test_loss": test_loss,
        "test_error": test_error,
        "train_seconds": result.seconds,
        "eval_seconds": time.perf_counter() - t1,
        "images_per_second": seen / max(result.seconds, 1e-9),
        "iterations": epoch * s.iters_per_epoch + result.steps,
    }
    if s.world.is_main:
        s.run.write_metrics([*history, row])
        s.checkpoint([*history, row], epoch + 1, 0, None)
        write_summary(s, [*history, row], "running")
        if s.writer is not None:
            for key in ("lr", "train_loss", "train_error", "test_loss", "test_error"):
                s.writer.add_scalar(key, row[key], epoch + 1)
            s.writer.flush()
    if s.step.graph_error and "graph" not in s.told:
        s.told.add("graph")
        log(f"note: the step could not be captured as one CUDA graph ({s.step.graph_error})")
    log(
        f"epoch {epoch + 1:>3}/{s.epochs}  lr {row['lr']:.2e}  "
        f"train loss {row['train_loss']:.3f} err {row['train_error']:5.2f} %  "
        f"test loss {test_loss:.3f} err {test_error:5.2f} %  "
        f"{result.seconds:6.1f} s  {row['images_per_second']:,.0f} img/s"
    )
    return row


def start_writing(s: Setup, history: list[dict], log: Log) -> None:
    """The run's first writes, once everything has been checked, and its header line."""
    if s.world.is_main:
        s.run.write_config(s.record)
        write_summary(s, history, "running")
        if s.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            s.writer = SummaryWriter(str(s.run.path / "tensorboard"))
    log(header(s))
    if s.switches.compile or s.switches.cuda_graphs:
        log("compiling and capturing the step: the first steps take a while")


def finish(s: Setup, history: list[dict], status: str, seconds: float, log: Log) -> dict:
    summary = write_summary(s, history, status)
    # Ranks other than 0 skip the evaluation and the writing: they wait here, so that every
    # rank leaves the loop, and later destroys the process group, together with rank 0.
    distributed.barrier(s.world)
    if s.writer is not None:
        s.writer.close()
    log(closing_line(summary, s.run, seconds))
    if status == "diverged":
        raise Diverged(
            f"{s.run.path}: loss became NaN/inf in epoch {len(history) + 1}; stopped "
            "(the last good checkpoint is kept; try a lower --lr-max or keep --clip-norm)"
        )
    return summary


def write_summary(s: Setup, history: list[dict], status: str, **extra) -> dict:
    summary = {**summary_of(s.cfg, history, s.parameters, status, s.epochs), **extra}
    if s.world.is_main:
        s.run.write_summary(summary)
    return summary


@contextlib.contextmanager
def failed_on_error(s: Setup, history: list[dict]):
    """A run that an unexpected error ends says so in its summary (``failed`` and the error)
    instead of staying ``running``; the error goes on."""
    try:
        yield
    except (KeyboardInterrupt, GeneratorExit, Diverged):
        raise
    except Exception as err:
        with contextlib.suppress(Exception):
            reason = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]
            write_summary(s, history, "failed", error=reason)
        raise


def save_snapshot(s: Setup, iteration: int) -> None:
    """Keep the weights where a cycle ends, unless they are no longer finite (a snapshot
    ensemble must never average a diverged member)."""
    if s.world.is_main and weights_finite(s.step.params):
        s.run.save_snapshot(iteration, s.model.state_dict())


def summed_over_ranks(s: Setup, seen: int, signals: int) -> list[float]:
    """[loss summed over images, misclassified images, images seen, stop signals] of this
    epoch so far, summed over all ranks. Reading them syncs the device."""
    local = torch.stack([s.step.loss_sum, s.step.wrong_sum.double()])
    local = torch.cat([local, local.new_tensor([seen, signals])])
    return distributed.all_reduce_sum(local, s.world).tolist()


def weights_finite(params: Sequence[torch.Tensor]) -> bool:
    """All of ``params`` finite (one read from the device)."""
    return bool(torch.stack([p.detach().sum() for p in params]).isfinite().all())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def closing_line(summary: dict, run: RunDir, seconds: float) -> str:
    """The run's last line: how it ended, its result, its time and where it is."""
    result = "no epoch finished"
    if summary.get("test_error") is not None:
        result = (
            f"final test error {summary['test_error']:.2f} % (best "
            f"{summary['best_test_error']:.2f} % at epoch {summary['best_epoch']})"
        )
    return f"{summary['status']}: {result}, {duration(seconds)}, {run.path}"
