"""The `plainnet` command line: parsing only; the work lives in the library modules.

A run's options are generated from `TrainConfig`'s fields, so every default and help text is
stated once, there. An option a user does not give is absent from the parsed arguments: a
configuration is the defaults, then a ``--config`` file or the run being resumed, then the
options given, so an explicit value always wins (``--quick`` fills only the rest). A mistake the
user can fix ends in one line on stderr and exit status 2; a stop (Ctrl-C, SIGTERM) exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence

import plainnet
from plainnet.config import TrainConfig, flag, upgrade
from plainnet.config_file import read_options
from plainnet.errors import UserError

GROUPS = {"run": "the run", "data": "data", "recipe": "length and recipe", "speed": "speed",
          "processes": "several processes (torchrun)", "outputs": "outputs"}  # fmt: skip
LR_FIND_SKIPS = {"schedule", "scale", "epochs", "lr_min", "lr_max", "lr_decay", "epochwise_sgdr",
                 "test_limit", "eval_precision", "eval_batch_size", "scale_batch", "sync_bn",
                 "tensorboard", "snapshots", "cuda_graphs"}  # fmt: skip


def shows_default(help: str | None, default: object) -> bool:
    """Whether an option's help gets "(default: ...)": not when it has no default (its help
    says what happens then) or its help states the default already."""
    return default is not None and "default" not in (help or "")


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, where `shows_default`."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not shows_default(action.help, action.default):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and every option's default in its help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"plainnet: error: {message} (see {self.prog} --help)\n")


def number_parser(kind: type):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            name = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {name}: {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def positive_parser(kind: type):
    def parse(text: str):
        value = number_parser(kind)(text)
        if not (value > 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    return parse


def add_config_options(
    p: argparse.ArgumentParser, *, grid=False, skip=(), only=None, defaults=None
) -> None:
    """One option per `TrainConfig` field (a grid sets the per-run ones itself). Absent from
    the parsed arguments unless given (``default=SUPPRESS``); the help states the default:
    `TrainConfig`'s, or the command's own in ``defaults`` (`make_config` applies them)."""
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if (grid and meta["per_run"]) or f.name in skip or (only and f.name not in only):
            continue
        g = groups.get(meta["group"]) or p.add_argument_group(GROUPS[meta["group"]])
        groups[meta["group"]] = g
        default = "the run's" if only else (defaults or {}).get(f.name, f.default)
        shown = shows_default(meta["help"], default)
        help = meta["help"] + (f" (default: {default})" if shown else "")
        kw: dict = {"default": argparse.SUPPRESS, "help": help.replace("%", "%%")}
        if f.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kind = int if f.type.startswith("int") else float if f.type.startswith("float") else str
            kw.update(type=number_parser(kind) if kind is not str else str, metavar=f.name.upper())
            if meta["choices"]:
                kw.update(choices=meta["choices"], metavar=None)
        g.add_argument(flag(f.name), **kw)


def given(args: argparse.Namespace) -> dict:
    """The `TrainConfig` options given on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def make_config(args: argparse.Namespace, base: dict | None = None, **fixed) -> TrainConfig:
    """Defaults, then ``base`` (a file or a stored run), then the options given, then
    ``fixed``."""
    if getattr(args, "config", None):
        base = {**(base or {}), **read_options(args.config)}
    values = {**upgrade(base or {}), **given(args), **fixed}
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> None:
    from plainnet.run_dir import RunDir
    from plainnet.train import train

    if args.resume not in (None, True) and args.out not in (None, args.resume):
        raise UserError("give the run directory once: --resume DIR or --out DIR --resume")
    out = args.out or (args.resume if args.resume is not True else None)
    if out is None:
        raise UserError("say where the run is: --out DIR (or --resume DIR to continue one)")
    base = None
    if args.resume is not None:
        run = RunDir(out)
        if not run.config.exists():
            raise UserError(f"{out}: nothing to resume (no run there yet)")
        base = run.read_config()["config"]
    train(make_config(args, base), out, resume=args.resume is not None)


def cmd_lr_find(args: argparse.Namespace) -> None:
    from plainnet.lr_find import lr_find

    lr_find(
        make_config(args), args.out, start_lr=args.start_lr, end_lr=args.end_lr,
        iters=args.iters, beta=args.beta, diverge=args.diverge,
    )  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> None:
    from plainnet.evaluate import evaluate_path

    evaluate_path(
        args.path, ensemble=args.ensemble, last=args.last, overrides=given(args),
        output=args.output,
    )  # fmt: skip


def cmd_export(args: argparse.Namespace) -> None:
    from plainnet.export import export_run

    print(f"wrote {export_run(args.run, args.out, snapshot=args.snapshot)}")


def cmd_schedules(args: argparse.Namespace) -> None:
    from plainnet.plots import plot_schedules
    from plainnet.schedules import SCHEDULES, epochwise_sgdr_note, paper_schedule
    from plainnet.tables import schedules_table

    print(schedules_table(args.iters_per_epoch, args.scale))
    print(epochwise_sgdr_note())
    if args.output:
        scheds = [paper_schedule(n, args.iters_per_epoch, args.scale) for n in SCHEDULES]
        print(f"wrote {plot_schedules(args.output, scheds)}")


def runner_options(args: argparse.Namespace):
    from plainnet.launch import RunnerOptions
    from plainnet.submit import SlurmOptions

    slurm = SlurmOptions(**{k[6:]: v for k, v in vars(args).items() if k.startswith("slurm_")})
    return RunnerOptions(
        jobs_per_device=args.jobs_per_device, runs_per_process=args.runs_per_process,
        launcher=args.launcher, shard=args.shard, retry_failed=args.retry_failed, slurm=slurm,
    )  # fmt: skip


def grid_base(args: argparse.Namespace, defaults: dict | None = None) -> dict:
    """The grid's shared configuration (a grid sets model, schedule and seed per run): the
    defaults, the grid's own ``defaults``, then the options given."""
    return dataclasses.asdict(make_config(args, defaults, model="plain11", schedule="sgdr", seed=0))


def command_line(args: argparse.Namespace) -> str:
    return shlex.join(["plainnet", *args.argv])


def cmd_reproduce(args: argparse.Namespace) -> None:
    from plainnet.reproduce import GRID_DEFAULTS, PAPER_SEEDS, QUICK, reproduce

    if args.quick:  # fill in what the user did not give
        for key in ("scale", "train_limit", "test_limit", "batch_size"):
            setattr(args, key, getattr(args, key, QUICK[key]))
        if not hasattr(args, "dataset") and not hasattr(args, "data_dir"):
            args.dataset = QUICK["dataset"]
        args.seeds = args.seeds or list(QUICK["seeds"])
    reproduce(
        args.out, grid_base(args, GRID_DEFAULTS), models=args.models, schedules=args.schedules,
        seeds=args.seeds or list(PAPER_SEEDS), variant=args.variant, runner=runner_options(args),
        command=command_line(args),
    )  # fmt: skip


def cmd_report(args: argparse.Namespace) -> None:
    from plainnet.report import write_report

    write_report(args.dir)


def cmd_sweep(args: argparse.Namespace) -> None:
    from plainnet.sweep import sweep

    sweep(
        args.out, grid_base(args), depths=args.depths, widths=args.widths,
        resnet_depths=args.resnet_depths, schedule=args.schedule, seeds=args.seeds,
        runner=runner_options(args), command=command_line(args),
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from plainnet import distributed
    from plainnet.runtime import sigterm_as_interrupt

    # One log line per epoch should reach a file or a pipe when it is printed, not at exit.
    if hasattr(sys.stdout, "reconfigure"):  # absent when a caller swapped in another stream
        sys.stdout.reconfigure(line_buffering=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        with sigterm_as_interrupt():
            args.func(args)
    except UserError as err:
        print(f"plainnet: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output path the user gave that cannot be written, and the like
        where = f"{err.filename}: " if err.filename else ""
        print(f"plainnet: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("plainnet: interrupted (rerun the same command to continue)", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="plainnet",
        description="Plain-11 vs ResNet-110 on CIFAR with cyclical learning rates "
        "(Barz & Denzler).",
    )
    parser.add_argument("--version", action="version", version=f"plainnet {plainnet.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func) -> Parser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    add_run_commands(command)
    add_grid_commands(command)
    return parser


def add_run_commands(command) -> None:
    """train, lr-find, evaluate, export: one run."""
    p = command("train", "train one model with one schedule (a run directory)", cmd_train)
    p.add_argument("--out", help="run directory (created; rerun the command to continue)")
    p.add_argument("--resume", nargs="?", const=True, metavar="DIR",
                   help="continue the run in DIR (or in --out) from its config.json")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="options from a run's config.json or a "
                   "JSON/YAML file of options; options given here override it")  # fmt: skip
    add_config_options(p)

    p = command("lr-find", "Smith's learning-rate range test: bounds for --lr-min/--lr-max",
                cmd_lr_find)  # fmt: skip
    p.add_argument("--out", required=True, help="folder for lr_find.json and lr_find.png")
    g = p.add_argument_group("range test")
    g.add_argument("--start-lr", type=positive_parser(float), default=1e-6, help="first rate")
    g.add_argument("--end-lr", type=positive_parser(float), default=10.0, help="last rate")
    g.add_argument("--iters", type=positive_parser(int), default=200, help="iterations of the ramp")
    g.add_argument(
        "--beta", type=number_parser(float), default=0.9, help="loss smoothing (EMA factor)"
    )
    g.add_argument(
        "--diverge", type=positive_parser(float), default=4.0, help="stop at this x best"
    )
    add_config_options(p, skip=LR_FIND_SKIPS)

    p = command("evaluate", "test error per class, CIFAR-100 superclasses, snapshot ensemble",
                cmd_evaluate)  # fmt: skip
    p.add_argument("path", help="a run directory, a checkpoint (.pt) or an export (.safetensors)")
    p.add_argument("--ensemble", action="store_true", help="also the mean of the run's snapshots")
    p.add_argument("--last", type=positive_parser(int), help="ensemble only the last N snapshots")
    p.add_argument("--output", help="evaluation JSON (default: RUN_DIR/evaluation.json)")
    add_config_options(p, only={"model", "width_mult", "dataset", "data_dir", "test_limit",
                                "device", "eval_batch_size", "eval_precision"})  # fmt: skip

    p = command("export", "the run's weights as one safetensors file for other programs",
                cmd_export)  # fmt: skip
    p.add_argument("run", help="the run directory")
    p.add_argument("--out", help="the file (default: RUN/model.safetensors)")
    p.add_argument("--snapshot", type=positive_parser(int), metavar="ITERATION",
                   help="a cycle-end snapshot's weights (its iteration) instead of the final ones")  # fmt: skip


def add_grid_commands(command) -> None:
    """reproduce, report, sweep, and schedules."""
    from plainnet.reproduce import GRID_DEFAULTS, VARIANTS, VARIANTS_HELP, quick_help
    from plainnet.schedules import SCHEDULES

    p = command("reproduce", "Table I: train the grid's missing runs, then write its report",
                cmd_reproduce)  # fmt: skip
    p.add_argument("--models", nargs="+", default=["plain11", "resnet110"], help="any --model")
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    p.add_argument(
        "--seeds", nargs="+", type=number_parser(int), help="default 0 1 2 (0 with --quick)"
    )
    p.add_argument("--variant", default="paper", choices=list(VARIANTS), help=VARIANTS_HELP)
    p.add_argument("--quick", action="store_true", help=quick_help())
    add_grid_options(p)
    add_config_options(p, grid=True, defaults=GRID_DEFAULTS)

    p = command("report", "Table I, the paper's claims and figures from a grid", cmd_report)
    p.add_argument("dir", help="the --out of reproduce")

    p = command("sweep", "test error and time against depth and width", cmd_sweep)
    p.add_argument("--depths", nargs="+", type=number_parser(int), default=[6, 8, 11, 14, 20],
                   help="plain depths (>= 6)")  # fmt: skip
    p.add_argument("--widths", nargs="+", type=positive_parser(float), default=[0.5, 1.0],
                   help="width multipliers")  # fmt: skip
    p.add_argument("--resnet-depths", nargs="+", type=number_parser(int), default=[20, 56, 110],
                   help="6n+2")  # fmt: skip
    p.add_argument("--schedule", default="sgdr", choices=SCHEDULES)
    p.add_argument("--seeds", nargs="+", type=number_parser(int), default=[0])
    add_grid_options(p)
    add_config_options(p, grid=True)

    p = command("schedules", "print the paper's three schedules, draw Fig. 2", cmd_schedules)
    p.add_argument("-o", "--output", metavar="FILE.png", help="draw Fig. 2 to this file")
    p.add_argument("--iters-per-epoch", type=positive_parser(int), default=500)
    p.add_argument(
        "--scale", type=positive_parser(float), default=1.0, help="multiply every length"
    )


def add_grid_options(p: argparse.ArgumentParser) -> None:
    """How a grid's runs are run: devices, shards, launchers (`reproduce` and `sweep`)."""
    from plainnet.launch import LAUNCHERS
    from plainnet.submit import SlurmOptions

    g = p.add_argument_group("running the grid")
    g.add_argument("--out", required=True, help="grid directory: one run directory per run")
    g.add_argument("--jobs-per-device", type=positive_parser(int), default=1,
                   help="processes packed on each GPU")  # fmt: skip
    g.add_argument("--runs-per-process", type=positive_parser(int), default=1,
                   help="seeds of one configuration trained together in one process, in turns "
                   "on CUDA streams (its speed on a GPU is not yet measured)")  # fmt: skip
    g.add_argument("--shard", metavar="I/N", help="run only part I of N (1-based) of the grid")
    g.add_argument("--retry-failed", action="store_true",
                   help="also rerun diverged runs (the others resume anyway)")  # fmt: skip
    g.add_argument("--launcher", default="process", choices=LAUNCHERS,
                   help="process: child processes here; local/slurm: a submitit job array")  # fmt: skip
    defaults = SlurmOptions()
    for f in dataclasses.fields(SlurmOptions):
        kind = number_parser(int) if f.type == "int" else None
        g.add_argument(f"--slurm-{f.name.replace('_', '-')}", type=kind,
                       default=getattr(defaults, f.name))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
