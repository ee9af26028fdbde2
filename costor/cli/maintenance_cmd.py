"""costor maintenance on|off [--site S]: running jobs finish, no new ones start."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json
from costor.errors import UsageError


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
    from costor.ops.serve import maintenance_reasons, set_maintenance

    ctx = context(args)
    if args.mode is not None:
        site = args.site
        if site is None:
            if len(ctx.inventory.sites) != 1:
                raise UsageError(message="several sites are declared: name one with --site")
            [site] = ctx.inventory.sites
        set_maintenance(ctx, site, args.mode == "on", args.reason)
    paused = maintenance_reasons(ctx)
    declared = {n for n, s in ctx.inventory.sites.items() if s.maintenance}
    document = {
        "sites": [
            {
                "site": name,
                "maintenance": name in paused,
                "by_inventory": name in declared,
                "reason": paused.get(name),
            }
            for name in sorted(ctx.inventory.sites)
        ]
    }
    if args.json:
        print_json(document)
        return 0
    for entry in document["sites"]:
        state = "on" if entry["maintenance"] else "off"
        how = f" ({entry['reason']})" if entry["maintenance"] and entry["reason"] else ""
        print(f"site {entry['site']}: maintenance {state}{how}")
    return 0
