"""costor forget: apply each client's retention; shows what it keeps, removes and why."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_error, print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "forget",
        help="remove snapshots their policy's retention no longer keeps (data: see prune)",
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("--client", metavar="C", help="only this client (default: all)")
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would be removed, remove nothing"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.maintenance.forget import ForgetIncomplete, forget

    try:
        report = forget(context(args), client=args.client, dry_run=args.dry_run)
        failure = None
    except ForgetIncomplete as error:
        report, failure = error.report, error
    if args.json:
        print_json(report.to_json())
    else:
        _print_human(report)
    if failure is not None:
        print_error(failure)
        return failure.exit_code
    return 0


def _print_human(report: Any) -> None:
    for outcome in report.clients:
        retired = ", retired" if outcome.retired else ""
        policy = f", policy {outcome.policy}" if outcome.policy else ""
        rules = outcome.rules.counts() if outcome.rules else {}
        rule_text = ": " + ", ".join(f"{k} {v}" for k, v in rules.items()) if rules else ""
        print(f"client {outcome.client} (pool {outcome.pool}{policy}{retired}){rule_text}")
        for error in outcome.errors:
            print(f"  ERROR {error}", file=sys.stderr)
        if outcome.keep_all and not outcome.errors:
            print(f"  keeps every snapshot: {outcome.keep_all}")
        if outcome.decisions:
            rows = [("ID", "TIME", "POOL", "ACTION", "REASONS")]
            for decision in outcome.decisions:
                taken_as = outcome.taken_as.get(decision.id)
                rows.append(
                    (
                        decision.id[:12],
                        decision.time[:19].replace("T", " "),
                        ",".join(outcome.pools.get(decision.id, [])),
                        "keep" if decision.keep else "remove",
                        ", ".join(decision.reasons)
                        + (f" (taken as {taken_as})" if taken_as else ""),
                    )
                )
            widths = [max(len(row[i]) for row in rows) for i in range(4)]
            for row in rows:
                cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
                print("  " + "  ".join([*cells, row[4]]).rstrip())
        else:
            print("  no snapshots")
        removed = len(outcome.removed)
        if outcome.errors:
            print("  nothing removed")
        elif report.dry_run:
            print(f"  would remove {removed} snapshot(s), keep {len(outcome.kept)}")
        else:
            print(f"  removed {removed} snapshot(s), kept {len(outcome.kept)}")
    total = report.removed_total  # a client with errors removes nothing: none counted
    if report.dry_run:
        print(f"would remove {total} snapshot(s) (dry run: nothing was removed)")
    else:
        hint = "; `costor prune` reclaims their space" if total else ""
        print(f"removed {total} snapshot(s){hint}")
