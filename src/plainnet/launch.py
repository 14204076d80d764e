"""Running a grid: the runs that are not done yet, each group of runs in its own process.

- ``process`` (default): child processes here; one group at a time on the CPU, one per GPU at a
  time with several GPUs (``CUDA_VISIBLE_DEVICES``), or ``jobs_per_device`` groups on each GPU;
- ``local``/``slurm``: submitit, one task per group, requeued and resumed after preemption
  (`plainnet.submit`).

A group is up to ``runs_per_process`` runs of one configuration (the seeds of a cell) trained
together by `plainnet.train.train_together`. Because `plainnet.train.train` continues a run from
its directory by itself, "resume" is "start the same runs again": finished runs are skipped,
diverged ones too (unless retried), crashed or interrupted ones resume.

The grid runner holds the grid's lock (a second runner on the same directory is refused), only
ever writes a run's files while holding that run's lock, and owns its children: a stop request
(Ctrl-C, SIGTERM) is passed on to them, they checkpoint, and the runner says so and exits 130.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plainnet.config import TrainConfig
from plainnet.errors import UserError
from plainnet.grid import (
    Job,
    RunSpec,
    check_unique,
    clear_stale_failure,
    config_key,
    mark_failed,
    parse_shard,
    run_status,
    runs_to_train,
    shard,
)
from plainnet.run_dir import RunDir, make_folder, open_for_writing
from plainnet.runtime import StopRequest, duration
from plainnet.submit import SlurmOptions, submit

LAUNCHERS = ("process", "local", "slurm")
Log = Callable[[str], None]


@dataclass
class RunnerOptions:
    """How to run a grid (the options `reproduce` and `sweep` share)."""

    jobs_per_device: int = 1
    runs_per_process: int = 1
    launcher: str = "process"
    shard: str | None = None
    retry_failed: bool = False
    slurm: SlurmOptions = dataclasses.field(default_factory=SlurmOptions)


def run_grid(
    specs: Sequence[RunSpec],
    base: dict,
    out: str | Path,
    runner: RunnerOptions,
    log: Log = print,
    *,
    command: str | None = None,
) -> dict[str, str]:
    """Train every run of ``specs`` (this shard of it) that is not done yet, into ``out``.

    ``base`` is a `TrainConfig` as a dict; each spec overrides its model, schedule, seed and
    width. Every configuration is checked before the first run starts. Returns the status of
    each run started (finished, diverged, failed, interrupted, submitted, ...). ``command``
    (the command line) is added to ``out/commands.txt``, the report's provenance.
    """
    out = Path(out)
    if runner.launcher not in LAUNCHERS:
        raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)}")
    check_unique(specs)
    if runner.shard:
        specs = shard(specs, *parse_shard(runner.shard))
    configs = [TrainConfig(**{**base, **spec.overrides()}) for spec in specs]
    for config in configs:
        config.validate()  # every mistake before the first run starts, not hours later
    pending = {s.name for s in runs_to_train(specs, out, retry_failed=runner.retry_failed)}
    check_data([c for s, c in zip(specs, configs, strict=True) if s.name in pending], log)
    jobs = [(spec, dataclasses.asdict(c)) for spec, c in zip(specs, configs, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    with RunDir(out).locked():  # one runner per grid directory
        if command:
            record_command(out / "commands.txt", command)
        todo = {s.name for s in runs_to_train(specs, out, retry_failed=runner.retry_failed)}
        log(f"{out}: {len(specs)} runs, {len(specs) - len(todo)} done, {len(todo)} to run")
        groups = group_jobs([j for j in jobs if j[0].name in todo], runner.runs_per_process)
        if not groups:
            return {}
        if runner.launcher != "process":
            return submit(groups, out, runner.launcher, runner.slurm, log)
        return run_processes(groups, out, device_slots(base["device"], runner.jobs_per_device), log)


def check_outcome(specs: Sequence[RunSpec], out: Path, runner: RunnerOptions) -> None:
    """After a grid has run and its report is written: a `UserError` (a non-zero exit) when a
    run of it (of this shard) failed, or none finished. A Slurm grid has only submitted its
    runs: nothing to judge yet."""
    if runner.launcher == "slurm":
        return
    if runner.shard:
        specs = shard(specs, *parse_shard(runner.shard))
    statuses = {spec.name: run_status(out / spec.name) for spec in specs}
    failed = [name for name, status in statuses.items() if status == "failed"]
    report = out / "report.md"
    if failed:
        reason = RunDir(out / failed[0]).read_summary().get("error") or "no reason recorded"
        raise UserError(
            f"{len(failed)} of {len(statuses)} runs failed (first {failed[0]}: {reason}); "
            f"{report} lists them"
        )
    if "finished" not in statuses.values():
        counts = Counter(statuses.values())
        found = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        raise UserError(f"no run of the grid finished ({found}); see {report}")


def check_data(configs: Sequence[TrainConfig], log: Log = print) -> None:
    """Load each data set the grid trains on, once, here (a download or a folder's first
    decoding happens now, not in every run at once) and try every run's subsets, batch and
    model on it: a grid whose data cannot be had says so in one line before any run starts."""
    from plainnet.data import load_dataset
    from plainnet.prepare import fit_data

    by_data: dict[tuple, list[TrainConfig]] = {}
    for config in configs:
        by_data.setdefault((config.dataset, config.data_dir), []).append(config)
    for (name, data_dir), same in by_data.items():
        log(f"checking the data: {name}" + (f" in {data_dir}" if data_dir else ""))
        data = load_dataset(name, data_dir, log=log)
        for config in same:
            fit_data(config, data)


def record_command(path: Path, command: str) -> None:
    """Append ``command`` to the grid's record of the commands run in it (atomically)."""
    from plainnet.tables import write_text

    before = path.read_text(errors="replace") if path.exists() else ""
    write_text(path, before + command + "\n")


def group_jobs(jobs: Sequence[Job], size: int) -> list[list[Job]]:
    """Runs of one configuration but the seed (a cell's seeds), ``size`` at a time, in order."""
    by_config: dict[tuple, list[Job]] = {}
    for job in jobs:
        by_config.setdefault(config_key(job[1]), []).append(job)
    return [same[i : i + size] for same in by_config.values() for i in range(0, len(same), size)]


def device_slots(device: str, jobs_per_device: int) -> list[str | None]:
    """Where groups may run at the same time: ``jobs_per_device`` slots per visible GPU; one
    slot (None: no ``CUDA_VISIBLE_DEVICES`` change) on the CPU, whose cores one run fills."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    return [gpu for gpu in ids for _ in range(jobs_per_device)]


def child_command(group: Sequence[Job], out: Path) -> list[str]:
    """The command that trains ``group``: this module's ``__main__`` below."""
    pairs = [x for spec, config in group for x in (str(out / spec.name), json.dumps(config))]
    return [sys.executable, "-m", "plainnet.launch", *pairs]


def run_processes(
    groups: Sequence[list[Job]], out: Path, slots: Sequence[str | None], log: Log = print
) -> dict[str, str]:
    """Train each group in a child process, ``len(slots)`` at a time, with the grid's ETA;
    returns each run's final status. A stop request stops the children, which checkpoint."""
    logs = out / "logs"
    make_folder(logs)
    queue, free = list(groups), list(slots)
    running: dict[subprocess.Popen, tuple[list[Job], str | None, object]] = {}
    done: dict[str, str] = {}
    total, t0 = sum(len(g) for g in groups), time.monotonic()
    signalled: set[subprocess.Popen] = set()
    with StopRequest() as stop:
        while (queue and stop.signal is None) or running:
            while queue and free and stop.signal is None:
                group, slot = queue.pop(0), free.pop(0)
                proc, logfile = start_child(group, out, slot)
                running[proc] = (group, slot, logfile)
                started = len(done) + sum(len(g) for g, _, _ in running.values())
                names = ", ".join(spec.name for spec, _ in group)
                where = f" on GPU {slot}" if slot is not None else ""
                log(f"[{started}/{total}] {names}{where}{eta(done, total, t0)}")
            time.sleep(0.2)
            if stop.signal is not None:
                for proc in set(running) - signalled:
                    proc.send_signal(signal.SIGTERM)
                    signalled.add(proc)
            for proc in [p for p in running if p.poll() is not None]:
                group, slot, logfile = running.pop(proc)
                logfile.close()
                free.append(slot)
                for spec, _ in group:
                    done[spec.name] = record_exit(proc.returncode, out, spec, log)
    if stop.signal is not None:
        log(f"stopped: the runs started have checkpointed; {len(queue)} group(s) not started")
        raise KeyboardInterrupt
    return done


def start_child(group: Sequence[Job], out: Path, slot: str | None):
    for spec, _ in group:
        clear_stale_failure(out / spec.name)
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    # Appended to, never through a planted link (a grid folder may be shared).
    logfile = os.fdopen(
        open_for_writing(out / "logs" / f"{group[0][0].name}.log", os.O_APPEND), "a"
    )
    # Its own process group: a Ctrl-C at the terminal reaches the runner alone, which passes
    # the stop on, so that every child gets exactly one request.
    proc = subprocess.Popen(
        child_command(group, out), stdout=logfile, stderr=subprocess.STDOUT, env=env,
        start_new_session=True, preexec_fn=_stop_with_parent,
    )  # fmt: skip
    return proc, logfile


def _stop_with_parent() -> None:
    """In the child, on Linux: a SIGTERM when the runner dies, even by SIGKILL, so that no run
    goes on training as an orphan (it checkpoints and exits)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def eta(done: dict, total: int, t0: float) -> str:
    """``, grid ETA h:mm:ss`` from the runs finished so far (nothing before the first)."""
    if not done:
        return ""
    per_run = (time.monotonic() - t0) / len(done)
    return f", grid ETA {duration(per_run * (total - len(done)))}"


def record_exit(returncode: int, out: Path, spec: RunSpec, log: Log) -> str:
    """A child has ended: record a crash, report the run's status in one line."""
    run = out / spec.name
    logfile = out / "logs" / f"{spec.name}.log"
    crashed = returncode not in (0, 130)  # 130: stopped and checkpointed; it resumes later
    if crashed and not mark_failed(run, spec, error_line(logfile)):
        log(f"{spec.name}: in use by another process; left as it is")
    status = run_status(run)
    detail = ""
    if status == "finished":
        detail = f" (test error {RunDir(run).read_summary()['test_error']:.2f} %)"
    elif status == "failed":
        detail = f": {error_line(logfile)}"
    log(f"{spec.name}: {status}{detail}")
    return status


def error_line(path: Path) -> str:
    """The error in a child's log: its last ``plainnet: error:`` line, else its last line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("plainnet: error:")]
    return (errors or lines or ["crashed without output"])[-1][:500]


def _child_main(argv: Sequence[str]) -> int:
    """``python -m plainnet.launch RUN CONFIG_JSON [RUN CONFIG_JSON ...]``."""
    from plainnet.runtime import sigterm_as_interrupt
    from plainnet.train import train_group

    pairs = [(argv[i], json.loads(argv[i + 1])) for i in range(0, len(argv), 2)]
    try:
        with sigterm_as_interrupt():
            statuses = train_group(pairs, log=lambda msg: print(msg, flush=True))
    except UserError as err:
        print(f"plainnet: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("plainnet: interrupted (checkpoint saved)", file=sys.stderr, flush=True)
        return 130
    return 2 if "error" in statuses else 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
