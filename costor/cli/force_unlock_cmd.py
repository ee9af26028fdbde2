"""``costor force-unlock LOCK_ID``: remove a state lock left by a process that is gone.

Only with the id that the refused command printed, so an unlock cannot hit a lock taken
since. A lock of a killed process on this host is taken over without this command; one
held from another host is trusted until its holder releases it.
"""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "force-unlock", help="remove a stale state lock (give the id the refusal printed)"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("lock_id", metavar="LOCK_ID")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.control.state import force_unlock

    unlocked = force_unlock(context(args), lock_id=args.lock_id)
    if args.json:
        print_json(unlocked.to_json())
    else:
        print(f"Removed {unlocked.description}.")
    return 0
