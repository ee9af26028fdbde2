"""costor diff SNAPSHOT SNAPSHOT: what changed between two snapshots."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_json, terminal_text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("diff", help="compare two snapshots")
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("first", metavar="SNAPSHOT")
    parser.add_argument("second", metavar="SNAPSHOT")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.restore.browse import diff_snapshots

    outcome = diff_snapshots(context(args), first=args.first, second=args.second)
    if args.json:
        print_json(outcome.to_json())
        return 0
    for d in outcome.changes:
        shown = f"{d.symbol}    {terminal_text(d.path)}{'/' if d.type == 'dir' else ''}"
        if d.type == "image" and d.changed_bytes is not None:
            shown += f"  ({human_bytes(d.changed_bytes)} of {human_bytes(d.size_after)} changed)"
        print(shown)
    counts = outcome.counts()
    print(
        f"\n{counts['added']} added, {counts['removed']} removed, "
        f"{counts['modified']} modified, {counts['metadata']} with changed metadata"
    )
    return 0
