"""``costor hostkey accept CLIENT`` / ``costor hostkey show CLIENT``: the SSH host key
recorded for a client.

``accept`` records the key the host presents now, replacing the recorded one: run it
after a host was reinstalled, once its new key was checked (``ssh-keygen -lf
/etc/ssh/ssh_host_ed25519_key.pub`` on the host shows the fingerprint), or give that
fingerprint with ``--fingerprint`` so that only that key is recorded.
"""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, add_lock_option, context
from costor.cli.output import print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("hostkey", help="SSH host keys of clients")
    actions = parser.add_subparsers(dest="hostkey_action", metavar="ACTION", required=True)
    accept = actions.add_parser("accept", help="record the key the host presents now")
    show = actions.add_parser("show", help="the recorded key and the one presented now")
    for action in (accept, show):
        add_inventory_option(action)
        add_json_option(action)
        action.add_argument("client", metavar="CLIENT")
    accept.add_argument(
        "--fingerprint",
        metavar="SHA256:…",
        help="record the key only if the host presents this one (as `ssh-keygen -lf` on "
        "the host prints it); otherwise refuse and record nothing",
    )
    add_lock_option(accept)
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.control.hosts import (
        HostKeyAccepted,
        HostKeyReport,
        accept_host_key,
        show_host_key,
    )

    ctx = context(args)
    outcome: HostKeyAccepted | HostKeyReport
    if args.hostkey_action == "accept":
        outcome = accepted = accept_host_key(
            ctx, args.client, lock_timeout=args.lock_timeout, expected=args.fingerprint
        )
        if not args.json:
            before = accepted.previous or "nothing"
            print(f"{args.client}: recorded {accepted.fingerprint} (was {before})")
    else:
        outcome = report = show_host_key(ctx, args.client)
        if not args.json:
            print(f"{args.client} ({report.host}):")
            print(f"  recorded:  {report.recorded or '-'}")
            print(f"  pinned:    {report.pinned or '-'}")
            print(f"  presented: {report.presented or report.error}")
    if args.json:
        print_json(outcome.to_json())
    return 0
