"""costor apply: initialise declared pools and register clients."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json
from costor.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "apply", help="make the declared pools and clients real"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "--auto-approve", action="store_true", help="apply without asking for confirmation"
    )
    return parser


SYMBOLS = {"create": "+", "update": "~", "adopt": "<=", "no-op": " "}


def run(args: argparse.Namespace) -> int:
    from costor.ops import apply as apply_ops

    ctx = context(args)
    planned = apply_ops.changes(ctx)
    pending = [c for c in planned if c.action != "no-op"]
    if not args.json:
        for change in pending:
            print(f"  {SYMBOLS[change.action]} {change.address}: {change.action} ({change.reason})")
    if not pending:
        if args.json:
            print_json({"applied": [], "changes": 0})
        else:
            print("No changes. The pools and clients match the inventory.")
        return 0
    if not args.auto_approve:
        if not sys.stdin.isatty() or args.json:
            raise UsageError(
                message="refusing to apply without confirmation: no terminal to ask on; "
                "pass --auto-approve"
            )
        answer = input(f"Apply {len(pending)} change(s)? Only 'yes' will be accepted: ")
        if answer.strip() != "yes":
            print("Apply cancelled.")
            return 1
    done = apply_ops.apply(ctx, planned)
    if args.json:
        print_json({"applied": [c.to_json() for c in done], "changes": len(done)})
    else:
        print(f"Apply complete: {len(done)} change(s).")
    return 0
