"""``costor plan``: show what apply would change, and why.

``--detailed-exitcode`` exits 0 when nothing would change, 2 when something would
(changes or drift), 1 on error (Terraform's contract). A plan that apply would refuse
(a blocked change, a plan error) exits 4, with or without ``--detailed-exitcode``: a CI
gate never sees it as green. ``--out FILE`` saves the plan, signed, for ``costor apply
FILE``; nothing secret is in it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option
from costor.cli.output import print_json
from costor.errors import PLAN_BLOCKED_EXIT

EXIT_CODES = (
    "exit codes: 0 ok (no changes, with --detailed-exitcode); 1 error; 2: changes or drift "
    "(--detailed-exitcode); 4: plan blocked (apply would refuse it: a change that cannot "
    "be planned, or a plan error), whatever the flags"
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="show what apply would change",
        description="Compare the inventory with the state and what is observed; show "
        "every change with its reason. Changes nothing.",
        epilog=EXIT_CODES,
    )
    add_inventory_option(parser)
    add_json_option(parser)
    add_planning_options(parser)
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0: no changes, 2: changes or drift, 1: error (4: plan blocked, always)",
    )
    parser.add_argument("--out", metavar="PLANFILE", help="save the plan for `costor apply`")
    return parser


def add_planning_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        metavar="ADDR",
        action="append",
        default=[],
        help="only this resource (TYPE.NAME) and what it depends on; repeatable; for "
        "exceptional use",
    )
    parser.add_argument(
        "--refresh-only",
        action="store_true",
        help="only accept changes made outside CoStor (drift) into the state",
    )


def run(args: argparse.Namespace) -> int:
    from costor.cli.common import planning_context
    from costor.cli.plan_output import render_plan
    from costor.ops.control.plan import make_plan, write_plan_file

    ctx = planning_context(args)
    plan = make_plan(ctx, targets=tuple(args.target), refresh_only=args.refresh_only)
    blocked = not plan.applyable
    if args.out:
        write_plan_file(ctx, plan, path=args.out)
    if args.json:
        print_json(plan.to_json(shown=True))
    else:
        print(render_plan(plan))
        if args.out and blocked:
            print(f"\nSaved the plan to {args.out}; apply refuses it while it is blocked.")
        elif args.out:
            print(f"\nSaved the plan to {args.out}. Apply exactly this plan with:")
            print(f"    costor apply {args.out}")
    if blocked:
        print(
            f"costor: plan blocked (exit {PLAN_BLOCKED_EXIT}): apply will refuse this plan "
            "until the blocked items are resolved",
            file=sys.stderr,
        )
        return PLAN_BLOCKED_EXIT
    if args.detailed_exitcode:
        return 2 if plan.has_changes else 0
    return 0
