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


def context(args: Any, *, warn_broken: bool = True) -> Any:
    """The context of every verb but plan and apply: it runs the applied configuration,
    so a broken working inventory is a warning here, not an error."""
    from costor.cli.output import warn
    from costor.ops.context import Context

    ctx = Context(args.inventory)
    if ctx.working_problems and warn_broken:
        first = ctx.working_problems[0]
        more = len(ctx.working_problems) - 1
        warn(
            f"{first}{f' (and {more} more)' if more else ''}; "
            "the inventory does not validate, so this runs the applied configuration"
        )
    return ctx


def planning_context(args: Any) -> Any:
    """The context of plan and apply: secrets must be readable (a missing variable is a
    diagnostic naming its key), since the plan compares and apply uses them."""
    from costor.ops.context import Context

    return Context(args.inventory, resolve_secrets=True, configuration="working")


def add_lock_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-timeout",
        metavar="DURATION",
        type=duration,
        default=0.0,
        help="wait this long for the state lock held by another apply, e.g. 30s or 5m "
        "(default: 0, fail at once naming the holder)",
    )


def duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``1h``, ``2d`` -> seconds (argparse type)."""
    from costor.config.model import duration_seconds

    try:
        return duration_seconds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s or 5m") from None


# The top level's options that take a value (costor --server URL VERB …).
SERVER_OPTIONS = ("--server", "--server-ca", "--token-file")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``costor --server URL VERB``: the verb runs on a remote site, through its API."""
    parser.add_argument(
        "--server",
        metavar="URL",
        default=os.environ.get("COSTOR_SERVER") or None,
        help="run the command on the site server at URL (https://HOST:PORT) through its API, "
        "with the token of $COSTOR_TOKEN or --token-file (default: $COSTOR_SERVER; none: "
        "here, in process); status, snapshots, ls, restore, backup and jobs run remotely",
    )
    parser.add_argument(
        "--server-ca",
        metavar="FILE",
        default=os.environ.get("COSTOR_SERVER_CA") or None,
        help="verify the server's certificate against this CA (PEM) and its host name "
        "(default: $COSTOR_SERVER_CA; none: pin the certificate at first use in "
        "$COSTOR_KNOWN_SERVERS or ~/.config/costor/known_servers)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the API token from FILE (default: $COSTOR_TOKEN)",
    )
