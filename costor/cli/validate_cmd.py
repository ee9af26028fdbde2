"""``costor validate [-c FILE] [--json]``: check the inventory and its profiles.

Reports every error at once, each as ``file:line:col: key: message``; also checks that
every secret the inventory refers to can be read (the values are never shown).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    # Imported here: costor.cli.main imports this module while building its parser.
    from costor.cli import main as cli_main

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "validate",
        help="check the inventory and its profiles",
        description="Check the inventory and its profiles; report every error at once.",
    )
    cli_main.add_inventory_option(parser)
    cli_main.add_json_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.cli.output import print_json
    from costor.config import check_inventory

    inventory, diagnostics = check_inventory(args.inventory)
    errors = [d for d in diagnostics if d.severity == "error"]
    if args.json:
        print_json(
            {
                "valid": inventory is not None,
                "error_count": len(errors),
                "diagnostics": [d.to_json() for d in diagnostics],
            }
        )
        return 0 if inventory is not None else 1

    for diagnostic in diagnostics:
        print(diagnostic, file=sys.stderr)
    if inventory is None:
        print(f"costor: error: {args.inventory} has {len(errors)} error(s)", file=sys.stderr)
        return 1
    print(
        f"costor: {args.inventory} is valid "
        f"({_count(len(inventory.pools), 'pool')}, {_count(len(inventory.clients), 'client')})"
    )
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
