"""A grid is a directory of run directories: what is in it, what state each run is in, and
which runs belong together.

A grid's runs are `RunSpec`s (model, schedule, seed and a file-system safe name); each is the
run directory ``OUT/<name>``. `load_runs` reads them back for a report, checking every file
against its expected shape: a run that cannot be read is listed with the reason, never fatal.
Runs belong together (a row of a table, seeds to pool) only when their whole configuration
but the seed is the same (`config_key`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plainnet.config import upgrade
from plainnet.errors import UserError
from plainnet.run_dir import RunDir, read_json
from plainnet.schedules import SCHEDULES
from plainnet.schemas import EVALUATION_SCHEMA

NOT_RUNS = ("logs", "figures", "submitit")  # folders of a grid that are not runs
# Options that say where files go or how often they are written, not what is computed.
BOOKKEEPING = ("seed", "data_dir", "tensorboard", "snapshots", "eval_batch_size", "deterministic")
# Switches whose ``auto`` a run resolves for its device and that change the arithmetic: a run's
# row holds what they became (config.json "resolved"), so precisions are never pooled.
RESOLVED = ("amp", "tf32")


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: the options it sets on the grid's configuration, and its name."""

    model: str
    schedule: str
    seed: int
    width_mult: float | None = None  # None: the grid's --width-mult
    label: str = ""  # a file-system safe model name; default: the model name
    variant: str = ""  # a reproduce variant's tag in the name ("" for the default)
    options: tuple[tuple[str, object], ...] = ()  # more options the run sets (a variant's)

    @property
    def name(self) -> str:
        tag = f"-{self.variant}" if self.variant else ""
        return f"{self.label or safe_name(self.model)}-{self.schedule}{tag}-s{self.seed}"

    def overrides(self) -> dict:
        fixed = {"model": self.model, "schedule": self.schedule, "seed": self.seed}
        if self.width_mult is not None:
            fixed["width_mult"] = self.width_mult
        return {**fixed, **dict(self.options)}


Job = tuple[RunSpec, dict]  # a run of a grid and its TrainConfig as a dict


def safe_name(model: str) -> str:
    """A model name usable as a directory name (``plain16-16|32`` -> ``plain16-16_32``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


def check_unique(specs: Sequence[RunSpec]) -> None:
    """Two runs of a grid must never share a directory (one would report the other's result)."""
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        other = seen.setdefault(spec.name, spec)
        if other != spec:
            raise UserError(
                f"two runs of the grid map to the directory {spec.name!r} ({other.model} x"
                f"{other.width_mult} and {spec.model} x{spec.width_mult}); change one of them"
            )


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


def run_status(path: Path) -> str:
    """``missing``, or the status in ``summary.json`` (``unreadable`` if it cannot be read)."""
    if not (path / "summary.json").exists():
        return "missing"
    try:
        return RunDir(path).read_summary()["status"]
    except UserError:
        return "unreadable"


def runs_to_train(
    specs: Sequence[RunSpec], out: Path, *, retry_failed: bool = False
) -> list[RunSpec]:
    """The specs still to train: not finished, and not diverged (unless ``retry_failed``)."""
    skip = {"finished"} if retry_failed else {"finished", "diverged"}
    return [s for s in specs if run_status(out / s.name) not in skip]


def mark_failed(path: Path, spec: RunSpec, error: str) -> bool:
    """Record a crash in ``summary.json`` (status ``failed`` and the error), holding the run's
    lock: a run that another process is training is never written. False if it was busy."""
    run = RunDir(path)
    try:
        with run.locked():
            try:
                summary = run.read_summary()
            except UserError:
                summary = {"model": spec.model, "schedule": spec.schedule, "seed": spec.seed}
            if summary.get("status") in ("finished", "diverged"):
                return True  # the run itself recorded how it ended
            run.write_summary({**summary, "status": "failed", "error": error})
            return True
    except UserError:
        return False


def clear_stale_failure(path: Path) -> None:
    """A run that failed before it started holds only our ``summary.json`` (and its lock
    file): remove it, so that `train` sees an empty directory and starts the run."""
    run = RunDir(path)
    if not run.config.exists() and run.summary.exists():
        with contextlib.suppress(UserError), run.locked():
            run.summary.unlink()


# ---- reading a grid back ----


@dataclass
class Run:
    """What a report needs of one run directory."""

    name: str
    path: Path
    summary: dict
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)

    status = property(lambda self: self.summary.get("status", "unknown"))
    model = property(lambda self: self.summary.get("model", "?"))
    schedule = property(lambda self: self.summary.get("schedule", "?"))
    seed = property(lambda self: self.summary.get("seed"))

    @property
    def settings(self) -> dict:
        """The run's options, an older run's completed with today's defaults; only its model
        and schedule (from summary.json) when it has no config.json.

        The arithmetic the run trained in is what it resolved to, not what was asked: ``amp``
        is the resolved precision ("bf16", "fp16" or "off"), so ``--amp auto`` that became
        bf16 pools with ``--amp bf16`` and never with fp32; ``tf32`` likewise where the run
        recorded it, else the option's value, else None (a run from before either existed):
        always present, so that a report names it where rows differ in it."""
        stored = self.config.get("config")
        if not isinstance(stored, dict):
            return {"model": self.model, "schedule": self.schedule}
        settings = upgrade(stored)
        settings.update({k: self.resolved.get(k, settings.get(k)) for k in RESOLVED})
        if isinstance(settings.get("amp"), bool):  # older runs: on = bf16, before fp16 existed
            settings["amp"] = "bf16" if settings["amp"] else "off"
        return settings

    @property
    def resolved(self) -> dict:
        return self.config.get("resolved", {})


def load_runs(out: str | Path) -> tuple[list[Run], list[tuple[str, str]]]:
    """Every run directory under ``out``, and ``(name, reason)`` for those that cannot be read.

    A directory counts as a run once it holds ``summary.json``; one without it is listed as a
    problem ("not started"), as is one whose files are corrupt or of the wrong shape."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out}: no such directory")
    runs, problems = [], []
    for path in sorted(p for p in out.iterdir() if p.is_dir()):
        if path.name in NOT_RUNS or path.name.startswith("."):
            continue
        run = RunDir(path)
        if not run.summary.exists():
            problems.append((path.name, "no summary.json (not started, or not a run directory)"))
            continue
        try:
            summary = run.read_summary()
            config = run.read_config() if run.config.exists() else {}
            metrics = run.read_metrics()
        except UserError as err:
            problems.append((path.name, str(err)))
            continue
        evaluation = {}
        if (path / "evaluation.json").exists():
            try:
                evaluation = read_json(path / "evaluation.json", EVALUATION_SCHEMA)
            except UserError as err:
                problems.append((path.name, f"evaluation ignored: {err}"))
                evaluation = {}
        runs.append(Run(path.name, path, summary, config, metrics, evaluation))
    return runs, problems


def config_key(settings: dict) -> tuple:
    """What must be equal for runs to be pooled (or trained together): every option of
    ``settings`` but the seed and bookkeeping (a finished run's: `Run.settings`, with the
    precision it resolved to)."""
    return tuple(sorted((k, repr(v)) for k, v in settings.items() if k not in BOOKKEEPING))


def differences(keys: Sequence[tuple]) -> list[str]:
    """The options whose values differ between configurations ``keys`` (of `config_key`)."""
    values: dict[str, set] = {}
    for key in keys:
        for name, value in key:
            values.setdefault(name, set()).add(value)
    return sorted(name for name, vals in values.items() if len(vals) > 1)


def finite_number(value: Any) -> float | None:
    """A finite number from a JSON value, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# ---- which runs belong together ----

NICE = {"plain11": "Plain-11", "resnet110": "ResNet-110"}


@dataclass
class Cell:
    """The runs of one configuration but the seed: a row of Table I."""

    key: tuple
    runs: list[Run]
    differs: str = ""  # what sets this row apart from the others ("" when nothing does)

    model = property(lambda self: self.runs[0].model)
    schedule = property(lambda self: self.runs[0].schedule)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]

    @property
    def errors(self) -> list[float]:
        values = (finite_number(r.summary.get("test_error")) for r in self.finished)
        return [v for v in values if v is not None]

    @property
    def seconds(self) -> list[float]:
        values = (
            finite_number(r.summary.get("mean_train_seconds")) for r in self.finished or self.runs
        )
        return [v for v in values if v is not None]

    @property
    def ensemble_errors(self) -> list[float]:
        values = (finite_number(r.evaluation.get("ensemble_test_error")) for r in self.finished)
        return [v for v in values if v is not None]

    @property
    def epochs(self) -> int | None:
        return max(
            (int(finite_number(r.summary.get("epochs")) or 0) for r in self.runs), default=None
        )

    @property
    def label(self) -> str:
        """The schedule as the row's runs ran it, with the variant of the recipe."""
        cfg = self.runs[0].settings
        name = {"step": "step", "clr": "CLR", "sgdr": "SGDR"}.get(self.schedule, self.schedule)
        notes = []
        if self.schedule == "sgdr":
            notes.append("per epoch" if cfg.get("epochwise_sgdr") else "per iteration")
        if cfg.get("lr_decay") is not None:
            notes.append(f"δ = {cfg['lr_decay']:g}")
        notes += precision(cfg)
        return f"{name} ({', '.join(notes)})" if notes else name


def precision(settings: dict) -> list[str]:
    """How a run's arithmetic differs from fp32, in words: its autocast precision, and TF32
    when on (nothing for fp32)."""
    amp, notes = settings.get("amp", "off"), []
    if amp != "off":
        notes.append(amp if amp in ("bf16", "fp16") else f"amp {amp}")
    if settings.get("tf32") is True:
        notes.append("TF32")
    return notes


def _order(cell: Cell) -> tuple:
    known, schedules = list(NICE), {s: i for i, s in enumerate(SCHEDULES)}
    model = known.index(cell.model) if cell.model in known else len(known)
    return (model, cell.model, schedules.get(cell.schedule, 99), cell.label)


def cells(runs: Sequence[Run]) -> list[Cell]:
    """Runs grouped by their configuration but the seed, Plain-11 and ResNet-110 first."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(config_key(run.settings), []).append(run)
    table = [Cell(k, sorted(v, key=lambda r: (r.seed is None, r.seed))) for k, v in groups.items()]
    by_row: dict[tuple, list[Cell]] = {}
    for cell in table:
        by_row.setdefault((cell.model, cell.schedule), []).append(cell)
    for same in by_row.values():  # one (model, schedule) in several configurations
        names = differences([c.key for c in same])
        for cell in same:
            values = dict(cell.key)
            cell.differs = ", ".join(f"{n}={values.get(n, '?')}" for n in names)
    return sorted(table, key=_order)
