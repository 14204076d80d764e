"""How benchmarks/throughput.py measures: time with the device's work included, peak memory,
training FLOPs, the device's peak, and the host's work per step under the profiler."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from plainnet.models import build_model

BATCH = 100
# Dense bf16 tensor-core peak of an H100 and H200 (NVIDIA's data sheets, without sparsity).
H100_PEAK = {"SXM": 989e12, "PCIe": 756e12}


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
    """(peak FLOP/s, what it is): the data sheet on an H100/H200, else the faster of a large
    matmul and a large convolution measured here (on a CPU the matmul library may be the slower
    one: MKL on an AMD CPU reached less than oneDNN's convolutions)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H100" in name or "H200" in name:
            kind = "PCIe" if "PCIe" in name else "SXM"
            return H100_PEAK[kind], f"{name}: dense bf16 data-sheet peak ({kind})"
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        return _rate(lambda: a @ a, 2 * 8192**3, device), f"{name}: measured 8192^3 bf16 matmul"
    a = torch.randn(2048, 2048)
    x = torch.randn(64, 256, 16, 16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)
    matmul = _rate(lambda: a @ a, 2 * 2048**3, device)
    conv = _rate(lambda: F.conv2d(x, w, padding=1), 2 * 64 * 256 * 256 * 9 * 16 * 16, device)
    threads = torch.get_num_threads()
    return max(matmul, conv), (
        f"the faster of a 2048^3 fp32 matmul ({matmul / 1e9:.0f} GFLOP/s) and a 256-channel "
        f"3x3 convolution ({conv / 1e9:.0f} GFLOP/s), measured on {threads} threads"
    )


def _rate(fn: Callable[[], object], flops: float, device: torch.device, reps: int = 5) -> float:
    fn()  # warm-up
    return max(flops / timed(fn, device)[0] for _ in range(reps))  # peak: the best repetition


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


def profile_step(pipe, steps: int = 3, rows: int = 15) -> tuple[str, dict]:
    """Top ops of ``steps`` training steps under torch.profiler (CPU, and CUDA on a GPU), and
    the host's work per step: aten ops dispatched (`host_dispatches`), and on CUDA the kernel
    launches and CUDA-graph replays, and the GPU's kernels and milliseconds per step."""
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
        # What the GPU itself did: its kernels (inside replayed graphs too) and their time.
        on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        per_step["device_kernels"] = len(on_gpu) / steps
        per_step["gpu_ms"] = sum(e.self_device_time_total for e in on_gpu) / steps / 1000
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows), per_step
