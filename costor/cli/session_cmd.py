"""costor session list|revoke: the site server's login sessions (docs/server.md).

costor session list [--user U] [--json]
costor session revoke ID

For the site's administrators, on the site (as ``costor token``): sessions are made by
logging in to the server with a password (``POST /api/v1/login``), never here.
"""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "session", help="login sessions of the site server: list, revoke"
    )
    actions = parser.add_subparsers(dest="session_action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="active sessions and those ended in the last 7 days (never a secret)",
    )
    add_inventory_option(listing)
    add_json_option(listing)
    listing.add_argument("--user", metavar="U", help="only this user's sessions")
    revoke = actions.add_parser("revoke", help="end a session at once")
    add_inventory_option(revoke)
    add_json_option(revoke)
    revoke.add_argument("session_id", metavar="ID", help="the session's id (12 hex digits)")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.control import logins

    ctx = context(args)
    if args.session_action == "revoke":
        info = logins.revoke_session(ctx, session_id=args.session_id)
        if args.json:
            print_json(info.to_json())
        else:
            print(f"session {info.id} of {info.user} revoked")
        return 0
    found = logins.list_sessions(ctx, user=args.user)
    if args.json:
        print_json(found.to_json())
        return 0
    if not found.sessions:
        print("no sessions")
        return 0
    print(f"{'ID':<12}  {'USER':<16} {'STATE':<8} {'CREATED':<19}  {'EXPIRES':<19}  ADDRESS")
    for session in found.sessions:
        created = session.created_at.isoformat()[:19].replace("T", " ")
        expires = session.expires_at.isoformat()[:19].replace("T", " ")
        print(
            f"{session.id:<12}  {session.user:<16} {session.state:<8} {created:<19}  "
            f"{expires:<19}  {session.address or '-'}"
        )
    return 0
