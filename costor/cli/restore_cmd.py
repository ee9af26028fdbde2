"""costor restore SNAPSHOT [PATH] (--target DIR | --archive FILE|-)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_json
from costor.cli.progress import make_progress
from costor.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "restore", help="restore a snapshot to a directory or an archive"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("snapshot", metavar="SNAPSHOT", help="id, unique prefix or CLIENT:latest")
    parser.add_argument("path", metavar="PATH", nargs="?", default="/", help="part to restore")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", metavar="DIR", help="restore into this directory")
    where.add_argument(
        "--archive",
        metavar="FILE",
        help="write FILE.tar, FILE.tar.zst or FILE.zip; - for a tar on stdout",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.snapshots import resolve

    if args.archive == "-" and args.json:
        raise UsageError(message="--json and --archive - both want stdout; choose one")
    from costor.store.leases import reader_lease

    _name, pool, snapshot = resolve(context(args), args.snapshot, load_index=False)
    lease = reader_lease(pool)  # before the index: see costor/store/leases.py
    pool.load_index()
    progress = make_progress("restore", json_output=args.json or args.archive == "-")
    try:
        if args.target is not None:
            from costor.store.restorer import Restorer

            result = Restorer(pool, progress=progress).restore(snapshot, args.target, args.path)
            document = {
                "snapshot_id": snapshot.id,
                "target": args.target,
                "files": result.files,
                "dirs": result.dirs,
                "bytes_written": result.bytes_written,
                "skipped": result.skipped,
            }
        else:
            from costor.store.archive import write_archive

            destination: Any = sys.stdout.buffer if args.archive == "-" else args.archive
            archived = write_archive(pool, snapshot, args.path, destination, progress=progress)
            document = {
                "snapshot_id": snapshot.id,
                "archive": args.archive,
                "files": archived.files,
                "dirs": archived.dirs,
                "bytes_written": archived.bytes_written,
                "skipped": archived.skipped,
                "archive_bytes": archived.archive_bytes,
            }
    finally:
        progress.close()
        if lease is not None:
            lease.release()
    if args.json:
        print_json(document)
    elif args.archive != "-":
        where = args.target or args.archive
        print(
            f"restored {document['files']} file(s), {human_bytes(document['bytes_written'])} "
            f"from {snapshot.id[:12]} to {where}"
        )
    return 0
