"""What a run records as it trains: its files (``config.json``, ``metrics.jsonl``,
``summary.json``, the checkpoint, snapshots, TensorBoard scalars) and the lines it prints (the
header, one line per epoch, the closing line). `plainnet.run_dir` knows how a file is written
safely; this module knows what goes into each and when. Rank 0 alone writes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from plainnet.config import TrainConfig
from plainnet.prepare import Position, RunState
from plainnet.run_dir import RunDir
from plainnet.runtime import capture_rng, duration

Log = Callable[[str], None]


def header(s: RunState) -> str:
    """The run in one line: model, data, schedule and length, device and switches, where."""
    r, w = s.record["resolved"], s.switches
    on = [n for n, v in (("TF32", w.tf32), ("channels-last", w.channels_last),
                         ("compile", w.compile), ("CUDA graphs", w.cuda_graphs)) if v]  # fmt: skip
    return (
        f"{s.cfg.model} ({s.parameters:,} parameters), {r['dataset']} ({r['train_images']:,} "
        f"train / {r['test_images']:,} test images, {r['num_classes']} classes), "
        f"{s.cfg.schedule} for {r['epochs']} epochs = {r['total_iters']:,} steps of "
        f"{r['global_batch']}, on {s.record['environment']['device_name']} "
        f"(amp {w.amp}{', ' if on else ''}{', '.join(on)}) -> {s.run.path}"
    )


def start_writing(s: RunState, history: list[dict], log: Log) -> None:
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


def write_epoch(s: RunState, history: list[dict]) -> None:
    """An epoch has ended (its row is ``history[-1]``): the metrics, a checkpoint at the next
    epoch's start, the summary and the TensorBoard scalars."""
    if not s.world.is_main:
        return
    s.run.write_metrics(history)
    save_checkpoint(s, Position(history, history[-1]["epoch"]))
    write_summary(s, history, "running")
    if s.writer is not None:
        row = history[-1]
        for key in ("lr", "train_loss", "train_error", "test_loss", "test_error"):
            s.writer.add_scalar(key, row[key], row["epoch"])
        s.writer.flush()


def save_checkpoint(s: RunState, at: Position) -> None:
    """Everything to continue exactly from ``at`` (the next epoch and step, the epochs done
    and the sums of a partly done epoch)."""
    if not s.world.is_main:
        return
    partial = {"sums": list(at.sums), "seconds": at.seconds} if at.step else None
    s.run.save_checkpoint(
        {
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": {"t": at.epoch * s.iters_per_epoch + at.step},
            "rng": capture_rng(),
            "epoch": at.epoch,
            "step": at.step,
            "partial": partial,
            "history": at.history,
            "identity": s.record["identity"],
        }
    )


def save_snapshot(s: RunState, iteration: int) -> None:
    """Keep the model's weights after ``iteration`` updates (where a cycle ends)."""
    if s.world.is_main:
        s.run.save_snapshot(iteration, s.model.state_dict())


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


def write_summary(s: RunState, history: list[dict], status: str, **extra) -> dict:
    summary = {**summary_of(s.cfg, history, s.parameters, status, s.epochs), **extra}
    if s.world.is_main:
        s.run.write_summary(summary)
    return summary


@contextlib.contextmanager
def failed_on_error(s: RunState, history: list[dict]):
    """A run that an unexpected error ends says so in its summary (``failed`` and the error)
    instead of staying ``running``; the error goes on. A stop passes untouched."""
    try:
        yield
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as err:
        with contextlib.suppress(Exception):
            reason = f"{type(err).__name__}: {err}".strip().splitlines()[0][:300]
            write_summary(s, history, "failed", error=reason)
        raise


def epoch_line(s: RunState, row: dict) -> str:
    """The epoch's one line: rate, training and test loss and error, time and speed."""
    return (
        f"epoch {row['epoch']:>3}/{s.epochs}  lr {row['lr']:.2e}  "
        f"train loss {row['train_loss']:.3f} err {row['train_error']:5.2f} %  "
        f"test loss {row['test_loss']:.3f} err {row['test_error']:5.2f} %  "
        f"{row['train_seconds']:6.1f} s  {row['images_per_second']:,.0f} img/s"
    )


def closing_line(summary: dict, run: RunDir, seconds: float) -> str:
    """The run's last line: how it ended, its result, its time and where it is. Only a
    finished run has a final test error; another says after which epoch its error stands."""
    result = "no epoch finished"
    if summary.get("test_error") is not None and summary["status"] == "finished":
        result = (
            f"final test error {summary['test_error']:.2f} % (best "
            f"{summary['best_test_error']:.2f} % at epoch {summary['best_epoch']})"
        )
    elif summary.get("test_error") is not None:
        result = (
            f"test error {summary['test_error']:.2f} % after epoch {summary['epochs_done']} "
            f"of {summary['epochs']}"
        )
    return f"{summary['status']}: {result}, {duration(seconds)}, {run.path}"
