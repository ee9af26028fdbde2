"""costor backup CLIENT: back a client up now."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_json
from costor.cli.progress import BarProgress, make_progress


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("backup", help="back up a client now")
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("client", metavar="CLIENT", help="a client declared in the inventory")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.backup import run_backup

    ctx = context(args)
    progress = make_progress(f"backup {args.client}", json_output=args.json)
    try:
        # Counting totals walks the tree a second time: only worth it for a bar's ETA.
        outcome = run_backup(
            ctx, args.client, progress=progress, scan_totals=isinstance(progress, BarProgress)
        )
    finally:
        progress.close()
    document = outcome.to_json()
    if args.json:
        print_json(document)
        return 0
    print(
        f"snapshot {document['snapshot_id'][:12]} of {args.client} saved to pool {outcome.pool}\n"
        f"  files: {document['files_new']} new, {document['files_changed']} changed, "
        f"{document['files_unmodified']} unmodified, {document['files_failed']} failed\n"
        f"  read {human_bytes(document['bytes_read'])} of "
        f"{human_bytes(document['bytes_processed'])}, "
        f"added {human_bytes(document['bytes_added'])} to the pool "
        f"in {document['duration_s']:.1f} s"
    )
    if outcome.errors:
        print(f"  {len(outcome.errors)} item(s) could not be read (see warnings above)")
    return 0
