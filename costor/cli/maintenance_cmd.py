"""costor maintenance on|off [--site S]: running jobs finish, no new ones start."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "maintenance", help="pause (on) or resume (off) the jobs of a site; no argument: show"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("mode", nargs="?", choices=("on", "off"), help="on or off")
    parser.add_argument("--site", metavar="S", help="the site (default: the only one)")
    parser.add_argument("--reason", help="shown by status")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.maintenance.site import maintenance

    ctx = context(args)
    on = None if args.mode is None else args.mode == "on"
    outcome = maintenance(ctx, on=on, site=args.site, reason=args.reason)
    if args.json:
        print_json(outcome.to_json())
        return 0
    for entry in outcome.sites:
        state = "on" if entry.maintenance else "off"
        how = f" ({entry.reason})" if entry.maintenance and entry.reason else ""
        print(f"site {entry.site}: maintenance {state}{how}")
    return 0
