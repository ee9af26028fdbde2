"""API tokens: create one (shown once), list, revoke, and authenticate a request's
bearer token (the server's only way in, for now) into a :class:`Grant`: what that
request may do, decided here and nowhere else.

A token reads ``costor_<id>_<secret>``: ``id`` is public (12 hex digits; lists, logs and
the audit log name the token by it), ``secret`` is 32 random bytes (64 hex digits). The
state keeps only ``sha256(secret)``. Not argon2id as for passwords: a password is short
and guessable, so its hash must be slow; a secret of 256 random bits cannot be guessed
whatever the hash, and a fast one lets every API request be checked in microseconds
(argon2id would cost each request ~100 ms and a core). The comparison is constant-time.

Scopes: ``read`` (every read, backed-up content included, and reading a pool's
stored objects through the Backup API), ``operate`` (also run backups and maintenance,
restore, cancel jobs), ``admin`` (everything), and ``append``, the Backup API's
write-only scope for agents and peer sites: add objects to a pool, see which exist and
list them, nothing else (never read an object back, never delete, no Admin API route).
The Backup API's permissions (``objects.append``, ``objects.read``) are held on the
whole site or not at all: a pool holds every client's data. A token never
exceeds its user: a request may do what its scope allows **and** the user's roles
allow now (``costor.config.access.user_grants``, as applied), on the clients both the
user's grants and the token's ``clients`` (names or globs) cover. A token of a user
who was removed stops working; one whose user lost a role loses what the role gave.
At creation, a scope the user could not use is refused (``admin`` needs the ``admin``
permission, ``operate`` one of the permissions it adds to ``read``, ``append`` the
``objects.append`` permission on every client, and takes no ``--clients``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from costor.config.access import PERMISSIONS, RoleGrant, client_pattern, user_grants
from costor.config.model import duration_seconds
from costor.db import tokens as db_tokens
from costor.db.models import TokenRow
from costor.db.session import session_scope
from costor.errors import NotAuthenticated, TokenNotFound, TokenRefused
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.util.clock import utcnow

READ = frozenset(
    {"config.read", "jobs.read", "snapshots.list", "snapshots.read", "audit.read", "objects.read"}
)
OPERATE = READ | {"backups.run", "maintenance.run", "snapshots.restore", "jobs.manage"}
# The Backup API's write-only scope: has, put and list a pool's objects.
APPEND = frozenset({"objects.append"})
# What a token of each scope may do at most: read, operate, admin lowest first; append
# beside them (it reads nothing).
SCOPE_PERMISSIONS: dict[str, frozenset[str]] = {
    "read": READ,
    "operate": OPERATE,
    "admin": frozenset(PERMISSIONS),
    "append": APPEND,
}
SCOPES = tuple(SCOPE_PERMISSIONS)
NOTE_USE_EVERY = timedelta(minutes=1)  # how stale last_used_at may be
PREFIX = "costor"
_TOKEN = re.compile(r"^costor_([0-9a-f]{12})_([0-9a-f]{64})$")


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``costor token list`` shows it (never its secret)."""

    id: str
    user: str
    scope: str
    clients: tuple[str, ...]
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    description: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "scope": self.scope,
            "clients": list(self.clients),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "description": self.description,
        }


@dataclass(frozen=True)
class TokenCreated:
    """A new token: ``token`` is the only time its secret is shown."""

    info: TokenInfo
    token: str

    def to_json(self) -> dict[str, Any]:
        return {**self.info.to_json(), "token": self.token}


@dataclass(frozen=True)
class TokenList:
    tokens: list[TokenInfo]

    def to_json(self) -> list[dict[str, Any]]:
        return [token.to_json() for token in self.tokens]


@dataclass(frozen=True)
class Grant:
    """Who a request is, once its token is checked, and what it may do: the one place
    where that is decided (the server's routes ask :meth:`may` and :meth:`sees_client`).

    ``rights`` are the user's grants as applied now, each limited to what the token's
    scope allows (a grant left with nothing is dropped); ``clients`` are the token's
    own limits (names or globs; empty: none)."""

    token_id: str
    user: str
    scope: str  # the token's, lowered to the highest scope the user could hold now
    clients: tuple[str, ...]  # the token's --clients; () = no limit of its own
    rights: tuple[RoleGrant, ...] = ()

    def _token_covers(self, client: str) -> bool:
        return not self.clients or any(fnmatch.fnmatchcase(client, p) for p in self.clients)

    def may(self, permission: str, client: str | None = None) -> bool:
        """Whether ``permission`` is held on ``client``; with ``client=None``, on every
        client (what the whole site's objects need: a pool, maintenance)."""
        if client is None:
            return not self.clients and any(
                g.clients is None and permission in g.permissions for g in self.rights
            )
        return self._token_covers(client) and any(
            permission in g.permissions and g.covers(client) for g in self.rights
        )

    def may_somewhere(self, permission: str) -> bool:
        """Whether ``permission`` is held on any client at all."""
        return any(permission in g.permissions for g in self.rights)

    def sees_client(self, name: str) -> bool:
        """Whether ``name``'s objects exist for this caller: any permission on it.
        What it does not see is "not found" to it, never "forbidden"."""
        return self._token_covers(name) and any(g.covers(name) for g in self.rights)

    @property
    def sees_everything(self) -> bool:
        """No limit on clients, from the token or from the user's grants."""
        return not self.clients and any(g.clients is None for g in self.rights)


def create_token(
    ctx: Context,
    *,
    user: str,
    scope: str,
    clients: list[str] | None = None,
    expires: str | None = None,
    description: str = "",
) -> TokenCreated:
    if scope not in SCOPES:
        raise TokenRefused(reason=f"unknown scope {scope!r} (one of: {', '.join(SCOPES)})")
    patterns = tuple(clients or ())
    if scope == "append" and patterns:
        raise TokenRefused(
            reason="an append token writes to pools, which hold every client's data: "
            "it takes no --clients"
        )
    for pattern in patterns:
        try:
            client_pattern(pattern)
        except ValueError as error:
            raise TokenRefused(reason=str(error)) from None
    now = utcnow()
    expires_at = None
    if expires is not None:
        try:
            expires_at = now + timedelta(seconds=duration_seconds(expires))
        except ValueError as error:
            raise TokenRefused(reason=str(error)) from None
    with session_scope(ctx.engine, write=False) as session:
        _check_user(ctx, session, user, scope)  # a refusal changes nothing: not recorded
    token_id = secrets.token_hex(6)
    secret = secrets.token_hex(32)
    detail = {"token": token_id, "scope": scope, "clients": list(patterns), "expires": expires}
    # It grants access: recorded first, and not made if the record cannot be written.
    with (
        audited(ctx, "token.create", f"user:{user}", detail=detail, before=True),
        session_scope(ctx.engine) as session,
    ):
        row = TokenRow(
            id=token_id,
            user=user,
            scope=scope,
            clients=json.dumps(list(patterns)),
            secret_hash=_hash(secret),
            created_at=now,
            expires_at=expires_at,
            description=description,
        )
        db_tokens.add_token(session, row)
        info = _info(row)
    return TokenCreated(info=info, token=f"{PREFIX}_{token_id}_{secret}")


def list_tokens(ctx: Context, *, user: str | None = None) -> TokenList:
    with session_scope(ctx.engine, write=False) as session:
        return TokenList(tokens=[_info(row) for row in db_tokens.token_rows(session, user=user)])


def revoke_token(ctx: Context, *, token_id: str, user: str | None = None) -> TokenInfo:
    """Revoke ``token_id`` (its public id, or a whole token); revoking twice is fine.
    ``user``: only a token of that user (another's is :class:`TokenNotFound`, as an
    unknown one: the API's "your own tokens")."""
    match = _TOKEN.match(token_id)
    token_id = match.group(1) if match else token_id
    with session_scope(ctx.engine, write=False) as session:
        found = db_tokens.token_by_id(session, token_id)
        if found is None or (user is not None and found.user != user):
            raise TokenNotFound(token_id=token_id)
        owner = found.user
    with (
        audited(ctx, "token.revoke", f"token:{token_id}", detail={"user": owner}),
        session_scope(ctx.engine) as session,
    ):
        row = db_tokens.revoke_token(session, token_id, utcnow())
        if row is None:
            raise TokenNotFound(token_id=token_id)
        return _info(row)


def authenticate(ctx: Context, token: str | None) -> Grant:
    """The grant of a bearer ``token``; :class:`NotAuthenticated` (401) when it is
    missing, malformed, unknown, wrong, revoked, expired, or its user is gone. Notes
    the use (``last_used_at``, to the minute)."""
    if not token:
        raise NotAuthenticated(reason="no bearer token")
    match = _TOKEN.match(token)
    if match is None:
        raise NotAuthenticated(reason="malformed token")
    token_id, secret = match.groups()
    now = utcnow()
    with session_scope(ctx.engine, write=False) as session:
        row = db_tokens.token_by_id(session, token_id)
        # Compared even for an unknown id, so the time taken does not say which ids exist.
        expected = row.secret_hash if row is not None else _hash("")
        if not hmac.compare_digest(expected, _hash(secret)) or row is None:
            raise NotAuthenticated(reason="unknown token")
        if row.revoked_at is not None:
            raise NotAuthenticated(reason="token revoked")
        if row.expires_at is not None and _aware(row.expires_at) <= now:
            raise NotAuthenticated(reason="token expired")
        if not db_tokens.user_applied(session, row.user) or row.user not in ctx.inventory.users:
            raise NotAuthenticated(reason="the token's user no longer exists")
    if row.last_used_at is None or now - _aware(row.last_used_at) > NOTE_USE_EVERY:
        # A write at most once a minute per token, not one per request: on SQLite a write
        # waits for a running backup's transaction.
        with session_scope(ctx.engine) as session:
            db_tokens.note_token_used(session, token_id, now)
    return user_grant(
        ctx, row.user, token_id=row.id, scope=row.scope, clients=tuple(json.loads(row.clients))
    )


def user_grant(
    ctx: Context, user: str, *, token_id: str, scope: str, clients: tuple[str, ...] = ()
) -> Grant:
    """What ``user`` may do now through a credential of ``scope`` limited to
    ``clients``: the user's grants as applied, each cut to what the scope allows (the
    scope itself lowered to the highest one the user could hold). Tokens and login
    sessions (``costor.ops.control.logins``) both become a :class:`Grant` here."""
    granted = _user_permissions(ctx, user)
    scope = _highest_scope(granted, up_to=scope)
    allowed = SCOPE_PERMISSIONS[scope]
    rights = tuple(
        RoleGrant(grant.permissions & allowed, grant.clients)
        for grant in _user_rights(ctx, user)
        if grant.permissions & allowed
    )
    return Grant(token_id=token_id, user=user, scope=scope, clients=clients, rights=rights)


def _check_user(ctx: Context, session: Any, user: str, scope: str) -> None:
    if user not in ctx.inventory.users or not db_tokens.user_applied(session, user):
        raise TokenRefused(
            reason=f"no user {user!r} is applied (declare it in [users.{user}] and "
            "run `costor apply`)"
        )
    granted = _user_permissions(ctx, user)
    if scope == "append":
        if not any(
            g.clients is None and "objects.append" in g.permissions for g in _user_rights(ctx, user)
        ):
            raise TokenRefused(
                reason=f"user {user!r} has no role granting objects.append on every "
                "client, so it cannot have an append token (a pool holds every client's "
                "data)"
            )
        return
    if scope == "admin" and "admin" not in granted:
        raise TokenRefused(
            reason=f"user {user!r} has no admin role, so its tokens cannot be admin "
            "(--scope operate or read)"
        )
    if _highest_scope(granted, up_to=scope) != scope:
        raise TokenRefused(
            reason=f"user {user!r} has no role that runs, restores or manages anything, "
            "so its tokens are read only (--scope read)"
        )


def _user_rights(ctx: Context, user: str) -> tuple[RoleGrant, ...]:
    """``user``'s grants as applied (none for a user who is not declared)."""
    config = ctx.inventory.users.get(user)
    if config is None:
        return ()
    return user_grants(config, ctx.inventory.groups, ctx.inventory.roles)


def _user_permissions(ctx: Context, user: str) -> frozenset[str]:
    return frozenset().union(*(grant.permissions for grant in _user_rights(ctx, user)))


def _highest_scope(granted: frozenset[str], *, up_to: str) -> str:
    """The highest scope, ``up_to`` at most, whose use the user's permissions allow:
    ``admin`` needs ``admin``; ``operate`` one of the permissions it adds to ``read``.
    ``append`` stays ``append``: it is no step of that ladder, and a user who lost
    ``objects.append`` keeps a token that may do nothing."""
    if up_to == "append":
        return "append"
    if up_to == "admin" and "admin" in granted:
        return "admin"
    if up_to in ("admin", "operate") and granted & (OPERATE - READ):
        return "operate"
    return "read"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


def _iso(value: datetime | None) -> str | None:
    return _aware(value).isoformat() if value is not None else None


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        user=row.user,
        scope=row.scope,
        clients=tuple(json.loads(row.clients)),
        created_at=_aware(row.created_at).isoformat(),
        expires_at=_iso(row.expires_at),
        revoked_at=_iso(row.revoked_at),
        last_used_at=_iso(row.last_used_at),
        description=row.description,
    )
