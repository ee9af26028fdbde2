"""costor backup CLIENT | --all: back clients up now.

``--all`` backs every declared client up, ``--parallel`` at a time (hosts are pulled
concurrently; a local client is one more job); one client's failure does not stop the
others, and the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_json, terminal_text
from costor.cli.progress import BarProgress, make_progress
from costor.errors import BACKUP_INCOMPLETE_EXIT, UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("backup", help="back up clients now")
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("client", metavar="CLIENT", nargs="?", help="a declared client")
    parser.add_argument("--all", action="store_true", help="every declared client")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="with --server: follow the backup job queued on the site until it ends, then "
        "print its outcome (here a backup always runs to its end)",
    )
    parser.add_argument(
        "--parallel",
        metavar="N",
        type=int,
        default=4,
        help="with --all: how many clients at once (default 4)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.backup.run import run_backup

    if bool(args.client) == bool(args.all):
        raise UsageError(message="name one CLIENT, or --all")
    ctx = context(args)
    if args.all:
        return _run_all(ctx, args)
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
    else:
        print(summary(args.client, document))
        print_problems(document)
    return BACKUP_INCOMPLETE_EXIT if outcome.incomplete else 0


def _run_all(ctx: Any, args: argparse.Namespace) -> int:
    from costor.ops.backup.run import run_many

    if args.parallel < 1:
        raise UsageError(message="--parallel must be at least 1")
    results = run_many(ctx, sorted(ctx.inventory.clients), parallel=args.parallel)
    failed = [name for name, result in results.items() if isinstance(result, Exception)]
    if args.json:
        print_json(
            {
                "backups": [
                    {"client": name, "ok": False, "error": str(result)}
                    if isinstance(result, Exception)
                    else {"ok": True, **result.to_json()}
                    for name, result in results.items()
                ],
                "failed": len(failed),
            }
        )
    else:
        for name, result in results.items():
            if isinstance(result, Exception):
                print(f"{name}: FAILED: {result}", file=sys.stderr)
            else:
                document = result.to_json()
                print(summary(name, document))
                print_problems(document, name)
        print(f"{len(results) - len(failed)} of {len(results)} client(s) backed up")
    if failed:
        return 1
    incomplete = any(not isinstance(r, Exception) and r.incomplete for r in results.values())
    return BACKUP_INCOMPLETE_EXIT if incomplete else 0


def summary(name: str, document: dict[str, Any]) -> str:
    """A backup's outcome as text, from its ``--json`` document (here, or a backup job's
    result from a site's API)."""
    transferred = (
        f", {human_bytes(document['bytes_transferred'])} over the connection"
        if document.get("transfer") in ("helper", "sftp")
        else ""
    )
    # Images (block devices, image files) are read whole; their bytes are in the totals.
    images = f"; images: {document['images']}" if document.get("images") else ""
    return (
        f"snapshot {document['snapshot_id'][:12]} of {name} saved to pool {document['pool']}\n"
        f"  files: {document['files_new']} new, {document['files_changed']} changed, "
        f"{document['files_unmodified']} unmodified, {document['files_failed']} failed"
        f"{images}\n"
        f"  read {human_bytes(document['bytes_read'])} of "
        f"{human_bytes(document['bytes_processed'])}, "
        f"added {human_bytes(document['bytes_added'])} to the pool{transferred} "
        f"in {document['duration_s']:.1f} s"
    )


def print_problems(document: dict[str, Any], name: str | None = None) -> None:
    """After the summary: errors the progress display did not show as they happened
    (the SFTP fallback's reason, failed after hooks: those without a path), the count
    of items that could not be read (each was shown then), and the warnings."""
    prefix = f"{name}: " if name else ""
    items = 0
    for error in document["errors"]:
        if error.get("path"):
            items += 1
        else:
            print(f"{prefix}warning: {terminal_text(error['error'])}", file=sys.stderr)
    if items:
        print(f"  {items} item(s) could not be read (see the warnings above)")
    for warning in document["warnings"]:
        print(f"{prefix}warning: {terminal_text(warning)}", file=sys.stderr)
