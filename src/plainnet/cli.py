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
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="bf16 autocast")
    g.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    g.add_argument("--deterministic", action="store_true", help="bitwise repeatable on the CPU")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"plainnet: error: {err}", file=sys.stderr)
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
