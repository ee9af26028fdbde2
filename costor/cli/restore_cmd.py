"""costor restore SNAPSHOT [PATH] (--target DIR | --archive FILE|- | --target-device DEV)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_json, terminal_text
from costor.cli.progress import make_progress
from costor.errors import UsageError

OVERWRITE_HELP = (
    "what to do with files that already exist at the target: always (the default, as "
    "restic's since 0.17: replace every file whose content differs from the snapshot's; "
    "identical ones are left and only their metadata is set), if-changed (as always, but "
    "a file with the snapshot's size and mtime is taken as identical without reading it), "
    "if-newer (replace only if the snapshot's file is newer), never (keep what exists)"
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "restore",
        help="restore a snapshot to a directory, an archive or (an image) a block device",
        description="Restore a snapshot, or a path in it, into a directory (each path "
        "under it as in the snapshot; an image as a regular, sparse file), as one archive, "
        "or one image onto a block device. See docs/restore.md and docs/images.md.",
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
        help="write FILE.tar, FILE.tar.zst or FILE.zip (format from the name, or --format); "
        "- for a tar (or --format) on stdout",
    )
    where.add_argument(
        "--target-device",
        metavar="DEV",
        help="write the image PATH names onto the block device DEV, byte for byte; refused "
        "(nothing written) if DEV is mounted or in use, or smaller than the image",
    )
    parser.add_argument(
        "--overwrite",
        choices=("always", "if-changed", "if-newer", "never"),
        default=None,
        help=OVERWRITE_HELP,
    )
    parser.add_argument(
        "--include",
        metavar="PATTERN",
        action="append",
        default=[],
        help="restore only paths (inside the snapshot) matching PATTERN, and what is in "
        "matching directories; repeatable; *, ?, [..] and ** as in restic; a pattern "
        "without a leading / matches at any depth",
    )
    parser.add_argument(
        "--exclude",
        metavar="PATTERN",
        action="append",
        default=[],
        help="leave out paths matching PATTERN (a directory with its content); repeatable",
    )
    parser.add_argument(
        "--faithful",
        action="store_true",
        help="a system restore: recreate setuid/setgid bits, device nodes, fifos and "
        "security.*/trusted.* xattrs as the snapshot holds them (the default only when "
        "--target is /; elsewhere they are left out, as a snapshot of a compromised host "
        "may hold anything: see docs/restore.md)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and count everything, write nothing (-v or --json: list each file)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="list each file and what was done with it"
    )
    parser.add_argument(
        "--format",
        choices=("tar", "tar.zst", "zip"),
        help="archive format (default: from the file's name; tar on stdout)",
    )
    parser.add_argument(
        "--force", action="store_true", help="let --archive replace an existing file"
    )
    parser.add_argument(
        "--to-client",
        metavar="C",
        help="with --server and --target: restore onto client C's machine (default: the "
        "snapshot's own client's)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="with --server and --target: follow the restore job until it ends, then print "
        "its outcome",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.restore.run import restore

    if args.to_client is not None or args.wait:
        raise UsageError(
            message="--to-client and --wait are for a restore job on a site (with --server); "
            "here, --target is a directory of this machine"
        )
    to_stdout = args.archive == "-"
    if to_stdout and args.json:
        raise UsageError(message="--json and --archive - both want stdout; choose one")
    if to_stdout and args.verbose and not args.dry_run:
        raise UsageError(message="-v lists on stdout, where --archive - writes; choose one")
    archive: Any = sys.stdout.buffer if to_stdout and not args.dry_run else args.archive
    progress = make_progress("restore", json_output=args.json or to_stdout)
    try:
        outcome = restore(
            context(args),
            args.snapshot,
            path=args.path,
            target=args.target,
            archive=archive,
            device=args.target_device,
            archive_name=args.archive,
            format=args.format,
            force=args.force,
            overwrite=args.overwrite,
            include=args.include,
            exclude=args.exclude,
            dry_run=args.dry_run,
            list_entries=args.dry_run or args.verbose,
            faithful=True if args.faithful else None,
            progress=progress,
        )
    finally:
        progress.close()
    document = outcome.to_json()
    if args.json:
        if not (args.dry_run or args.verbose):
            document.pop("entries", None)
        print_json(document)
    elif not to_stdout or args.dry_run:
        if args.verbose:
            for entry in outcome.entries or []:
                print(f"{entry['action']:<16} {terminal_text(entry['path'])}")
        print(summary(document))
    return 0


def summary(outcome: dict[str, Any]) -> str:
    """A restore's outcome as text, from its ``--json`` document (here, or a restore
    job's result or an archive downloaded from a site's API)."""
    archive = outcome.get("archive")
    device = outcome.get("device")
    if device is not None:
        text = (
            f"image {terminal_text(outcome['path'])} of {outcome['snapshot_id'][:12]} "
            f"({human_bytes(outcome['bytes_written'])}) onto {terminal_text(device)} "
            f"({human_bytes(outcome.get('device_size') or 0)})"
        )
        if outcome["dry_run"]:
            return f"dry run: would write {text}; nothing was written"
        return f"restored {text}"
    where = terminal_text(outcome["target"] if archive is None else archive)
    size = human_bytes(outcome["bytes_written"])
    snapshot = outcome["snapshot_id"][:12]
    if archive is not None:
        text = (
            f"{outcome['files_written']} file(s), {outcome['dirs']} dir(s), {size} of content "
            f"from {snapshot}"
        )
        if outcome["not_restorable"]:
            text += f"; {outcome['not_restorable']} entr(ies) the format cannot hold left out"
        if outcome["dry_run"]:
            return f"dry run: {where} would hold {text}; nothing was written"
        return f"archived {text} to {where} ({human_bytes(outcome.get('archive_bytes') or 0)})"
    counts = (
        f"{outcome['files_written']} file(s) ({outcome['files_new']} new, "
        f"{outcome['files_overwritten']} overwritten), {size}; "
        f"skipped {outcome['files_skipped']} ({outcome['files_unchanged']} unchanged, "
        f"{outcome['files_not_overwritten']} not overwritten: --overwrite {outcome['overwrite']})"
    )
    if outcome["not_restorable"]:
        counts += f"; {outcome['not_restorable']} not restorable here"
    if outcome["dry_run"]:
        return f"dry run: would restore {counts} from {snapshot} to {where}; nothing was written"
    return f"restored {counts} from {snapshot} to {where}"
