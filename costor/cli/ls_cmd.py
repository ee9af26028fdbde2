"""costor ls SNAPSHOT [PATH]: list what a snapshot holds."""

from __future__ import annotations

import argparse
import time
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json, terminal_text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("ls", help="list files in a snapshot")
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("snapshot", metavar="SNAPSHOT", help="id, unique prefix or CLIENT:latest")
    parser.add_argument("path", metavar="PATH", nargs="?", default="/", help="directory or file")
    parser.add_argument("-l", "--long", action="store_true", help="mode, owner, size and time")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.restore.browse import list_snapshot

    listing = list_snapshot(context(args), snapshot=args.snapshot, path=args.path)
    if args.json:
        print_json(listing.to_json())
        return 0
    # A name as it is (any byte but NUL and /), not as JSON carries it.
    shown = [
        {**document, "path": path, "target": node.target}
        for (path, node), document in zip(listing.entries, listing.to_json(), strict=True)
    ]
    print_listing(shown, long=args.long)
    return 0


def print_listing(entries: list[dict[str, Any]], *, long: bool) -> None:
    """Each entry, from its ``--json`` document (here or from a site's API); ``path`` and
    ``target`` may be text or bytes. ``-l`` writes the type as ``ls -l`` does, an image
    as ``i``."""
    from costor.ops.restore.browse import mode_text

    for entry in entries:
        shown = terminal_text(entry["path"])
        if long:
            mode = mode_text(entry["type"], entry["mode"])
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["mtime_ns"] / 1e9))
            owner = f"{entry['user'] or entry['uid']}/{entry['group'] or entry['gid']}"
            target = entry.get("target")
            suffix = f" -> {terminal_text(target)}" if target else ""
            print(f"{mode} {terminal_text(owner):>16} {entry['size']:>12} {when} {shown}{suffix}")
        else:
            print(shown)
