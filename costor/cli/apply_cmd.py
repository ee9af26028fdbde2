"""``costor apply [PLANFILE]``: make the inventory real.

Without a file: plan, show, ask (only ``yes`` proceeds; with no terminal to ask on it
refuses unless ``--auto-approve``), apply. With a file: apply exactly that plan, without
asking (the saved plan is the approval), refusing it when stale. Either way under the
state lock, so two applies never interleave.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, add_lock_option
from costor.cli.output import print_json
from costor.errors import ApplyCancelled, UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from costor.cli.plan_cmd import add_planning_options

    parser: argparse.ArgumentParser = sub.add_parser(
        "apply",
        help="make the inventory real (plan, confirm, apply; or apply a saved plan)",
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "planfile", metavar="PLANFILE", nargs="?", help="a plan saved by `plan --out`"
    )
    parser.add_argument(
        "--auto-approve", action="store_true", help="apply without asking for confirmation"
    )
    add_planning_options(parser)
    add_lock_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.cli.common import planning_context
    from costor.cli.plan_output import SYMBOLS, render_plan
    from costor.ops.control.apply import run_apply

    if args.planfile and (args.target or args.refresh_only):
        raise UsageError(
            message="a saved plan is applied as it is: --target and --refresh-only belong "
            "to `costor plan`"
        )
    ctx = planning_context(args)
    human = not args.json

    def show(plan: Any) -> None:
        print(render_plan(plan))

    def confirm(plan: Any) -> None:
        _confirm(len(plan.pending), json_output=args.json)

    def announce(change: Any) -> None:
        print(f"{change.address}: {SYMBOLS[change.operation]} {change.operation}…", flush=True)

    outcome = run_apply(
        ctx,
        plan_file=args.planfile or None,
        targets=tuple(args.target),
        refresh_only=args.refresh_only,
        lock_timeout=args.lock_timeout,
        show_plan=show if human else None,
        approve=None if args.auto_approve else confirm,
        on_change=announce if human else None,
    )
    plan, report = outcome.plan, outcome.report
    if args.json:
        print_json(outcome.to_json())
    elif not plan.pending:
        if args.planfile:
            print("No changes in this plan.")
    else:
        summary = plan.summary()
        print(
            f"\nApply complete! {len(report.applied)} change(s): {summary['add']} added, "
            f"{summary['change']} changed, {summary['remove']} deleted, "
            f"{summary['forget']} forgotten, {summary['move']} moved."
        )
    return 0


def _confirm(count: int, *, json_output: bool) -> None:
    if json_output or not sys.stdin.isatty():
        raise UsageError(
            message="refusing to apply without confirmation: no terminal to ask on; "
            "pass --auto-approve, or apply a saved plan (`costor plan --out FILE`)"
        )
    answer = input(f"\nApply these {count} change(s)? Only 'yes' will be accepted: ")
    if answer.strip() != "yes":
        raise ApplyCancelled()
