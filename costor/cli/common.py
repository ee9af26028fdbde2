"""Argument helpers shared by the verb modules."""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_inventory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--inventory",
        metavar="FILE",
        default=os.environ.get("COSTOR_INVENTORY", "inventory.toml"),
        help="inventory file (default: $COSTOR_INVENTORY or ./inventory.toml)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def context(args: Any) -> Any:
    from costor.ops.context import Context

    return Context(args.inventory)
