"""costor audit: the audit log (docs/audit.md).

costor audit [--since DURATION|TIME] [--until …] [--actor A] [--action X] [--target T]
             [--limit N] [--json]        # newest first
costor audit verify [--json]             # 0 the chain is intact, 3 where it is broken
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json, terminal_text
from costor.errors import UsageError

BROKEN_EXIT = 3  # damage found: the log was changed, cut or added to outside CoStor


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="show the audit log; `audit verify` checks its hash chain (exit 3 if broken)",
        description="costor audit [FILTERS]: the records matching every filter, newest "
        "first. costor audit verify: walk the hash chain; exit 0 when it is intact, 3 "
        "naming the first record changed, deleted or inserted (docs/audit.md).",
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "action", nargs="?", default="list", choices=("list", "verify"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--since", metavar="DURATION|TIME", help="records from then on: 1h, 7d, or 2026-12-07"
    )
    parser.add_argument("--until", metavar="DURATION|TIME", help="records before then")
    parser.add_argument(
        "--actor", help="e.g. os:alice@host, user:bob, token:ID, system (* matches)"
    )
    parser.add_argument("--action", dest="audit_action", metavar="ACTION", help="e.g. restore")
    parser.add_argument("--target", help="e.g. client:web1, pool:main (* matches)")
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (100)")
    return parser


def run(args: argparse.Namespace) -> int:
    ctx = context(args)
    if args.action == "verify":
        from costor.ops.audit import verify_log

        if any((args.since, args.until, args.actor, args.audit_action, args.target)):
            raise UsageError(message="audit verify checks the whole log: it takes no filter")
        check = verify_log(ctx)
        if args.json:
            print_json(check.to_json())
        elif check.broken is None:
            head = f"; head: record {check.head_id}" if check.head_id else ""
            print(f"audit log: {check.records} record(s), chain intact{head}")
        else:
            broken = check.broken
            print(f"audit log: broken at record {broken.record} ({broken.kind}): {broken.reason}")
            print(f"  {check.records} record(s) before it are intact")
        return 0 if check.intact else BROKEN_EXIT
    from costor.ops.audit import list_records

    if args.limit < 1:
        raise UsageError(message="--limit must be at least 1")
    listing = list_records(
        ctx,
        since=args.since,
        until=args.until,
        actor=args.actor,
        action=args.audit_action,
        target=args.target,
        limit=args.limit,
    )
    if args.json:
        print_json(listing.to_json())
        return 0
    _print_records(listing.records)
    return 0


def _print_records(records: list[dict[str, Any]]) -> None:
    if not records:
        print("no audit records")
        return
    print(f"{'ID':>6}  {'TIME (UTC)':<19}  {'ACTOR':<24} {'ACTION':<16} {'TARGET':<20} OUTCOME")
    for record in records:
        when = record["time"][:19].replace("T", " ")
        line = (
            f"{record['id']:>6}  {when:<19}  {terminal_text(record['actor']):<24} "
            f"{terminal_text(record['action']):<16} {terminal_text(record['target']):<20} "
            f"{terminal_text(record['outcome'])}"
        )
        detail = record["detail"]
        if detail:
            shown = json.dumps(detail, sort_keys=True, ensure_ascii=False, default=str)
            line += f"  {terminal_text(shown)}"
        print(line)
