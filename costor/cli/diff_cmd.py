"""costor diff SNAPSHOT SNAPSHOT: what changed between two snapshots."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("diff", help="compare two snapshots")
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("first", metavar="SNAPSHOT")
    parser.add_argument("second", metavar="SNAPSHOT")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.snapshots import resolve
    from costor.store.diff import diff_trees

    ctx = context(args)
    _a, pool_a, first = resolve(ctx, args.first)
    _b, pool_b, second = resolve(ctx, args.second)
    if pool_a.uuid == pool_b.uuid:
        pool_b = pool_a
    differences = list(
        diff_trees(pool_a, bytes.fromhex(first.tree), pool_b, bytes.fromhex(second.tree))
    )
    counts = {kind: 0 for kind in ("added", "removed", "modified", "metadata")}
    for d in differences:
        counts[d.change] += 1
    if args.json:
        print_json(
            {
                "first": first.id,
                "second": second.id,
                "changes": [
                    {
                        "change": d.change,
                        "path": d.path,
                        "type": d.type,
                        "size_before": d.size_before,
                        "size_after": d.size_after,
                    }
                    for d in differences
                ],
                **counts,
            }
        )
        return 0
    for d in differences:
        print(f"{d.symbol}    {d.path}{'/' if d.type == 'dir' else ''}")
    print(
        f"\n{counts['added']} added, {counts['removed']} removed, "
        f"{counts['modified']} modified, {counts['metadata']} with changed metadata"
    )
    return 0
