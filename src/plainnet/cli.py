"""The `plainnet` command line: argument parsing only; the work lives in the library modules.

A mistake the user can fix ends in one line on stderr and exit status 2 (`UserError`);
Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from plainnet.errors import UserError


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_schedules(args: argparse.Namespace) -> None:
    from plainnet.report import plot_schedules, schedules_table
    from plainnet.schedules import SCHEDULES, paper_schedule

    print(schedules_table(args.iters_per_epoch, args.scale))
    if args.output:
        scheds = [paper_schedule(n, args.iters_per_epoch, args.scale) for n in SCHEDULES]
        print(f"wrote {plot_schedules(args.output, scheds)}")


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar100", choices=["cifar100", "cifar10", "folder"])
    g.add_argument(
        "--data-dir",
        help="where the data set is (default: $PLAINNET_DATA, else the per-user cache folder)",
    )
    g.add_argument("--train-limit", type=positive_int, help="class-balanced training subset")
    g.add_argument("--test-limit", type=positive_int, help="class-balanced test subset")


def add_speed_switches(g: argparse._ArgumentGroup) -> None:
    """The device and the speed switches of `TrainConfig` (train, reproduce, sweep, lr-find)."""
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="bf16 autocast")
    g.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    g.add_argument(
        "--cuda-graphs",
        default="auto",
        choices=["auto", "on", "off"],
        help="replay each step as CUDA graphs (torch.compile reduce-overhead; auto: CUDA, one process)",
    )


def add_run_options(p: argparse.ArgumentParser, *, grid: bool = False) -> None:
    """The options of one training run (`TrainConfig`); a grid sets model/schedule/seed itself."""
    from plainnet.data import AUGMENTATIONS
    from plainnet.schedules import SCHEDULES

    if not grid:
        p.add_argument(
            "--model",
            default="plain11",
            help="plain11 (default), resnet110, resnet<6n+2> or plain<widths> like plain64-64|128",
        )
        p.add_argument("--schedule", default="sgdr", choices=SCHEDULES)
        p.add_argument("--seed", type=int, default=0)
    add_data_options(p)
    g = p.add_argument_group("length and recipe")
    g.add_argument("--scale", type=positive_float, default=1.0, help="multiply schedule lengths")
    if not grid:
        g.add_argument(
            "--epochs", type=positive_float, help="run length in epochs (sets --scale for you)"
        )
    g.add_argument("--batch-size", type=positive_int, default=100)
    g.add_argument("--lr-min", type=positive_float, help="schedule's lower bound")
    g.add_argument("--lr-max", type=positive_float, help="schedule's upper bound")
    g.add_argument("--weight-decay", type=float, help="default: the authors' value per model")
    g.add_argument("--clip-norm", type=float, default=10.0, help="0 disables clipping")
    g.add_argument("--augment", default="shift", choices=AUGMENTATIONS)
    g.add_argument(
        "--epochwise-sgdr", action="store_true", help="the authors' per-epoch SGDR stepping"
    )
    g.add_argument("--width-mult", type=positive_float, default=1.0, help="plain family only")
    g = p.add_argument_group("speed")
    add_speed_switches(g)
    g.add_argument("--deterministic", action="store_true", help="bitwise repeatable on the CPU")
    g.add_argument(
        "--eval-batch-size",
        type=positive_int,
        help="test images per batch (default: 1000 on CUDA, 100 on the CPU)",
    )
    g = p.add_argument_group("several processes (torchrun)")
    g.add_argument(
        "--scale-batch",
        action="store_true",
        help="global batch = batch size x processes, learning rate scaled alike",
    )
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    g = p.add_argument_group("outputs")
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars")
    g.add_argument(
        "--no-snapshots",
        dest="snapshots",
        action="store_false",
        help="do not keep the weights at the end of each CLR/SGDR cycle",
    )


def config_from_args(args: argparse.Namespace, **fixed):
    """A `TrainConfig` from parsed options (``fixed`` overrides, e.g. a grid's model)."""
    from plainnet.train import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(fixed)
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> None:
    from plainnet.train import train

    train(config_from_args(args), args.out, resume=args.resume)


def cmd_lr_find(args: argparse.Namespace) -> None:
    from plainnet.lr_find import lr_find

    lr_find(
        config_from_args(args),
        args.out,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        iters=args.iters,
        beta=args.beta,
        diverge=args.diverge,
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from plainnet.evaluate import evaluate_path

    keys = ("model", "width_mult", "dataset", "data_dir", "test_limit", "device")
    overrides = {k: getattr(args, k) for k in (*keys, "eval_batch_size")}
    evaluate_path(
        args.path, ensemble=args.ensemble, last=args.last, overrides=overrides, output=args.output
    )


def add_grid_options(p: argparse.ArgumentParser) -> None:
    """How a grid's runs are run: devices, shards, launchers (`reproduce` and `sweep`)."""
    from plainnet.experiments import LAUNCHERS

    g = p.add_argument_group("running the grid")
    g.add_argument("--out", required=True, help="grid directory: one run directory per run")
    g.add_argument(
        "--jobs-per-device", type=positive_int, default=1, help="runs packed on each GPU"
    )
    g.add_argument("--shard", metavar="I/N", help="run only part I of N (1-based) of the grid")
    g.add_argument(
        "--retry-failed", action="store_true", help="also rerun diverged runs (resumed otherwise)"
    )
    g.add_argument(
        "--launcher",
        default="process",
        choices=LAUNCHERS,
        help="process (default): child processes here; local/slurm: submitit job array",
    )
    g.add_argument("--slurm-partition")
    g.add_argument("--slurm-time", type=positive_int, default=24 * 60, help="minutes per task")
    g.add_argument("--slurm-gpus-per-task", type=positive_int, default=1)
    g.add_argument("--slurm-cpus-per-task", type=positive_int, default=8)
    g.add_argument("--slurm-mem-gb", type=positive_int, default=32)
    g.add_argument("--slurm-array-parallelism", type=positive_int, default=64)
    g.add_argument("--slurm-account")
    g.add_argument("--slurm-qos")


def runner_from_args(args: argparse.Namespace):
    from plainnet.experiments import RunnerOptions, SlurmOptions

    slurm = SlurmOptions(
        partition=args.slurm_partition,
        time_min=args.slurm_time,
        gpus_per_task=args.slurm_gpus_per_task,
        cpus_per_task=args.slurm_cpus_per_task,
        mem_gb=args.slurm_mem_gb,
        array_parallelism=args.slurm_array_parallelism,
        account=args.slurm_account,
        qos=args.slurm_qos,
    )
    return RunnerOptions(
        jobs_per_device=args.jobs_per_device,
        launcher=args.launcher,
        shard=args.shard,
        retry_failed=args.retry_failed,
        slurm=slurm,
    )


def _grid_base(args: argparse.Namespace) -> dict:
    """The grid's shared `TrainConfig` (model/schedule/seed are set per run), and a record of
    the command in OUT/commands.txt for the report's provenance."""
    import dataclasses
    import shlex
    from pathlib import Path

    base = dataclasses.asdict(config_from_args(args, model="plain11", schedule="sgdr", seed=0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "commands.txt", "a") as f:
        f.write(shlex.join(["plainnet", *sys.argv[1:]]) + "\n")
    return base


def cmd_reproduce(args: argparse.Namespace) -> None:
    from plainnet.experiments import PAPER_SEEDS, QUICK, reproduce

    if args.quick:  # fill in what the user did not set
        for key in ("scale", "train_limit", "test_limit", "batch_size"):
            default = {"scale": 1.0, "batch_size": 100}.get(key)
            if getattr(args, key) == default:
                setattr(args, key, QUICK[key])
        args.seeds = args.seeds or list(QUICK["seeds"])
    seeds = args.seeds or list(PAPER_SEEDS)
    reproduce(
        args.out,
        _grid_base(args),
        models=args.models,
        schedules=args.schedules,
        seeds=seeds,
        runner=runner_from_args(args),
    )


def cmd_report(args: argparse.Namespace) -> None:
    from plainnet.report import write_report

    write_report(args.dir)


def cmd_sweep(args: argparse.Namespace) -> None:
    from plainnet.experiments import sweep

    sweep(
        args.out,
        _grid_base(args),
        depths=args.depths,
        widths=args.widths,
        resnet_depths=args.resnet_depths,
        schedule=args.schedule,
        seeds=args.seeds,
        runner=runner_from_args(args),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plainnet",
        description="Plain-11 vs ResNet-110 on CIFAR with cyclical learning rates "
        "(Barz & Denzler).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schedules", help="print the paper's three schedules, draw Fig. 2")
    p.add_argument("-o", "--output", metavar="FILE.png", help="draw Fig. 2 to this file")
    p.add_argument("--iters-per-epoch", type=positive_int, default=500)
    p.add_argument("--scale", type=positive_float, default=1.0, help="multiply every length")
    p.set_defaults(func=cmd_schedules)

    p = sub.add_parser("train", help="train one model with one schedule (a run directory)")
    p.add_argument("--out", required=True, help="run directory (created; rerun to continue)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_run_options(p)
    p.set_defaults(func=cmd_train)

    from plainnet.data import AUGMENTATIONS

    p = sub.add_parser(
        "lr-find", help="Smith's learning-rate range test: suggest --lr-min/--lr-max for train"
    )
    p.add_argument("--out", required=True, help="folder for lr_find.json and lr_find.png")
    p.add_argument("--model", default="plain11", help="as for train")
    p.add_argument("--width-mult", type=positive_float, default=1.0, help="plain family only")
    p.add_argument("--seed", type=int, default=0)
    add_data_options(p)
    g = p.add_argument_group("range test")
    g.add_argument("--start-lr", type=positive_float, default=1e-6, help="first rate")
    g.add_argument("--end-lr", type=positive_float, default=10.0, help="last rate")
    g.add_argument("--iters", type=positive_int, default=200, help="iterations of the ramp")
    g.add_argument("--beta", type=float, default=0.9, help="loss smoothing (EMA factor)")
    g.add_argument("--diverge", type=positive_float, default=4.0, help="stop at this x best")
    g = p.add_argument_group("recipe and speed (as for train)")
    g.add_argument("--batch-size", type=positive_int, default=100)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, help="default: the authors' value per model")
    g.add_argument("--clip-norm", type=float, default=10.0, help="0 disables clipping")
    g.add_argument("--augment", default="shift", choices=AUGMENTATIONS)
    add_speed_switches(g)
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser(
        "evaluate", help="test error per class, CIFAR-100 superclass confusion, snapshot ensemble"
    )
    p.add_argument("path", help="a run directory, or a checkpoint file (.pt)")
    p.add_argument(
        "--ensemble", action="store_true", help="also the mean of the run's cycle-end snapshots"
    )
    p.add_argument("--last", type=positive_int, help="ensemble only the last N snapshots")
    p.add_argument("--output", help="evaluation JSON (default: RUN_DIR/evaluation.json)")
    p.add_argument("--model", help="the model (default: the run's; needed for a bare checkpoint)")
    p.add_argument("--width-mult", type=positive_float, help="default: the run's")
    p.add_argument(
        "--dataset", choices=["cifar100", "cifar10", "folder"], help="default: the run's"
    )
    p.add_argument("--data-dir", help="default: the run's")
    p.add_argument("--test-limit", type=positive_int, help="default: the run's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the run's")
    p.add_argument("--eval-batch-size", type=positive_int, help="default: the run's")
    p.set_defaults(func=cmd_evaluate)
    from plainnet.schedules import SCHEDULES as _SCHEDULES

    p = sub.add_parser(
        "reproduce", help="Table I: train the grid's missing runs, then write its report"
    )
    p.add_argument("--models", nargs="+", default=["plain11", "resnet110"], help="any --model")
    p.add_argument("--schedules", nargs="+", default=list(_SCHEDULES), choices=_SCHEDULES)
    p.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (0 with --quick)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="one seed, 1/25 of the schedules, 1000 train / 500 test images, batch 25",
    )
    add_grid_options(p)
    add_run_options(p, grid=True)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("report", help="Table I, the paper's claims and figures from a grid")
    p.add_argument("dir", help="the --out of reproduce")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="test error and time against depth and width")
    p.add_argument(
        "--depths", nargs="+", type=int, default=[6, 8, 11, 14, 20], help="plain depths (>= 6)"
    )
    p.add_argument(
        "--widths", nargs="+", type=positive_float, default=[0.5, 1.0], help="width multipliers"
    )
    p.add_argument("--resnet-depths", nargs="+", type=int, default=[20, 56, 110], help="6n+2")
    p.add_argument("--schedule", default="sgdr", choices=_SCHEDULES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    add_grid_options(p)
    add_run_options(p, grid=True)
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # One log line per epoch should reach a file or a pipe when it is printed, not at exit.
    if hasattr(sys.stdout, "reconfigure"):  # absent when a caller swapped in another stream
        sys.stdout.reconfigure(line_buffering=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
        from plainnet import distributed

        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
