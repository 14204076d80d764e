"""Grids of runs: Table I (`reproduce`), depth/width sweeps (`sweep`), and how they are run.

A grid is a list of `RunSpec` (model, schedule, seed, a file-system safe name). Each spec is a
run directory ``OUT/<name>``; `run_grid` trains the ones that are not finished yet, each in its
own process (a crash stays in its run; its output goes to ``OUT/logs/<name>.log``):

- locally: one run at a time on the CPU, one per GPU at a time with several GPUs
  (``CUDA_VISIBLE_DEVICES``), or ``jobs_per_device`` runs packed on each GPU;
- through submitit (``launcher="local"`` or ``"slurm"``): one job array, one task per run,
  requeued and resumed after preemption.

Because `plainnet.train.train` continues a run from its directory by itself, "resume" is only
"start the same run again". A finished run is skipped; a diverged one too, unless asked to
retry (it would diverge again); a crashed or interrupted one is resumed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plainnet.errors import UserError
from plainnet.run_dir import read_json, write_json

PAPER_MODELS = ("plain11", "resnet110")
PAPER_SCHEDULES = ("step", "clr", "sgdr")
PAPER_SEEDS = (0, 1, 2)
# --quick: one seed, schedules at 1/20 of their length (8-9 epochs), 1,200 training images (a
# class-balanced subset) in batches of 50 (24 iterations an epoch, ~200 a run: enough for the
# BatchNorm running statistics, momentum 0.01, to settle; batches of 25 were unstable at the
# paper's lr 0.1) and 500 test images: six runs in about 10 minutes on 2 CPU cores.
QUICK = {"seeds": (0,), "scale": 0.05, "train_limit": 1200, "test_limit": 500, "batch_size": 50}
# Folders under OUT that are not runs.
NOT_RUNS = ("logs", "figures", "submitit")
LAUNCHERS = ("process", "local", "slurm")


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: what `TrainConfig` it overrides, and its directory's name."""

    model: str
    schedule: str
    seed: int
    width_mult: float | None = None  # None: the grid's --width-mult
    label: str = ""  # a file-system safe model name; default: the model name

    @property
    def name(self) -> str:
        return f"{self.label or safe_name(self.model)}-{self.schedule}-s{self.seed}"

    def overrides(self) -> dict:
        fixed = {"model": self.model, "schedule": self.schedule, "seed": self.seed}
        return fixed if self.width_mult is None else {**fixed, "width_mult": self.width_mult}


def safe_name(model: str) -> str:
    """A model name usable as a directory name (``plain16-16|32`` -> ``plain16-16_32``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


def paper_grid(
    models: Sequence[str] = PAPER_MODELS,
    schedules: Sequence[str] = PAPER_SCHEDULES,
    seeds: Sequence[int] = PAPER_SEEDS,
) -> list[RunSpec]:
    """Table I's grid, model-major: every model x schedule x seed (``plain11-sgdr-s0``, ...)."""
    specs = [RunSpec(m, s, seed) for m in models for s in schedules for seed in seeds]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UserError("two models of the grid map to the same directory name; rename one")
    return specs


# ---- shards ----


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 1 <= i <= n (shards are numbered from 1, like array tasks)."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserError(f"--shard wants i/n like 1/4, got {text!r}") from None
    if not 1 <= i <= n:
        raise UserError(f"--shard {text}: need 1 <= i <= n (shards are numbered from 1)")
    return i, n


def shard(specs: Sequence[RunSpec], i: int, n: int) -> list[RunSpec]:
    """The i-th (1-based) of n parts: every n-th run by position in the FULL grid, so a shard
    holds the same runs whatever has already finished."""
    return list(specs[i - 1 :: n])


# ---- run states ----


def run_status(path: Path) -> str:
    """``missing``, or the status in ``summary.json`` (``unreadable`` if it cannot be read)."""
    try:
        return read_json(path / "summary.json").get("status", "unreadable")
    except UserError:
        return "missing" if not (path / "summary.json").exists() else "unreadable"


def to_run(specs: Sequence[RunSpec], out: Path, *, retry_failed: bool = False) -> list[RunSpec]:
    """The specs still to train: not finished, and not diverged (unless ``retry_failed``)."""
    skip = {"finished"} if retry_failed else {"finished", "diverged"}
    return [s for s in specs if run_status(out / s.name) not in skip]


def mark_failed(run: Path, spec: RunSpec, error: str) -> None:
    """Record a crash: status ``failed`` and the error's last line in ``summary.json``."""
    path = run / "summary.json"
    try:
        summary = read_json(path)
    except UserError:
        summary = {"model": spec.model, "schedule": spec.schedule, "seed": spec.seed}
    if summary.get("status") in ("finished", "diverged"):
        return  # the run itself recorded how it ended
    run.mkdir(parents=True, exist_ok=True)
    write_json(path, {**summary, "status": "failed", "error": error})


def _clear_stale_failure(run: Path) -> None:
    """A run that failed before it started holds only our ``summary.json``: remove it, so that
    `train` sees an empty directory and starts the run."""
    if not (run / "config.json").exists() and (run / "summary.json").exists():
        (run / "summary.json").unlink()


def last_line(path: Path) -> str:
    """The last non-empty line of a log (the error of a crashed run), or a placeholder."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    return lines[-1][:500] if lines else "crashed without output"


# ---- running: one process per run ----


def child_command(run: Path, config: dict) -> list[str]:
    """The command that trains ``config`` in ``run``: this module's ``__main__`` below."""
    return [sys.executable, "-m", "plainnet.experiments", str(run), json.dumps(config)]


def device_slots(device: str, jobs_per_device: int) -> list[str | None]:
    """Where runs may go at the same time: ``jobs_per_device`` slots per visible GPU; one slot
    (``None``: no ``CUDA_VISIBLE_DEVICES`` change) on the CPU, whose cores one run already uses."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return [gpu for gpu in ids for _ in range(jobs_per_device)]


def run_processes(
    jobs: Sequence[tuple[RunSpec, dict]],
    out: Path,
    slots: Sequence[str | None],
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Train each (spec, config) in a child process, ``len(slots)`` at a time; returns each
    run's final status. A child that crashes leaves its run marked ``failed``."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue = list(jobs)
    free = list(slots)
    running: dict[subprocess.Popen, tuple[RunSpec, str | None, object]] = {}
    done: dict[str, str] = {}
    try:
        while queue or running:
            while queue and free:
                spec, config = queue.pop(0)
                slot = free.pop(0)
                run = out / spec.name
                _clear_stale_failure(run)
                env = dict(os.environ)
                if slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot
                logfile = open(logs / f"{spec.name}.log", "a")  # noqa: SIM115 - closed below
                where = f" on GPU {slot}" if slot is not None else ""
                log(f"[{len(done) + len(running) + 1}/{len(jobs)}] {spec.name}{where}")
                proc = subprocess.Popen(
                    child_command(run, config), stdout=logfile, stderr=subprocess.STDOUT, env=env
                )
                running[proc] = (spec, slot, logfile)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                spec, slot, logfile = running.pop(proc)
                logfile.close()
                free.append(slot)
                done[spec.name] = _finish(proc.returncode, out, spec, log)
    except KeyboardInterrupt:
        # Ctrl-C reached the children too (same process group): they checkpoint and exit.
        for proc, (_, _, logfile) in running.items():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            logfile.close()
        raise
    return done


def _finish(returncode: int, out: Path, spec: RunSpec, log: Callable[[str], None]) -> str:
    run = out / spec.name
    if returncode not in (0, 130):  # 130: interrupted, checkpointed; it resumes next time
        mark_failed(run, spec, last_line(out / "logs" / f"{spec.name}.log"))
    status = run_status(run)
    try:
        error = read_json(run / "summary.json").get("test_error")
    except UserError:
        error = None
    detail = f" (test error {error:.2f} %)" if isinstance(error, float | int) else ""
    if status == "failed":
        detail = f": {last_line(out / 'logs' / f'{spec.name}.log')}"
    log(f"{spec.name}: {status}{detail}")
    return status


def train_and_evaluate(config: dict, run: str | Path, log: Callable[[str], None] = print) -> None:
    """Train one run of a grid; a finished CLR/SGDR run then gets its snapshot ensemble
    evaluated (``evaluation.json``), which the report shows beside the final model."""
    from plainnet.evaluate import evaluate_path
    from plainnet.train import TrainConfig, train

    cfg = TrainConfig(**config)
    summary = train(cfg, run, log=log)
    if summary["status"] == "finished" and cfg.snapshots and cfg.schedule != "step":
        evaluate_path(run, ensemble=True, log=log)


def _child_main(argv: Sequence[str]) -> int:
    """``python -m plainnet.experiments RUN_DIR CONFIG_JSON``: train one run of a grid."""
    run, config = argv
    try:
        train_and_evaluate(json.loads(config), run, log=lambda msg: print(msg, flush=True))
    except UserError as err:
        print(f"plainnet: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("plainnet: interrupted (checkpoint saved)", file=sys.stderr, flush=True)
        return 130
    return 0


# ---- running: submitit (a local executor or a Slurm job array) ----


class TrainJob:
    """The callable submitit runs for one grid run. On preemption or timeout submitit calls
    `checkpoint`, which resubmits the same call: `train` then resumes from the run directory."""

    def __call__(self, run: str, config: dict, spec: RunSpec) -> str:
        try:
            train_and_evaluate(config, run)
        except UserError as err:  # Diverged included: the run has recorded it
            mark_failed(Path(run), spec, str(err).splitlines()[0])
        except Exception as err:
            mark_failed(Path(run), spec, f"{type(err).__name__}: {err}".splitlines()[0])
            raise
        return run_status(Path(run))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class SlurmOptions:
    """What a Slurm array task asks for (`submitit` parameters)."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher needs submitit: pip install submitit") from None
    return submitit


def make_executor(launcher: str, folder: Path, slurm: SlurmOptions, cpu: bool):
    """A submitit executor: ``local`` (this machine) or ``slurm`` (needs ``sbatch``)."""
    submitit = _import_submitit()
    if launcher == "slurm":
        from shutil import which

        if which("sbatch") is None:
            raise UserError("--launcher slurm: no sbatch on PATH (run this on a Slurm login node)")
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        extra = {"slurm_account": slurm.account, "slurm_qos": slurm.qos}
        executor.update_parameters(
            timeout_min=slurm.time_min,
            slurm_partition=slurm.partition,
            gpus_per_node=0 if cpu else slurm.gpus_per_task,
            tasks_per_node=1,
            cpus_per_task=slurm.cpus_per_task,
            mem_gb=slurm.mem_gb,
            slurm_array_parallelism=slurm.array_parallelism,
            slurm_additional_parameters={k[6:]: v for k, v in extra.items() if v},
        )
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="local")
    # One run at a time on this machine: the local executor starts all tasks at once.
    executor.update_parameters(timeout_min=slurm.time_min, gpus_per_node=0 if cpu else 1)
    return executor


def submit(
    jobs: Sequence[tuple[RunSpec, dict]],
    out: Path,
    launcher: str,
    slurm: SlurmOptions,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Submit the runs as one job array. ``local`` waits for them (one at a time); ``slurm``
    returns at once: rerun ``reproduce`` (or ``report``) with the same ``--out`` to collect."""
    cpu = all(config.get("device") == "cpu" for _, config in jobs)
    executor = make_executor(launcher, out / "submitit", slurm, cpu)
    if launcher == "local":
        statuses = {}
        for spec, config in jobs:  # sequential: each local job gets the whole machine
            run = out / spec.name
            _clear_stale_failure(run)
            job = executor.submit(TrainJob(), str(run), config, spec)
            log(f"{spec.name}: submitted as local job {job.job_id}")
            try:
                statuses[spec.name] = job.result()
            except Exception as err:
                mark_failed(run, spec, str(err).strip().splitlines()[-1][:500])
                statuses[spec.name] = "failed"
            log(f"{spec.name}: {statuses[spec.name]}")
        return statuses
    for spec, _ in jobs:
        _clear_stale_failure(out / spec.name)
    array = executor.map_array(
        TrainJob(),
        [str(out / spec.name) for spec, _ in jobs],
        [config for _, config in jobs],
        [spec for spec, _ in jobs],
    )
    for (spec, _), job in zip(jobs, array, strict=True):
        log(f"{spec.name}: submitted as Slurm job {job.job_id}")
    return {spec.name: "submitted" for spec, _ in jobs}


# ---- the grid runner behind `reproduce` and `sweep` ----


@dataclass
class RunnerOptions:
    """How to run a grid (the options `reproduce` and `sweep` share)."""

    jobs_per_device: int = 1
    launcher: str = "process"
    shard: str | None = None
    retry_failed: bool = False
    slurm: SlurmOptions = dataclasses.field(default_factory=SlurmOptions)


def run_grid(
    specs: Sequence[RunSpec],
    base: dict,
    out: str | Path,
    runner: RunnerOptions,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Train every run of ``specs`` (this shard of it) that is not done yet, into ``out``.

    ``base`` is a `TrainConfig` as a dict; each spec overrides its model, schedule, seed and
    width. Returns the status of each run started (finished, diverged, failed, submitted...).
    """
    from plainnet.train import TrainConfig

    out = Path(out)
    if runner.launcher not in LAUNCHERS:
        raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS[1:])}")
    if runner.jobs_per_device < 1:
        raise UserError("--jobs-per-device must be a positive integer")
    if runner.shard:
        specs = shard(specs, *parse_shard(runner.shard))
    jobs = []
    for spec in specs:
        config = TrainConfig(**{**base, **spec.overrides()})
        config.validate()  # every mistake before the first run starts, not hours later
        jobs.append((spec, dataclasses.asdict(config)))
    todo = {s.name for s in to_run(specs, out, retry_failed=runner.retry_failed)}
    skipped = len(jobs) - len(todo)
    jobs = [(spec, config) for spec, config in jobs if spec.name in todo]
    log(f"{out}: {len(specs)} runs, {skipped} done (finished or diverged), {len(jobs)} to run")
    if not jobs:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    if runner.launcher != "process":
        return submit(jobs, out, runner.launcher, runner.slurm, log)
    return run_processes(jobs, out, device_slots(base["device"], runner.jobs_per_device), log)


def reproduce(
    out: str | Path,
    base: dict,
    *,
    models: Sequence[str] = PAPER_MODELS,
    schedules: Sequence[str] = PAPER_SCHEDULES,
    seeds: Sequence[int] = PAPER_SEEDS,
    runner: RunnerOptions | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Table I: train the grid's missing runs into ``out``, then write ``out/report.md``."""
    from plainnet.report import write_report

    run_grid(paper_grid(models, schedules, seeds), base, out, runner or RunnerOptions(), log)
    return write_report(out, log=log)


# ---- sweep: the plain family over depth and width, the CIFAR ResNets over depth ----

PLAIN11_UNITS = (2, 3, 3, 1)  # conv units per block of Plain-11 (widths 64, 128, 256, 512)
PLAIN_WIDTHS = (64, 128, 256, 512)


def plain_units(depth: int) -> list[int]:
    """Conv units per block for a plain network of ``depth`` trainable layers (convs + 2 FC).

    Plain-11's four blocks keep their widths; its 9 convs are scaled to ``depth - 2`` in
    Plain-11's proportions 2:3:3:1 (largest remainder, at least one unit a block): depth 6 ->
    1-1-1-1, 11 -> 2-3-3-1 (Plain-11 itself), 20 -> 4-6-6-2.
    """
    convs = depth - 2
    if convs < len(PLAIN11_UNITS):
        raise UserError(f"plain depth {depth} is too shallow: the smallest is 6 (one conv a block)")
    exact = [u * convs / sum(PLAIN11_UNITS) for u in PLAIN11_UNITS]
    units = [max(1, int(x)) for x in exact]
    by_remainder = sorted(range(4), key=lambda i: (exact[i] - int(exact[i]), -i), reverse=True)
    for i in by_remainder:
        if sum(units) >= convs:
            break
        units[i] += 1
    while sum(units) > convs:  # the at-least-one rule overshot: take from the biggest block
        units[units.index(max(units))] -= 1
    return units


def plain_model(depth: int) -> str:
    """The `build_model` name of the plain network of ``depth`` layers (width multiplier 1)."""
    blocks = ["-".join([str(w)] * n) for w, n in zip(PLAIN_WIDTHS, plain_units(depth), strict=True)]
    return "plain" + "|".join(blocks)


def sweep_grid(
    depths: Sequence[int],
    widths: Sequence[float],
    resnet_depths: Sequence[int],
    schedule: str,
    seeds: Sequence[int],
) -> list[RunSpec]:
    """Plain networks for every depth x width multiplier, then ResNets for every depth."""
    specs = [
        RunSpec(plain_model(d), schedule, seed, width_mult=w, label=f"plain-d{d}-w{w:g}")
        for d in depths
        for w in widths
        for seed in seeds
    ]
    for d in resnet_depths:
        if d < 8 or (d - 2) % 6:
            raise UserError(f"ResNet depth {d} is not 6n+2 (e.g. 20, 32, 56, 110)")
        specs += [RunSpec(f"resnet{d}", schedule, seed, label=f"resnet-d{d}") for seed in seeds]
    return specs


def sweep(
    out: str | Path,
    base: dict,
    *,
    depths: Sequence[int],
    widths: Sequence[float],
    resnet_depths: Sequence[int],
    schedule: str = "sgdr",
    seeds: Sequence[int] = (0,),
    runner: RunnerOptions | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the sweep's missing runs into ``out``, then write ``sweep.md/.csv/.png``."""
    from plainnet.report import write_sweep_report

    specs = sweep_grid(depths, widths, resnet_depths, schedule, seeds)
    run_grid(specs, base, out, runner or RunnerOptions(), log)
    return write_sweep_report(out, specs, log=log)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
