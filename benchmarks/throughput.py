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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from plainnet.config import AMP, SWITCH, TrainConfig, resolve_device, resolve_switches
from plainnet.data import DeviceLoader, ImageData, channel_stats, load_dataset
from plainnet.errors import UserError
from plainnet.evaluate import default_eval_batch_size, predict
from plainnet.models import build_model
from plainnet.provenance import environment
from plainnet.recipe import (
    TrainStep,
    build_model_and_optimizer,
    param_groups,
    seed_everything,
    weight_decay,
)
from plainnet.run_dir import write_json
from plainnet.schedules import ScheduledLR, lr_table, paper_schedule

BATCH = 100
EPOCH_IMAGES = 50_000  # a CIFAR training epoch
PAD = 4  # the conventional pipeline's pad-and-crop
# Dense bf16 tensor-core peak of an H100 (NVIDIA's data sheet, without sparsity), FLOP/s.
H100_PEAK = {"SXM": 989e12, "PCIe": 756e12}


# ---------------------------------------------------------------- data


def synthetic_data(n_train: int, n_test: int, num_classes: int = 100, seed: int = 0) -> ImageData:
    """Random CIFAR-shaped uint8 images: the speed of either pipeline does not depend on content."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    mean, std = channel_stats(train)
    return ImageData(
        name="synthetic",
        train_images=train,
        train_labels=torch.randint(0, num_classes, (n_train,), generator=g),
        test_images=test,
        test_labels=torch.randint(0, num_classes, (n_test,), generator=g),
        classes=[str(c) for c in range(num_classes)],
        mean=mean,
        std=std,
    )


class ConventionalCIFAR(Dataset):
    """The usual CIFAR ``Dataset``: HWC uint8 numpy images, transformed one image at a time.

    Training: zero-pad by 4, random 32x32 crop, horizontal flip with probability 0.5 (the
    torchvision ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``); then ``ToTensor``
    (CHW float in [0, 1]) and ``Normalize(mean / 255, std / 255)``. Random numbers come from
    torch's generator, which the DataLoader seeds per worker.
    """

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean, std, train: bool):
        self.images, self.labels, self.train = images_hwc, labels, train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) / 255

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if self.train:
            h, w = img.shape[:2]
            padded = np.pad(img, ((PAD, PAD), (PAD, PAD), (0, 0)))
            y0, x0 = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
            img = padded[y0 : y0 + h, x0 : x0 + w]
            if torch.rand(()) < 0.5:
                img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, int(self.labels[i])


# ---------------------------------------------------------------- the two pipelines


class Pipeline:
    """A training step and an evaluation pass of one pipeline, ready to be timed."""

    name: str
    model: nn.Module

    def train_steps(self, n: int) -> None:
        raise NotImplementedError

    def evaluate(self, n: int) -> None:
        raise NotImplementedError


class PlainnetPipeline(Pipeline):
    """`plainnet train`'s loader and step, built as `plainnet train` builds them, stepped
    through epochs with `TrainStep.steps`, the loop primitive `plainnet train` runs."""

    name = "plainnet"

    def __init__(self, model_name: str, data: ImageData, device: torch.device, cfg: TrainConfig):
        self.switches = resolve_switches(cfg, device)
        seed_everything(0)
        self.model, optimizer = build_model_and_optimizer(
            cfg, data.num_classes, device, self.switches
        )
        loader = DeviceLoader(
            data.train_images, data.train_labels, batch_size=BATCH, augment=cfg.augment,
            seed=0, device=device,
        )  # fmt: skip
        self.iters = len(data.train_labels) // BATCH
        schedule = paper_schedule("sgdr", self.iters, 1.0)
        self.mean, self.std = (torch.tensor(v, device=device) for v in (data.mean, data.std))
        self.step = TrainStep(
            self.model, optimizer, loader, lr_table(schedule, schedule.total_iters, device),
            mean=self.mean, std=self.std, switches=self.switches, clip_norm=cfg.clip_norm,
        )  # fmt: skip
        self.device, self.epoch, self.position = device, 0, 0
        self.test_x = data.test_images.to(device)
        self.step.start_epoch(0, 0, 0)

    def train_steps(self, n: int) -> None:
        self.model.train()
        while n:
            if self.position == self.iters:  # the next epoch, as `plainnet train` starts it
                self.epoch, self.position = self.epoch + 1, 0
                self.step.start_epoch(self.epoch, 0, self.epoch * self.iters)
            k = min(n, self.iters - self.position)
            for _ in self.step.steps(self.position, self.position + k):
                pass
            self.position, n = self.position + k, n - k
        float(self.step.loss_sum)  # the loop's periodic read-back, and the end of the timed work

    def evaluate(self, n: int) -> None:
        logits = predict(
            self.model, self.test_x[:n], self.mean, self.std,
            channels_last=self.switches.channels_last,
        )  # fmt: skip
        float(logits.sum())


class ConventionalPipeline(Pipeline):
    """The loop most PyTorch CIFAR code runs: DataLoader workers, fp32, eager, ``.item()``."""

    name = "conventional"

    def __init__(self, model_name: str, data: ImageData, device: torch.device, workers: int):
        seed_everything(0)
        self.model = build_model(model_name, data.num_classes).to(device)
        self.optimizer = torch.optim.SGD(
            param_groups(self.model, weight_decay(TrainConfig(model=model_name))),
            lr=0.0,
            momentum=0.9,
        )
        iters = len(data.train_labels) // BATCH
        self.scheduler = ScheduledLR(self.optimizer, paper_schedule("sgdr", iters, 1.0))
        self.device = device

        def loader(images: torch.Tensor, labels: torch.Tensor, train: bool) -> DataLoader:
            hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
            ds = ConventionalCIFAR(hwc, labels.numpy(), data.mean, data.std, train)
            return DataLoader(
                ds,
                batch_size=BATCH,
                shuffle=train,
                drop_last=train,
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
            )

        self.train_loader = loader(data.train_images, data.train_labels, True)
        self.test_loader = loader(data.test_images, data.test_labels, False)
        self._train_iter = iter(self.train_loader)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self._train_iter)
        except StopIteration:
            self._train_iter = iter(self.train_loader)
            return next(self._train_iter)

    def train_steps(self, n: int) -> None:
        self.model.train()
        running_loss, correct = 0.0, 0
        for _ in range(n):
            x, y = self._next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            self.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.optimizer.step()
            self.scheduler.step()
            running_loss += loss.item()
            correct += (out.argmax(1) == y).sum().item()

    @torch.no_grad()
    def evaluate(self, n: int) -> None:
        self.model.eval()
        seen = 0
        for x, y in self.test_loader:
            out = self.model(x.to(self.device, non_blocking=True))
            (out.argmax(1) == y.to(self.device)).sum().item()
            seen += len(y)
            if seen >= n:
                break


# ---------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory while the block runs: allocated CUDA memory on a GPU, else the resident set
    of this process (sampled every 5 ms; DataLoader worker processes are not counted). MiB."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            try:
                rss = int(Path("/proc/self/statm").read_text().split()[1]) * page
            except (OSError, ValueError, IndexError):
                return  # no /proc (not Linux): no figure
            self.peak = max(self.peak, rss / 2**20)
            if self._stop.wait(0.005):
                return

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(seconds, peak memory MiB) of one call of ``fn``, device work included."""
    sync(device)
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        fn()
        sync(device)
        seconds = time.perf_counter() - t0
    return seconds, mem.peak


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "reps": values,
    }


def training_flops(model_name: str, num_classes: int) -> float:
    """FLOPs of forward + backward per training image (fp32 eager, batch 100, CPU)."""
    model = build_model(model_name, num_classes)
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, num_classes, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def device_peak(device: torch.device) -> tuple[float, str]:
    """(peak FLOP/s, what it is): a measured fp32 matmul on the CPU, the data sheet on a GPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H100" in name or "H200" in name:
            kind = "PCIe" if "PCIe" in name else "SXM"
            return H100_PEAK[kind], f"{name}: dense bf16 data-sheet peak ({kind})"
        # Elsewhere: measure a large bf16 matmul (an underestimate of the data sheet).
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        return _matmul_rate(a, device), f"{name}: measured 8192^3 bf16 matmul"
    a = torch.randn(2048, 2048)
    return _matmul_rate(a, device), (
        f"measured 2048^3 fp32 matmul on {torch.get_num_threads()} threads"
    )


def _matmul_rate(a: torch.Tensor, device: torch.device, reps: int = 5) -> float:
    a @ a  # warm-up
    rates = []
    for _ in range(reps):
        seconds, _ = timed(lambda: a @ a, device)
        rates.append(2 * a.shape[0] ** 3 / seconds)
    return max(rates)  # peak: the best repetition


# The CUDA runtime and driver calls that launch a kernel (cudaLaunchKernel, cudaLaunchKernelExC,
# cuLaunchKernel for Triton's kernels, ...) or a CUDA graph, as torch.profiler names them.
KERNEL_LAUNCH_PREFIXES = ("cudaLaunchKernel", "cuLaunchKernel")
GRAPH_LAUNCH_PREFIX = "cudaGraphLaunch"


def host_dispatches(events) -> list:
    """The aten ops that the host dispatches itself, not those that run inside another aten op
    (from ``prof.events()``). Each is one trip through Python and the dispatcher, and on a GPU
    each one that computes launches at least one kernel: this is what CUDA graphs and compiling
    the step save. Ops that compiled code calls out to (convolutions, matmuls) count too."""

    def inside_op(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    return [e for e in events if e.name.startswith("aten::") and not inside_op(e)]


def profile_step(pipe: PlainnetPipeline, steps: int = 3, rows: int = 15) -> tuple[str, dict]:
    """Top ops of ``steps`` training steps under torch.profiler (CPU, and CUDA on a GPU), and
    the host's work per step: aten ops dispatched (`host_dispatches`), and on CUDA the kernel
    launches and CUDA-graph replays."""
    from torch.profiler import ProfilerActivity, profile

    cuda = pipe.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        pipe.train_steps(steps)
    events = prof.events()
    per_step = {"host_ops": len(host_dispatches(events)) / steps}
    if cuda:
        launches = sum(e.name.startswith(KERNEL_LAUNCH_PREFIXES) for e in events)
        per_step["kernel_launches"] = launches / steps
        per_step["graph_launches"] = (
            sum(e.name.startswith(GRAPH_LAUNCH_PREFIX) for e in events) / steps
        )
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows), per_step


def measure_model(model_name: str, data: ImageData, device: torch.device, args) -> dict:
    """Both pipelines (or ``args.only``) for one model, interleaved repetition by repetition."""
    cfg = TrainConfig(
        model=model_name,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
    )
    pipes: list[Pipeline] = []
    compile_seconds = {}
    for kind in ("plainnet", "conventional"):
        if args.only not in (None, kind):
            continue
        pipe = (
            PlainnetPipeline(model_name, data, device, cfg)
            if kind == "plainnet"
            else ConventionalPipeline(model_name, data, device, args.workers)
        )
        # Warm-up, untimed: compilation, autotuning, worker start-up, allocator caches.
        note(f"{model_name} {kind}: warm-up ({args.warmup} steps)")
        compile_seconds[kind] = timed(lambda p=pipe: p.train_steps(args.warmup), device)[0]
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
            train_rate[p.name].append(args.steps * BATCH / seconds)
            memory[p.name] = max(memory[p.name], peak)
    for _ in range(args.reps):
        for p in pipes:
            seconds, _ = timed(lambda p=p: p.evaluate(args.eval_images), device)
            eval_rate[p.name].append(min(args.eval_images, len(data.test_labels)) / seconds)

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
            **({"switches": p.switches.record()} if isinstance(p, PlainnetPipeline) else {}),
        }
    if len(pipes) == 2:
        pairs = [
            a / b for a, b in zip(train_rate["plainnet"], train_rate["conventional"], strict=True)
        ]
        evals = [
            a / b for a, b in zip(eval_rate["plainnet"], eval_rate["conventional"], strict=True)
        ]
        result["ratio"] = {"train": spread(pairs), "eval": spread(evals)}
    if args.profile and pipes and isinstance(pipes[0], PlainnetPipeline):
        result["profile"], result["host_work_per_step"] = profile_step(pipes[0])
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
        for kind in ("plainnet", "conventional"):
            if kind not in r:
                continue
            p = r[kind]
            t = p["train_images_per_second"]
            util = p["achieved_flops_per_second"] / results["peak_flops_per_second"]
            rows.append(
                [
                    model_name,
                    kind,
                    f"{t['median']:,.0f} ({t['min']:,.0f}-{t['max']:,.0f})",
                    f"{p['seconds_per_epoch']:,.1f}",
                    f"{p['eval_images_per_second']['median']:,.0f}",
                    f"{p['peak_memory_mib']:,.0f}",
                    f"{100 * util:.1f} %",
                ]
            )
        if "ratio" in r:
            tr, ev = r["ratio"]["train"], r["ratio"]["eval"]
            rows.append(
                [
                    model_name,
                    "**ratio**",
                    f"**{tr['median']:.2f}x** ({tr['min']:.2f}-{tr['max']:.2f})",
                    "",
                    f"{ev['median']:.2f}x",
                    "",
                    "",
                ]
            )
    headers = [
        "model",
        "pipeline",
        "train img/s: median (min-max)",
        "s / epoch",
        "eval img/s",
        "peak MiB",
        "of peak FLOP/s",
    ]
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
