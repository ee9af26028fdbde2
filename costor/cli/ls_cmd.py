"""costor ls SNAPSHOT [PATH]: list what a snapshot holds."""

from __future__ import annotations

import argparse
import stat
import time
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json, terminal_text

_TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "socket": stat.S_IFSOCK,
}


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
    for path, n in listing.entries:
        shown = terminal_text(path)
        if args.long:
            mode = stat.filemode(_TYPE_BITS[n.type] | n.mode)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(n.mtime_ns / 1e9))
            owner = f"{n.user or n.uid}/{n.group or n.gid}"
            suffix = f" -> {terminal_text(n.target)}" if n.target else ""
            print(f"{mode} {owner:>16} {n.size:>12} {when} {shown}{suffix}")
        else:
            print(shown)
    return 0
