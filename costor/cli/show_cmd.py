"""``costor show PLANFILE [--json]``: a saved plan, for review (as text or its JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option
from costor.cli.output import print_json
from costor.errors import PlanFileInvalid


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "show",
        help="show a saved plan",
        description="Show a plan saved by `costor plan --out`. Needs no inventory or "
        "state: the file is self-contained (and holds no secret); -c is accepted like "
        "everywhere else and not read.",
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("planfile", metavar="PLANFILE")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.cli.plan_output import render_plan
    from costor.plan.planfile import decode

    try:
        with open(args.planfile, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise PlanFileInvalid(path=args.planfile, reason=error.strerror or str(error)) from None
    plan, _document, _signature = decode(data, args.planfile)
    if args.json:
        print_json(plan.to_json(shown=True))
    else:
        print(f"Plan made {plan.timestamp} against state serial {plan.binding.serial}.\n")
        print(render_plan(plan))
    return 0
