"""costor snapshots: list snapshots."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_json, terminal_text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("snapshots", help="list snapshots")
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "--client",
        metavar="C",
        help="only this client's snapshots, in every pool and under every name it had "
        "(a client the inventory does not declare too)",
    )
    parser.add_argument("--pool", metavar="P", help="only this pool")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.restore.snapshots import list_snapshots

    found = list_snapshots(context(args), client=args.client, pool=args.pool)
    documents = [{**s.summary(), "pool": pool} for pool, s in found]
    if args.json:
        print_json(documents)
    else:
        print_snapshots(documents)
    return 0


def print_snapshots(documents: list[dict[str, Any]]) -> None:
    """The table of snapshots, from their ``--json`` documents (here or from a site's API)."""
    rows = [("ID", "TIME", "CLIENT", "POOL", "FILES", "SIZE", "ADDED", "PATHS")]
    for s in documents:
        files = s.get("files_new", 0) + s.get("files_changed", 0) + s.get("files_unmodified", 0)
        rows.append(
            (
                s["id"][:12],
                s["time"][:19].replace("T", " "),
                terminal_text(s["client"]),
                terminal_text(s["pool"]),
                str(files),
                human_bytes(s.get("bytes_processed", 0)),
                human_bytes(s.get("bytes_added", 0)),
                terminal_text(", ".join(s["paths"])),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    print(f"{len(documents)} snapshot(s)")
