"""A grid's groups of runs as submitit jobs: ``--launcher local`` (one at a time on this
machine) or ``--launcher slurm`` (one job array; rerun the same command to collect). A job that
is preempted or times out is resubmitted, and `plainnet.train.train` resumes its runs from their
directories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plainnet.errors import UserError
from plainnet.grid import Job, RunSpec, clear_stale_failure, mark_failed, run_status
from plainnet.train import train_group

Log = Callable[[str], None]


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


class TrainJob:
    """The callable submitit runs for one group. On preemption or timeout submitit calls
    `checkpoint`, which resubmits the same call: `train` then resumes from the run directory."""

    def __call__(self, pairs: list[tuple[str, dict]], specs: list[RunSpec]) -> list[str]:
        try:
            train_group(pairs)
        except UserError as err:
            for (run, _), spec in zip(pairs, specs, strict=True):
                mark_failed(Path(run), spec, str(err).splitlines()[0])
        except Exception as err:
            for (run, _), spec in zip(pairs, specs, strict=True):
                mark_failed(Path(run), spec, f"{type(err).__name__}: {err}".splitlines()[0])
            raise
        return [run_status(Path(run)) for run, _ in pairs]

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def make_executor(launcher: str, folder: Path, slurm: SlurmOptions, cpu: bool):
    """A submitit executor: ``local`` (this machine) or ``slurm`` (needs ``sbatch``)."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher needs submitit: pip install submitit") from None
    if launcher == "local":
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        executor.update_parameters(timeout_min=slurm.time_min, gpus_per_node=0 if cpu else 1)
        return executor
    from shutil import which

    if which("sbatch") is None:
        raise UserError("--launcher slurm: no sbatch on PATH (run this on a Slurm login node)")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    extra = {"account": slurm.account, "qos": slurm.qos}
    executor.update_parameters(
        timeout_min=slurm.time_min, slurm_partition=slurm.partition,
        gpus_per_node=0 if cpu else slurm.gpus_per_task, tasks_per_node=1,
        cpus_per_task=slurm.cpus_per_task, mem_gb=slurm.mem_gb,
        slurm_array_parallelism=slurm.array_parallelism,
        slurm_additional_parameters={k: v for k, v in extra.items() if v},
    )  # fmt: skip
    return executor


def submit(
    groups: Sequence[list[Job]], out: Path, launcher: str, slurm: SlurmOptions, log: Log = print
) -> dict[str, str]:
    """Submit the groups as one job array. ``local`` waits for them (one at a time, each gets
    the machine); ``slurm`` returns at once: rerun with the same ``--out`` to collect."""
    cpu = all(config.get("device") == "cpu" for group in groups for _, config in group)
    executor = make_executor(launcher, out / "submitit", slurm, cpu)
    args = []
    for group in groups:
        for spec, _ in group:
            clear_stale_failure(out / spec.name)
        args.append(([(str(out / s.name), c) for s, c in group], [s for s, _ in group]))
    if launcher == "local":
        statuses = {}
        for pairs, specs in args:
            job = executor.submit(TrainJob(), pairs, specs)
            log(f"{', '.join(s.name for s in specs)}: submitted as local job {job.job_id}")
            try:
                results = job.result()
            except Exception as err:
                line = str(err).strip().splitlines()[-1][:500]
                results = [
                    "failed" if mark_failed(out / s.name, s, line) else "busy" for s in specs
                ]
            for spec, status in zip(specs, results, strict=True):
                statuses[spec.name] = status
                log(f"{spec.name}: {status}")
        return statuses
    array = executor.map_array(TrainJob(), [a[0] for a in args], [a[1] for a in args])
    for (_, specs), job in zip(args, array, strict=True):
        log(f"{', '.join(s.name for s in specs)}: submitted as Slurm job {job.job_id}")
    return {s.name: "submitted" for _, specs in args for s in specs}
