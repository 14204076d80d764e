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
        print("plainnet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
