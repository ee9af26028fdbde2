"""costor token create|list|revoke: API tokens for the site server (docs/server.md).

costor token create --user U --scope read|operate|admin|append [--clients a,b] [--expires 30d] [--description T]
costor token list [--user U] [--json]
costor token revoke ID
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "token", help="API tokens: create (shown once), list, revoke"
    )
    actions = parser.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="make a token for a user (printed once; only its hash is kept)",
        description="Makes an API token for an applied user. Scopes: read (look, browse, "
        "download, and read a pool's objects through the Backup API), operate (also run "
        "backups and maintenance jobs, cancel jobs), admin (everything) and append (the "
        "Backup API only: add objects to pools, see which exist, never read one back or "
        "delete; for agents and peer sites, whose user holds objects.append on every "
        "client). A token never does more than its user's roles allow. --clients limits "
        "what the token sees to these clients (names or globs): others answer 404 (not "
        "with append: a pool holds every client's data).",
    )
    add_inventory_option(create)
    add_json_option(create)
    create.add_argument("--user", metavar="U", required=True)
    create.add_argument(
        "--scope", metavar="SCOPE", required=True, help="read, operate, admin or append"
    )
    create.add_argument(
        "--clients", metavar="A,B", default="", help="only these clients (names or globs)"
    )
    create.add_argument("--expires", metavar="DURATION", help="e.g. 30d (default: never)")
    create.add_argument("--description", metavar="TEXT", default="")
    listing = actions.add_parser("list", help="every token (never its secret)")
    add_inventory_option(listing)
    add_json_option(listing)
    listing.add_argument("--user", metavar="U", help="only this user's tokens")
    revoke = actions.add_parser("revoke", help="revoke a token at once")
    add_inventory_option(revoke)
    add_json_option(revoke)
    revoke.add_argument("token_id", metavar="ID", help="the token's id (or the token)")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops.control import tokens

    ctx = context(args)
    if args.token_action == "create":
        clients = [name.strip() for name in args.clients.split(",") if name.strip()]
        created = tokens.create_token(
            ctx,
            user=args.user,
            scope=args.scope,
            clients=clients,
            expires=args.expires,
            description=args.description,
        )
        if args.json:
            print_json(created.to_json())
        else:
            print(created.token)
            print(
                f"token {created.info.id} for {created.info.user} ({created.info.scope}): "
                "shown once, keep it now",
                file=sys.stderr,
            )
        return 0
    if args.token_action == "revoke":
        info = tokens.revoke_token(ctx, token_id=args.token_id)
        if args.json:
            print_json(info.to_json())
        else:
            print(f"token {info.id} revoked")
        return 0
    found = tokens.list_tokens(ctx, user=args.user)
    if args.json:
        print_json(found.to_json())
        return 0
    if not found.tokens:
        print("no tokens")
        return 0
    print(f"{'ID':<12}  {'USER':<16} {'SCOPE':<7} {'STATE':<8} {'EXPIRES':<19}  CLIENTS")
    now = _now()
    for token in found.tokens:
        state = "revoked" if token.revoked_at else "active"
        if state == "active" and token.expires_at and token.expires_at <= now:
            state = "expired"
        expires = (token.expires_at or "never")[:19].replace("T", " ")
        shown = ",".join(token.clients) or "*"
        print(
            f"{token.id:<12}  {token.user:<16} {token.scope:<7} {state:<8} {expires:<19}  {shown}"
        )
    return 0


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()
