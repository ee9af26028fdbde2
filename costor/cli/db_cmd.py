"""``costor db upgrade`` / ``costor db status``: the state database's schema.

Commands upgrade an older schema by themselves when they open the database; ``db
upgrade`` does it explicitly (before rolling out a new version to several instances on
one PostgreSQL, say), and ``db status`` shows the revision without changing anything.
"""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option
from costor.cli.output import print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("db", help="the state database's schema")
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    for name, text in (
        ("upgrade", "migrate the schema to this version's (Alembic); safe to repeat"),
        ("status", "show the schema revision and the state's serial; change nothing"),
    ):
        action = actions.add_parser(name, help=text)
        add_inventory_option(action)
        add_json_option(action)
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.control.state import schema_status, upgrade_schema

    if args.db_action == "upgrade":
        upgrade = upgrade_schema(inventory=args.inventory)
        if args.json:
            print_json(upgrade.to_json())
        elif not upgrade.changed:
            print(f"{upgrade.database}: schema already at revision {upgrade.after}")
        else:
            print(
                f"{upgrade.database}: schema upgraded from {upgrade.before or 'empty'} "
                f"to {upgrade.after}"
            )
        return 0
    status = schema_status(inventory=args.inventory)
    if args.json:
        print_json(status.to_json())
    else:
        current = status.revision or "empty (no schema yet)"
        print(f"database: {status.database}")
        print(f"schema:   {current} (this CoStor: {status.head})")
        if status.lineage:
            print(f"state:    lineage {status.lineage}, serial {status.serial}")
    return 0
