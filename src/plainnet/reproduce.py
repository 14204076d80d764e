"""`plainnet reproduce`: Table I's grid, run as the authors' code ran it, then its report.

The grid is {Plain-11, ResNet-110} x {step, CLR, SGDR} x seeds 0, 1, 2 at full length on
CIFAR-100. Where the authors' code tells what produced Table I, the grid runs that
(`GRID_DEFAULTS`, each overridden by an option given): SGDR stepped once per epoch (their
callback; ``--no-epochwise-sgdr`` for the SGDR paper's per-iteration form), and training in fp32
without TF32, as Keras on 2018 GPUs did (``--amp``, ``--tf32`` for the fast paths). Where the
record cannot settle it, or a faster path may change the result, a variant runs the other
reading in its own run directories: ``delta4`` gives step and SGDR the global decay delta = 4
that the code of the time applied to every schedule (docs/recipe.md; CLR has the paper's
delta = 10 in both, so its runs are shared); ``bf16`` trains the whole grid in bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from plainnet.config import TrainConfig
from plainnet.errors import UserError
from plainnet.grid import RunSpec
from plainnet.launch import RunnerOptions, check_outcome, run_grid
from plainnet.report import write_report

PAPER_MODELS = ("plain11", "resnet110")
PAPER_SCHEDULES = ("step", "clr", "sgdr")
PAPER_SEEDS = (0, 1, 2)
# The grid's defaults where they differ from `plainnet train`'s: what produced Table I.
GRID_DEFAULTS = {"epochwise_sgdr": True, "amp": "off", "tf32": "off"}
# A variant's options per schedule; a schedule it leaves alone shares the paper grid's runs.
VARIANTS: dict[str, dict[str, dict]] = {
    "paper": {},
    "delta4": {"step": {"lr_decay": 4.0}, "sgdr": {"lr_decay": 4.0}},
    "bf16": {schedule: {"amp": "bf16"} for schedule in PAPER_SCHEDULES},
}
VARIANTS_HELP = (
    "paper: as the paper's text and the authors' code ran Table I; delta4: also step and SGDR "
    "with the global decay delta = 4 of the code of the time; bf16: the whole grid in bf16"
)
# --quick: one seed, schedules at 1/20 of their length (8-9 epochs), 1,200 training images (a
# class-balanced subset) in batches of 50 (24 iterations an epoch, ~200 a run: enough for the
# BatchNorm running statistics, momentum 0.01, to settle; batches of 25 were unstable at the
# paper's lr 0.1) and 500 test images, of the sample built into plainnet unless a data set is
# given (nothing to download): six runs in minutes on 2 CPU cores.
QUICK = {"seeds": (0,), "scale": 0.05, "train_limit": 1200, "test_limit": 500, "batch_size": 50,
         "dataset": "sample"}  # fmt: skip


def grid_default(name: str):
    """The grid's default for option ``name``: `GRID_DEFAULTS`, else `TrainConfig`'s."""
    return GRID_DEFAULTS.get(name, TrainConfig.__dataclass_fields__[name].default)


def quick_help() -> str:
    """What ``--quick`` does, from `QUICK` itself (so the help cannot drift from the code)."""
    q = QUICK
    return (
        f"a short look: seed {', '.join(map(str, q['seeds']))}, schedules at {q['scale']:g} of "
        f"their length, {q['train_limit']:,} training / {q['test_limit']:,} test images, "
        f"batch {q['batch_size']}, the built-in {q['dataset']} data set unless a data set or "
        "folder is given (options given explicitly win)"
    )


def paper_grid(
    models: Sequence[str] = PAPER_MODELS,
    schedules: Sequence[str] = PAPER_SCHEDULES,
    seeds: Sequence[int] = PAPER_SEEDS,
    variant: str = "paper",
) -> list[RunSpec]:
    """Table I's grid, model-major (``plain11-step-s0``, ...); a variant's runs that differ
    from the paper's reading carry its tag (``plain11-sgdr-delta4-s0``)."""
    if variant not in VARIANTS:
        raise UserError(f"--variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    specs = []
    for model in models:
        for schedule in schedules:
            options = tuple(sorted(VARIANTS[variant].get(schedule, {}).items()))
            tag = variant if options else ""
            specs += [
                RunSpec(model, schedule, seed, variant=tag, options=options) for seed in seeds
            ]
    return specs


def reproduce(
    out: str | Path,
    base: dict,
    *,
    models: Sequence[str] = PAPER_MODELS,
    schedules: Sequence[str] = PAPER_SCHEDULES,
    seeds: Sequence[int] = PAPER_SEEDS,
    variant: str = "paper",
    runner: RunnerOptions | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the grid's missing runs into ``out``, then write ``out/report.md``. ``base`` is
    the grid's configuration (a `TrainConfig` as a dict, `GRID_DEFAULTS` applied). A grid in
    which a run failed or none finished ends in a `UserError` once its report is written."""
    specs = paper_grid(models, schedules, seeds, variant)
    for name in {k for spec in specs for k, _ in spec.options}:
        if base.get(name) != grid_default(name):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"--variant {variant} sets {flag} itself; give one or the other")
    runner = runner or RunnerOptions()
    run_grid(specs, base, out, runner, log, command=command)
    report = write_report(out, log=log)
    check_outcome(specs, Path(out), runner)
    return report
