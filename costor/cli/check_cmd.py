"""costor check: verify pools (structure; with --read-data every byte)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_check_report, print_json
from costor.cli.progress import make_progress
from costor.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "check", help="verify pools; exit code 3 when damage is found"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "--pool",
        metavar="P",
        help="only this pool (default: all; a pool that cannot be opened is reported and the "
        "others are still checked: exit 3 if damage was found, else 1 if a pool could not be "
        "checked)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--read-data", action="store_true", help="read and verify every pack")
    amount.add_argument(
        "--read-data-subset",
        metavar="PCT",
        help="read a share of the packs, least recently verified first, e.g. 5%%",
    )
    return parser


def parse_percentage(text: str, option: str = "--read-data-subset") -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise UsageError(message=f"{option}: {text!r} is not a percentage") from None
    if not 0 < value <= 100:
        raise UsageError(message=f"{option}: {text!r} must be above 0% and at most 100%")
    return value / 100


def run(args: argparse.Namespace) -> int:
    from costor.ops.maintenance.check import check_all

    subset = parse_percentage(args.read_data_subset) if args.read_data_subset else None
    progress = make_progress("check", json_output=args.json)
    try:
        outcome = check_all(
            context(args),
            pool=args.pool,
            read_data=args.read_data,
            subset=subset,
            progress=progress,
        )
    finally:
        progress.close()
    # The worst outcome: damage anywhere, then a pool that could not be checked.
    code = 3 if outcome.damaged else 1 if outcome.not_checked else 0
    if args.json:
        print_json(outcome.to_json())
        return code
    for name, report in outcome.reports:
        print_check_report(name, report)
    for failure in outcome.not_checked:
        print(f"costor: error: pool {failure.pool}: not checked: {failure.error}", file=sys.stderr)
    if outcome.not_checked:
        print(
            f"{len(outcome.reports)} pool(s) checked, {len(outcome.not_checked)} could not be "
            f"checked ({', '.join(f.pool for f in outcome.not_checked)})"
        )
    return code
