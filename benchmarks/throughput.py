#!/usr/bin/env python3
"""Training throughput: plainnet's training step against the conventional PyTorch CIFAR loop.

Both pipelines train the same model with the same optimizer (SGD, momentum 0.9, the authors'
weight decay, clipping at 10, the SGDR schedule) at batch size 100 on the same device:

- plainnet: `plainnet train`'s own loader and step (`DeviceLoader`, `TrainStep`, built by
  `plainnet.recipe` as `plainnet train` builds them): the images resident on the device as
  uint8, each epoch's order and augmentation from `epoch_plan`, batched on-device
  augmentation, every iteration's rate from a device-side table, no read-back inside a step,
  and the ``auto`` speed switches of `resolve_switches` (bf16 autocast, channels-last,
  torch.compile and the whole step as one CUDA graph where they pay on the device);
- conventional: a `torch.utils.data.DataLoader` over the same images (numpy HWC uint8) with
  per-image pad-4 random crop, flip, ToTensor and Normalize on CPU worker processes, fp32,
  default memory format, eager, ``loss.item()`` and accuracy read every step.

The two are measured interleaved in one process (a repetition of one, then of the other), after
an untimed warm-up (compilation included), so that load from other processes hits both alike;
the ratio is the median of the per-repetition ratios. Run ``python benchmarks/throughput.py -h``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, also when imported

from measure import (
    device_peak,
    host_dispatches,
    profile_step,
    spread,
    timed,
    training_flops,
)
from pipelines import (
    BATCH,
    EPOCH_IMAGES,
    ConventionalCIFAR,
    ConventionalPipeline,
    Pipeline,
    PlainnetPipeline,
    SequentialPipeline,
    TogetherPipeline,
    synthetic_data,
)
from research.fused_pipeline import FusedPipeline

from plainnet.config import AMP, SWITCH, TrainConfig, resolve_device
from plainnet.data import ImageData, load_dataset
from plainnet.errors import UserError
from plainnet.evaluate import default_eval_batch_size
from plainnet.models import build_model
from plainnet.provenance import environment
from plainnet.run_dir import write_json

__all__ = ["ConventionalCIFAR", "host_dispatches", "main", "training_flops"]


def pipelines(model_name: str, data: ImageData, device: torch.device, args) -> list[Pipeline]:
    """The pipelines asked for: plainnet and the conventional loop (or ``--only`` one), then
    K runs in one process in turns (``--together K``) and fused (``--fused K``), each with
    its baseline, the same K runs trained one after the other."""
    cfg = TrainConfig(
        model=model_name, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        cuda_graphs=args.cuda_graphs,
    )  # fmt: skip
    out: list[Pipeline] = []
    if args.only in (None, "plainnet"):
        out.append(PlainnetPipeline(model_name, data, device, cfg))
    if args.only in (None, "conventional"):
        out.append(ConventionalPipeline(model_name, data, device, args.workers))
    for k in sorted({k for k in (args.together, args.fused) if k > 1}):
        out.append(SequentialPipeline(model_name, data, device, cfg, k))
    if args.together > 1:
        out.append(TogetherPipeline(model_name, data, device, cfg, args.together))
    if args.fused > 1:
        out.append(FusedPipeline(model_name, data, device, cfg, args.fused))
    return out


def measure_model(model_name: str, data: ImageData, device: torch.device, args) -> dict:
    """The pipelines for one model, interleaved repetition by repetition."""
    pipes, compile_seconds = [], {}
    for pipe in pipelines(model_name, data, device, args):
        # Warm-up, untimed: compilation, autotuning, worker start-up, allocator caches.
        note(f"{model_name} {pipe.name}: warm-up ({args.warmup} steps)")
        compile_seconds[pipe.name] = timed(lambda p=pipe: p.train_steps(args.warmup), device)[0]
        # Two full evaluation batches, so that cuDNN has tuned the evaluation's batch shape: on
        # an H100, a warm-up of 200 images left a 0.47x outlier in the first timed repetition
        # (cause not proven; the evaluation batch there is 1,000).
        warm_eval = min(args.eval_images, 2 * default_eval_batch_size(device))
        timed(lambda p=pipe, n=warm_eval: p.evaluate(n), device)
        pipes.append(pipe)
    if args.barrier:
        wait_barrier(args.barrier, args.barrier_count)

    note(f"{model_name}: {args.reps} x {args.steps} steps per pipeline")
    train_rate = {p.name: [] for p in pipes}
    eval_rate = {p.name: [] for p in pipes}
    memory = {p.name: 0.0 for p in pipes}
    for _ in range(args.reps):
        for p in pipes:
            seconds, peak = timed(lambda p=p: p.train_steps(args.steps), device)
            train_rate[p.name].append(args.steps * p.images_per_step / seconds)
            memory[p.name] = max(memory[p.name], peak)
    for _ in range(args.reps):
        for p in pipes:
            seconds, _ = timed(lambda p=p: p.evaluate(args.eval_images), device)
            images = min(args.eval_images, len(data.test_labels)) * p.images_per_step / BATCH
            eval_rate[p.name].append(images / seconds)

    flops = training_flops(model_name, data.num_classes)
    result: dict = {"training_flops_per_image": flops}
    for p in pipes:
        rate = spread(train_rate[p.name])
        result[p.name] = {
            "train_images_per_second": rate,
            "eval_images_per_second": spread(eval_rate[p.name]),
            "seconds_per_epoch": EPOCH_IMAGES / rate["median"],
            "peak_memory_mib": memory[p.name],
            "warmup_seconds": compile_seconds[p.name],
            "achieved_flops_per_second": flops * rate["median"],
            **({"switches": p.switches.record()} if hasattr(p, "switches") else {}),
        }
    if {"plainnet", "conventional"} <= set(train_rate):
        result["ratio"] = {
            kind: spread(
                [a / b for a, b in zip(rate["plainnet"], rate["conventional"], strict=True)]
            )
            for kind, rate in (("train", train_rate), ("eval", eval_rate))
        }
    sequential = {p.k: p.name for p in pipes if type(p) is SequentialPipeline}
    for p in pipes:  # K runs at once against the same K runs one after the other
        if isinstance(p, (TogetherPipeline, FusedPipeline)):
            baseline = train_rate[sequential[p.k]]
            ratios = [a / b for a, b in zip(train_rate[p.name], baseline, strict=True)]
            result[p.name]["over_sequential"] = spread(ratios)
    if args.profile and pipes and isinstance(pipes[0], PlainnetPipeline):
        result["profile"], work = profile_step(pipes[0])
        result["host_work_per_step"] = work
        if "gpu_ms" in work:  # the share of a step the GPU is busy, at the measured rate
            step_ms = 1000 * BATCH / result["plainnet"]["train_images_per_second"]["median"]
            work["gpu_busy"] = work["gpu_ms"] / step_ms
    return result


def note(msg: str) -> None:
    """Progress on stderr (the table and JSON come at the end)."""
    print(f"[throughput] {msg}", file=sys.stderr, flush=True)


def wait_barrier(folder: str, count: int, timeout: float = 900.0) -> None:
    """Start the timed part of ``count`` concurrent workers together (a file per worker)."""
    path = Path(folder)
    (path / f"ready.{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(path.glob("ready.*"))) < count:
        if time.monotonic() > deadline:
            raise UserError(f"concurrent workers did not all start within {timeout:.0f} s")
        time.sleep(0.05)


def measure_concurrent(model_name: str, jobs: int, args) -> dict:
    """Summed plainnet training throughput of ``jobs`` processes sharing the device.

    Each worker is this script with ``--only plainnet``; all finish their warm-up, then time
    together. On the CPU the cores are split between the workers (threads = cores / jobs).
    """
    with tempfile.TemporaryDirectory() as tmp:
        procs, outs = [], []
        for i in range(jobs):
            out = Path(tmp) / f"worker{i}.json"
            cmd = [sys.executable, __file__, "--only", "plainnet", "--models", model_name,
                   "--json", str(out), "--barrier", tmp, "--barrier-count", str(jobs),
                   *worker_options(args)]  # fmt: skip
            if args.device_resolved == "cpu":
                cmd += ["--threads", str(max(1, torch.get_num_threads() // jobs))]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
            outs.append(out)
        codes = [p.wait() for p in procs]
        if any(codes):
            raise UserError(f"a concurrent worker failed (exit codes {codes})")
        rates = [
            json.loads(o.read_text())["models"][model_name]["plainnet"]["train_images_per_second"][
                "median"
            ]
            for o in outs
        ]
    return {"jobs": jobs, "per_job_images_per_second": rates, "total_images_per_second": sum(rates)}


def worker_options(args) -> list[str]:
    opts = ["--device", args.device_resolved, "--steps", str(args.steps), "--reps", str(args.reps)]
    opts += ["--warmup", str(args.warmup), "--eval-images", str(args.eval_images)]
    opts += ["--train-images", str(args.train_images), "--test-images", str(args.test_images)]
    opts += ["--amp", args.amp, "--channels-last", args.channels_last, "--compile", args.compile]
    opts += ["--cuda-graphs", args.cuda_graphs]
    if args.dataset != "synthetic":
        opts += ["--dataset", args.dataset] + (
            ["--data-dir", args.data_dir] if args.data_dir else []
        )
    return opts


# ---------------------------------------------------------------- reporting


def report_table(results: dict) -> str:
    from plainnet.tables import format_table

    rows = []
    for model_name, r in results["models"].items():
        for kind, p in r.items():
            if not (isinstance(p, dict) and "train_images_per_second" in p):
                continue
            t = p["train_images_per_second"]
            util = p["achieved_flops_per_second"] / results["peak_flops_per_second"]
            over = p.get("over_sequential", {}).get("median")
            rows.append(
                [
                    model_name, kind, f"{t['median']:,.0f} ({t['min']:,.0f}-{t['max']:,.0f})",
                    f"{over:.2f}x one after another" if over else f"{p['seconds_per_epoch']:,.1f}",
                    f"{p['eval_images_per_second']['median']:,.0f}",
                    f"{p['peak_memory_mib']:,.0f}", f"{100 * util:.1f} %",
                ]
            )  # fmt: skip
        if "ratio" in r:
            tr, ev = r["ratio"]["train"], r["ratio"]["eval"]
            rows.append(
                [model_name, "**ratio**", f"**{tr['median']:.2f}x** ({tr['min']:.2f}-{tr['max']:.2f})",
                 "", f"{ev['median']:.2f}x", "", ""]
            )  # fmt: skip
    headers = ["model", "pipeline", "train img/s: median (min-max)", "s / epoch", "eval img/s"]
    headers += ["peak MiB", "of peak FLOP/s"]
    return format_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Training throughput of plainnet's step against the conventional "
        "DataLoader loop (batch 100, same model, optimizer and device)."
    )
    p.add_argument("--models", default="plain11,resnet110", help="comma-separated model names")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--steps", type=int, help="training steps per repetition (default: CPU 10, GPU 200)"
    )
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per pipeline")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: CPU 3, GPU 30)")
    p.add_argument("--eval-images", type=int, help="test images per evaluation repetition")
    p.add_argument("--train-images", type=int, default=EPOCH_IMAGES, help="synthetic set size")
    p.add_argument("--test-images", type=int, default=10_000, help="synthetic test set size")
    p.add_argument("--dataset", default="synthetic", choices=["synthetic", "cifar100", "cifar10", "folder"])  # fmt: skip
    p.add_argument("--data-dir", help="for a real data set (see plainnet train --data-dir)")
    p.add_argument("--workers", type=int, help="conventional DataLoader workers (default: cores)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, all cores)")
    p.add_argument("--amp", default="auto", choices=AMP, help="plainnet's autocast")
    p.add_argument("--channels-last", default="auto", choices=SWITCH)
    p.add_argument("--compile", default="auto", choices=SWITCH)
    p.add_argument("--cuda-graphs", default="auto", choices=SWITCH)
    p.add_argument("--only", choices=["plainnet", "conventional"], help="measure one pipeline")
    p.add_argument("--profile", action="store_true", help="top ops and host work of a step")
    p.add_argument("--together", type=int, default=0, metavar="K",
                   help="also K runs in one process, in turns (each on its own CUDA stream)")  # fmt: skip
    p.add_argument("--fused", type=int, default=0, metavar="K",
                   help="also K runs fused into one grouped network")  # fmt: skip
    p.add_argument("--concurrent", type=int, default=0, metavar="K",
                   help="also run K plainnet processes on the device at once; report the sum")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a short run (steps 3, reps 2, warm-up 1)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--barrier", help=argparse.SUPPRESS)
    p.add_argument("--barrier-count", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("steps", "reps", "warmup", "eval_images", "train_images", "test_images"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    return args


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device_resolved = device.type
    cuda = device.type == "cuda"
    if args.quick:
        args.steps, args.reps, args.warmup = args.steps or 3, min(args.reps, 2), args.warmup or 1
    args.steps = args.steps or (200 if cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (30 if cuda else 3)
    args.eval_images = args.eval_images or (10_000 if cuda else 1_000)
    if args.workers is None:
        args.workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    torch.backends.cudnn.benchmark = True  # as `plainnet train` (non-deterministic runs)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise UserError("--models names no model")
    for m in models:
        try:
            build_model(m, 10)
        except ValueError as err:
            raise UserError(str(err)) from None

    if args.dataset == "synthetic":
        if args.train_images < BATCH:
            raise UserError(f"--train-images must be at least one batch ({BATCH})")
        data = synthetic_data(args.train_images, args.test_images)
    else:
        data = load_dataset(args.dataset, args.data_dir)
        if len(data.train_labels) < BATCH:
            raise UserError(f"{data.name} has fewer training images than one batch ({BATCH})")
    args.eval_images = min(args.eval_images, len(data.test_labels))

    # A concurrent worker skips the peak measurement: its parent has made it.
    peak, peak_note = (float("nan"), "") if args.barrier else device_peak(device)
    results: dict = {
        "environment": environment(device),
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("json", "barrier", "barrier_count")
        },
        "batch_size": BATCH,
        "data": {"name": data.name, "train_images": len(data.train_labels)},
        "peak_flops_per_second": peak,
        "peak_note": peak_note,
        "models": {},
    }
    # The JSON is rewritten as each figure comes in: a time limit that ends the run (as in
    # benchmarks/gpu_check.sh) keeps what was measured before it.
    for m in models:
        results["models"][m] = measure_model(m, data, device, args)
        save(results, args.json)
        if args.concurrent > 1 and not args.barrier:
            single = measure_concurrent(m, 1, args)
            several = measure_concurrent(m, args.concurrent, args)
            several["gain_over_one"] = (
                several["total_images_per_second"] / single["total_images_per_second"]
            )
            results["models"][m]["concurrent"] = [single, several]
            save(results, args.json)
    return results


def save(results: dict, path: str | None) -> None:
    """Write the results so far as JSON (`write_json`: whole, never half a file)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(path), results)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        results = run(args)
    except UserError as err:
        print(f"throughput: error: {err}", file=sys.stderr)
        return 2
    if args.barrier:  # a concurrent worker: the parent reads the JSON
        return 0
    env = results["environment"]
    print(f"device: {env['device_name']}, torch {env['torch']}, batch {BATCH}")
    print(f"peak: {results['peak_flops_per_second'] / 1e12:.3f} TFLOP/s ({results['peak_note']})")
    print(report_table(results))
    for m, r in results["models"].items():
        print(f"{m}: {r['training_flops_per_image'] / 1e9:.2f} GFLOP per training image")
        if "plainnet" in r:
            print(f"{m} plainnet switches: {r['plainnet']['switches']}, "
                  f"warm-up {r['plainnet']['warmup_seconds']:.1f} s")  # fmt: skip
        for c in r.get("concurrent", []):
            print(f"{m}: {c['jobs']} concurrent job(s): {c['total_images_per_second']:,.0f} img/s"
                  + (f" ({c['gain_over_one']:.2f}x one job)" if "gain_over_one" in c else ""))  # fmt: skip
        if "profile" in r:
            work = ", ".join(
                f"{v:.0f} {k.replace('_', ' ')}" for k, v in r["host_work_per_step"].items()
            )
            print(f"\n{m}: profile of plainnet's training step (per step: {work})\n{r['profile']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
