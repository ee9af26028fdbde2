"""costor status: health per client (last good backup vs RPO, last check, last self-test)."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json, terminal_text


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "status", help="health of every client: backups against RPO, checks, self-tests"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.status import status

    document = status(context(args)).to_json()
    if args.json:
        print_json(document)
    else:
        print_status(document)
    return 0


def print_status(report: dict[str, Any]) -> None:
    """The status as text, from its ``--json`` document (here or from a site's API)."""
    print(f"health: {report['health']}")
    for problem in report["problems"]:
        print(f"  {terminal_text(problem)}")
    for site in report["sites"]:
        note = ""
        if site["maintenance"]:
            reason = f": {site['maintenance_reason']}" if site["maintenance_reason"] else ""
            note = f"  (maintenance{reason}; no new jobs start)"
        print(f"site {site['site']}: {site['health']}{note}")
    for client in report["clients"]:
        last = (client["last_backup"] or "never")[:19].replace("T", " ")
        print(f"  {client['client']:<20} {client['health']:<8} last backup {last}")
        for problem in client["problems"]:
            print(f"      {terminal_text(problem)}")
    jobs = report["jobs"]
    print(
        f"jobs: {jobs['queued']} queued, {jobs['running']} running; "
        f"{len(report['instances'])} serve instance(s) alive"
    )
