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
    from costor.db.state import state_lock
    from costor.ops.apply import apply_plan, check_applyable
    from costor.ops.plan import make_plan

    if args.planfile and (args.target or args.refresh_only):
        raise UsageError(
            message="a saved plan is applied as it is: --target and --refresh-only belong "
            "to `costor plan`"
        )
    ctx = planning_context(args)
    human = not args.json

    def announce(change: Any) -> None:
        if human:
            print(f"{change.address}: {SYMBOLS[change.operation]} {change.operation}…", flush=True)

    with state_lock(ctx.engine, "apply", timeout=args.lock_timeout):
        if args.planfile:
            plan, shown_as = _read_plan_file(ctx, args.planfile), args.planfile
        else:
            plan = make_plan(ctx, targets=tuple(args.target), refresh_only=args.refresh_only)
            shown_as = "the plan"
            if human:
                print(render_plan(plan))
            # Refused even with nothing to do: a blocked plan means the state and the
            # world disagree (a pool gone or replaced), which a pipeline must see fail.
            check_applyable(plan)
            if plan.pending and not args.auto_approve:
                _confirm(len(plan.pending), json_output=args.json)
        if not plan.pending:
            check_applyable(plan)
            from costor.ops.schedules import sync_schedules

            # Nothing to change, but schedules still follow the applied inventory (e.g.
            # after an upgrade that added them).
            schedules = sync_schedules(ctx.engine, ctx.inventory)
            if args.json:
                print_json(
                    {
                        "applied": [],
                        "changes": 0,
                        "serial": plan.binding.serial,
                        "schedules": schedules,
                    }
                )
            elif args.planfile:
                print("No changes in this plan.")
            return 0
        report = apply_plan(ctx, plan, path=shown_as, on_change=announce)
    if args.json:
        print_json(report.to_json())
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


def _read_plan_file(ctx: Any, path: str) -> Any:
    from costor.db.state import ensure_meta
    from costor.errors import PlanFileInvalid, PlanForeign
    from costor.plan.planfile import decode, verify

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise PlanFileInvalid(path=path, reason=error.strerror or str(error)) from None
    plan, document, signature = decode(data, path)
    meta = ensure_meta(ctx.engine)
    if plan.binding.lineage != meta.lineage:
        raise PlanForeign(path=path, plan_lineage=plan.binding.lineage, state_lineage=meta.lineage)
    if not verify(document, signature, meta.plan_key):
        raise PlanFileInvalid(
            path=path, reason="its signature does not match: it was changed after `costor plan`"
        )
    return plan
