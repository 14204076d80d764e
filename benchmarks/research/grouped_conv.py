#!/usr/bin/env python3
"""Grouped convolution against K dense convolutions: two ways to train K copies of a network.

For every distinct convolution of the chosen models (Plain-11 and ResNet-110 by default, found by
walking the real models on 32x32 inputs) and each K, two designs run the same K member
convolutions, forward and both backward passes (input and weight gradient by
`torch.autograd.grad` on a fixed random upstream gradient; no bias):

- grouped: one ``conv2d(groups=K)`` over ``K*Cin`` channels (horizontal fusion, as in HFTA);
- streams: K dense convolutions, on CUDA each on its own stream, forked from and joined back to
  the timing stream by events; on the CPU one after the other (no streams there).

Each configuration is first checked: the grouped output and gradients must equal the K dense
ones concatenated (same data and weights) within the dtype's tolerance.

Reading the numbers: µs per member-convolution = time of the K-member operation / K, median over
repetitions of N steps (N sized to ~``--target-ms`` per design; the designs' repetitions alternate).
Falling with K: the device was underused at K=1; ``ratio`` = streams / grouped, above 1 the grouped
convolution is faster. The per-model total (count x µs over the shapes) is one training step's
convolution time per member.
On CUDA a spin kernel holds the GPU while Python queues each repetition, so the figures are GPU
time without launch overhead (plainnet replays CUDA graphs); a trailing † marks a repetition
that Python took longer to queue than the spin lasted (the GPU may have waited for it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import namedtuple
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from plainnet import run_dir
from plainnet.models import build_model
from plainnet.provenance import environment

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Member convolutions per repetition, at most: about 5 kernel launches each, so the launch queue
# (about a thousand) never fills while the GPU spins, which would make Python wait for the GPU.
MAX_MEMBER_OPS = 96
ConvShape = namedtuple("ConvShape", "cin cout h w stride padding kernel")


def conv_shapes(model_name: str, size: int = 32) -> list[tuple[ConvShape, int]]:
    """The model's distinct convolutions and how often each runs in one forward pass, in order
    of first use: recorded by hooks on a real forward pass, so they follow the models' code."""
    model = build_model(model_name, num_classes=100).eval()
    counts: dict[ConvShape, int] = {}

    def record(m: nn.Conv2d, args: tuple, _out: torch.Tensor) -> None:
        # Both designs below assume square, ungrouped, undilated kernels, as in both models.
        assert m.groups == 1 and m.dilation == (1, 1), m
        assert all(v[0] == v[1] for v in (m.stride, m.padding, m.kernel_size)), m
        sizes = [v[0] for v in (m.stride, m.padding, m.kernel_size)]
        key = ConvShape(m.in_channels, m.out_channels, *args[0].shape[-2:], *sizes)
        counts[key] = counts.get(key, 0) + 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return list(counts.items())


def make_tensors(s: ConvShape, k: int, batch: int, device, dtype, fmt) -> tuple[list, list]:
    """Grouped input, weight and upstream gradient, and each member's share of them as its own
    contiguous tensor: all preallocated, the timed steps allocate only results."""
    ho, wo = ((d + 2 * s.padding - s.kernel) // s.stride + 1 for d in (s.h, s.w))
    x = torch.randn(batch, k * s.cin, s.h, s.w, device=device)
    # He-scaled weights keep the outputs near 1, so the bf16 check compares like magnitudes.
    w = torch.randn(k * s.cout, s.cin, s.kernel, s.kernel, device=device)
    w *= (2 / (s.cin * s.kernel**2)) ** 0.5
    g = torch.randn(batch, k * s.cout, ho, wo, device=device)
    grouped = [t.to(dtype).contiguous(memory_format=fmt) for t in (x, w, g)]
    chunks = [t.chunk(k, dim) for t, dim in zip(grouped, (1, 0, 1), strict=True)]
    members = [
        [t.contiguous(memory_format=fmt) for t in share] for share in zip(*chunks, strict=True)
    ]
    for x_, w_, _ in (grouped, *members):  # the tensors autograd differentiates with respect to
        x_.requires_grad_(True)
        w_.requires_grad_(True)
    return grouped, members


def fwd_bwd(x, w, g, s: ConvShape, groups: int) -> tuple:
    """One training pass of a convolution: output, input gradient, weight gradient."""
    y = F.conv2d(x, w, None, s.stride, s.padding, 1, groups)
    return (y, *torch.autograd.grad(y, (x, w), g))


class Fanout:
    """Runs K callables, on CUDA each on its own stream: every stream first waits for the work
    queued before on the current stream, and the current stream then waits for all of them, so
    that events recorded on it around a call time the whole K-member operation."""

    def __init__(self, k: int, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.streams = [torch.cuda.Stream(device) for _ in range(k)]
            self.fork = torch.cuda.Event()
            self.joins = [torch.cuda.Event() for _ in range(k)]

    def __call__(self, work: list) -> list:
        if not self.cuda:
            return [fn() for fn in work]
        main = torch.cuda.current_stream()
        self.fork.record(main)
        out = []
        for fn, stream, done in zip(work, self.streams, self.joins, strict=True):
            stream.wait_event(self.fork)
            # Tensors made in here are allocated on `stream` and only used there (autograd
            # runs each backward op on its forward op's stream), so their reuse needs no sync.
            with torch.cuda.stream(stream):
                out.append(fn())
            done.record(stream)
        for done in self.joins:
            main.wait_event(done)
        return out


def max_rel_diff(grouped: tuple, members: list) -> float:
    """Largest difference between the grouped results and the members' concatenated, relative
    to the largest value of each tensor (output, input gradient, weight gradient)."""
    worst = 0.0
    for i, (a, dim) in enumerate(zip(grouped, (1, 1, 0), strict=True)):
        b = torch.cat([m[i] for m in members], dim).float()
        worst = max(worst, ((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())
    return worst


def sleep_rate() -> float:
    """Clock cycles per ms of `torch.cuda._sleep`, the spin kernel that holds the GPU while
    Python queues a repetition (measured after a first spin, which lets the clocks rise)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(20_000_000)
    start.record()
    torch.cuda._sleep(20_000_000)
    end.record()
    end.synchronize()
    return 20_000_000 / start.elapsed_time(end)


def warm_up(step, launches: int, args, rate: float | None) -> tuple[int, float]:
    """Run untimed steps (cudnn autotunes in the first); returns the steps per repetition for
    ~``target_ms / reps`` and Python's time to issue one step (on CUDA: to queue it), in ms."""
    for _ in range(args.warmup):
        t0 = time.perf_counter()
        step()
        host_ms = (time.perf_counter() - t0) * 1e3
        if rate is not None:
            torch.cuda.synchronize()
        step_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    iters = max(1, min(MAX_MEMBER_OPS // launches, round(args.target_ms / args.reps / step_ms)))
    return iters, host_ms


def time_rep(step, iters: int, host_ms: float, rate: float | None) -> tuple[float, bool | None]:
    """µs per step over `iters` steps: on CUDA GPU time by events on the current stream, and
    whether Python outlasted the spin; on the CPU wall-clock time, and None."""
    if rate is not None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        # The GPU spins while Python queues the steps behind the spin, so that the events
        # time the GPU's work, not Python's (unless queueing outlasts the spin: flagged).
        spin_ms = min(1.5 * host_ms * iters + 0.5, 200.0)
        torch.cuda._sleep(int(spin_ms * rate))
        start.record()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    if rate is None:
        return elapsed_ms * 1e3 / iters, None
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / iters, elapsed_ms > spin_ms


def measure_pair(shape: ConvShape, k: int, args, device, rate: float | None) -> dict:
    """Both designs for one shape and K, after checking that they compute the same thing."""
    torch.manual_seed(0)
    grouped, members = make_tensors(shape, k, args.batch, device, args.dtype, args.fmt)
    fanout = Fanout(k, device)
    work = [lambda m=m: fwd_bwd(*m, shape, 1) for m in members]
    # The members' results, made on their streams, are read on the current stream (which the
    # fan-out made wait for them); the .item() inside waits for the reads before they are freed.
    diff = max_rel_diff(fwd_bwd(*grouped, shape, k), fanout(work))
    # bf16/fp16 round at 2^-8, each design picks its algorithms; CUDA fp32 convolutions use TF32
    tol = 5e-2 if args.dtype != torch.float32 else 1e-2 if device.type == "cuda" else 1e-4
    out = {"max_rel_diff": diff, "agree": diff <= tol}
    if not out["agree"]:
        print(f"ERROR: {shape}, K={k}: grouped and dense differ by {diff:.1e}", file=sys.stderr)
    # Each design's step, and how many member-convolutions it issues (to bound queued launches).
    steps = {"grouped": (lambda: fwd_bwd(*grouped, shape, k), 1)}
    steps["streams"] = (lambda: fanout(work), k)
    plans = {d: warm_up(step, launches, args, rate) for d, (step, launches) in steps.items()}
    reps = {d: [] for d in steps}
    for _ in range(args.reps):  # interleaved: a change of load or clocks hits both designs
        for d, (step, _) in steps.items():
            reps[d].append(time_rep(step, *plans[d], rate))
    for d, timed in reps.items():
        us = [t / k for t, _ in timed]  # per member-convolution
        host_bound = None if rate is None else any(h for _, h in timed)
        out[d] = {"us_per_member": statistics.median(us), "reps_us": us}
        out[d].update(iters_per_rep=plans[d][0], host_bound=host_bound)
    out["ratio"] = out["streams"]["us_per_member"] / out["grouped"]["us_per_member"]
    if device.type == "cuda":
        torch.cuda.synchronize()  # nothing queued may still use the tensors freed on return
    return out


def totals(shapes: list[dict], ks: list[int]) -> dict:
    """Per K and design: sum over shapes of count x µs per member (None if any is missing)."""
    result = {}
    for k in map(str, ks):
        runs = [(s["count"], s["results"].get(k)) for s in shapes]
        t = None
        if all(r is not None for _, r in runs):
            t = {d: sum(c * r[d]["us_per_member"] for c, r in runs) for d in ("grouped", "streams")}
            t["ratio"] = t["streams"] / t["grouped"]
        result[k] = t
    return result


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(c) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("| " + " | ".join(map(str.ljust, r, widths)) + " |" for r in lines)


def us(r: dict) -> str:
    return f"{r['us_per_member']:.1f}" + ("†" if r["host_bound"] else "")


def shape_table(name: str, shapes: list[dict], ks: list[int]) -> str:
    head = ["model", "conv", "input", "stride", "count", "K", "grouped µs", "streams µs", "ratio"]
    rows = []
    for s in shapes:
        conv = [f"{s['cin']}->{s['cout']}", f"{s['h']}x{s['w']}", str(s["stride"]), str(s["count"])]
        for k in ks:
            r, cells = s["results"].get(str(k)), ["not measured"] * 3
            if r:
                cells = [us(r["grouped"]), us(r["streams"]), f"{r['ratio']:.2f}"]
                cells[2] += "" if r["agree"] else f" MISMATCH {r['max_rel_diff']:.1e}"
            rows.append([name, *conv, str(k), *cells])
    return md_table(head, rows)


def totals_table(models: dict) -> str:
    head = ["model", "K", "grouped µs/step/member", "streams µs/step/member", "ratio"]
    rows = []
    for name, m in models.items():
        for k, t in m["totals_us"].items():
            cells = ["incomplete"] * 3
            if t:
                cells = [f"{t['grouped']:.0f}", f"{t['streams']:.0f}", f"{t['ratio']:.2f}"]
            rows.append([name, k, *cells])
    return md_table(head, rows)


def write_json(path: Path, value: dict) -> None:
    """Atomically, with plainnet's own writer (a crash keeps the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    run_dir.write_json(path, value)


def run_env(args, device: torch.device) -> dict:
    """plainnet's run environment (versions, git commit, device name), cuDNN and the data."""
    env = {**environment(device), "dtype": args.dtype_name, "layout": args.layout}
    env["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env["threads"], env["cuda"] = torch.get_num_threads(), torch.version.cuda
    env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda":
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return env


def k_list(value: str) -> list[int]:
    return [int(k) for k in value.split(",")]


def model_list(value: str) -> list[str]:
    names = [m for m in value.split(",") if m]
    for name in names:
        build_model(name, num_classes=100)  # an unknown name raises ValueError: a usage error
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--channels-last", choices=("on", "off"), default="on")
    p.add_argument("--models", type=model_list, default="plain11,resnet110", help="a,b,...")
    p.add_argument("--ks", type=k_list, help="K (members), a,b,...; default 1,2,4,8 (--quick 1,2)")
    p.add_argument("--batch", type=int, help="images per member; default 100 (--quick: 10)")
    p.add_argument("--reps", type=int, help="timed repetitions; default 5 (CPU 3, --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first; default 3 (CPU, --quick 1)")
    p.add_argument("--target-ms", type=float, help="timed ms per design and shape; 50 (CPU 200)")
    p.add_argument("--max-seconds", type=float, help="start no configuration after this")
    p.add_argument("--json", type=Path, help="write the results here (after each model and K)")
    p.add_argument("--quick", action="store_true", help="a rehearsal: K 1,2, batch 10, 2 reps")
    a = p.parse_args(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    cuda, q = a.device == "cuda", a.quick
    a.dtype_name = a.dtype or ("bf16" if cuda else "fp32")
    a.dtype = DTYPES[a.dtype_name]
    a.layout = "channels_last" if a.channels_last == "on" else "contiguous"
    a.fmt = torch.channels_last if a.channels_last == "on" else torch.contiguous_format
    a.ks = a.ks or ([1, 2] if q else [1, 2, 4, 8])
    a.batch = a.batch if a.batch is not None else 10 if q else 100
    a.reps = a.reps if a.reps is not None else 2 if q else 5 if cuda else 3
    a.warmup = a.warmup if a.warmup is not None else 3 if cuda and not q else 1
    a.target_ms = a.target_ms if a.target_ms is not None else 2.0 if q else 50.0 if cuda else 200.0
    if not a.models or min(a.ks) < 1 or min(a.batch, a.reps, a.warmup) < 1:
        p.error("--models must name a model; --ks, --batch, --reps, --warmup must be >= 1")
    return a


def run_model(name: str, args, device, rate, deadline: float, save) -> bool:
    """All configurations of one model, K by K (a time limit then leaves whole K complete),
    calling `save(name, result)` after each K; returns whether the time limit stopped it."""
    found = conv_shapes(name)
    result = {"shapes": [{**s._asdict(), "count": c, "results": {}} for s, c in found]}
    stopped = False
    for k in args.ks:
        for (shape, _), s in zip(found, result["shapes"], strict=True):
            stopped = stopped or time.monotonic() > deadline
            if not stopped:
                s["results"][str(k)] = measure_pair(shape, k, args, device, rate)
        result["totals_us"] = totals(result["shapes"], args.ks)
        save(name, result)
    return stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, t_start = torch.device(args.device), time.monotonic()
    deadline = t_start + (args.max_seconds if args.max_seconds is not None else float("inf"))
    rate = None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # each configuration's warm-up autotunes
        rate = sleep_rate()
    settings = {k: getattr(args, k) for k in ("batch", "ks", "reps", "warmup", "target_ms")}
    streams = "CUDA streams" if rate else "none: on the CPU the K convolutions run in turn"
    settings.update(max_seconds=args.max_seconds, streams=streams)
    report = {"benchmark": "grouped_conv", "environment": run_env(args, device)}
    report.update(settings=settings, models={}, stopped_early=False, elapsed_s=0.0)
    env = report["environment"]
    print(f"# grouped vs streams, {env['device_name']}, torch {env['torch']}, {args.dtype_name}")
    print(f"# {args.layout}, batch {args.batch} per member, K {args.ks}; streams: {streams}")

    def save(name: str, result: dict) -> None:
        report["models"][name] = result
        report["elapsed_s"] = round(time.monotonic() - t_start, 1)
        if args.json:
            write_json(args.json, report)

    for name in args.models:
        report["stopped_early"] = run_model(name, args, device, rate, deadline, save)
        save(name, report["models"][name])
        print(f"\n## {name}: µs per member-convolution (forward + both backward passes)\n")
        print(shape_table(name, report["models"][name]["shapes"], args.ks), flush=True)
        if report["stopped_early"]:
            print(f"\n--max-seconds {args.max_seconds}: stopped measuring")
            break
    print("\n## Convolution time of one training step per member (sum of count x µs)\n")
    print(totals_table(report["models"]))
    dagger = "; † the GPU may have waited for Python (a host-bound figure)" if rate else ""
    print(f"\n{report['elapsed_s']} s in all{dagger}")
    runs = [
        r for m in report["models"].values() for s in m["shapes"] for r in s["results"].values()
    ]
    return 0 if all(r["agree"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
