"""API tokens over the API (``users.manage``'s routes, docs/server.md "Tokens over the
API"): list, create and revoke, as ``costor token list|create|revoke`` do on the site.

Who may do what:

- anyone with a token or a session lists, creates and revokes **their own** tokens; a
  caller with ``users.manage`` on the whole site, anyone's (``user=``);
- a token made over the API **never exceeds the caller**: its scope is at most the
  caller's (``read`` < ``operate`` < ``admin``; ``append`` only for a caller that may
  append to pools), and a caller limited to some clients (``--clients``) makes tokens
  limited to some of the same patterns. A session counts as its user's highest scope.
  The user's own roles are checked as ``costor token create`` checks them (400);
- an ``append`` token (an agent's, a peer site's) is for the Backup API only: 403 here.

Every creation and revocation is audited (``token.create``, recorded first: it grants
access; ``token.revoke``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from costor.errors import PermissionDenied
from costor.ops.control.tokens import Grant, create_token, list_tokens, revoke_token
from costor.server.permissions import authenticated, not_append, use
from costor.server.schemas import error_responses

API = "/api/v1"
router = APIRouter(prefix=API, tags=["tokens"])
_RANK = {"read": 0, "operate": 1, "admin": 2}


class TokenRequest(BaseModel):
    """``POST /api/v1/tokens``: as ``costor token create``."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(
        default=None, max_length=128, description="default: the caller's own user"
    )
    scope: Literal["read", "operate", "admin", "append"]
    clients: list[str] = Field(
        default_factory=list, max_length=100, description="names or globs; empty: no limit"
    )
    expires: str | None = Field(default=None, max_length=32, description="e.g. 30d, 12h")
    description: str = Field(default="", max_length=500)


def _may_manage(grant: Grant) -> bool:
    return grant.may("users.manage")


def _within_caller(grant: Grant, body: TokenRequest) -> None:
    """403 unless the new token is no more than the caller (the module's docstring)."""
    if body.scope == "append":
        if not grant.may("objects.append"):
            raise PermissionDenied(
                reason="an append token needs objects.append on every client, "
                "which this caller does not hold"
            )
    elif _RANK[body.scope] > _RANK.get(grant.scope, -1):
        raise PermissionDenied(
            reason=f"a token of scope {body.scope!r} exceeds this caller's ({grant.scope!r})"
        )
    if grant.clients and (not body.clients or not set(body.clients) <= set(grant.clients)):
        raise PermissionDenied(
            reason="this caller is limited to clients "
            f"{', '.join(grant.clients)}: a token it makes names some of them"
        )


@router.get("/tokens", responses=error_responses(401, 403))
def get_tokens(
    request: Request, user: str | None = None, grant: Grant = Depends(authenticated)
) -> list[dict[str, Any]]:
    """Tokens (never their secrets): the caller's own, or with users.manage every
    user's (`user=` to choose one)."""
    not_append(grant, "for tokens")
    if not _may_manage(grant):
        if user is not None and user != grant.user:
            return []
        user = grant.user
    with use(request) as ctx:
        return list_tokens(ctx, user=user).to_json()


@router.post("/tokens", status_code=201, responses=error_responses(400, 401, 403))
def post_token(
    request: Request, body: TokenRequest, grant: Grant = Depends(authenticated)
) -> dict[str, Any]:
    """A new token, shown this once (`token`): for the caller's own user, no more than
    the caller; for another user with users.manage. As `costor token create`."""
    not_append(grant, "for tokens")
    user = body.user or grant.user
    if user != grant.user:
        if not _may_manage(grant):
            raise PermissionDenied(reason="tokens of other users need users.manage")
    else:
        _within_caller(grant, body)
    with use(request) as ctx:
        return create_token(
            ctx,
            user=user,
            scope=body.scope,
            clients=body.clients,
            expires=body.expires,
            description=body.description,
        ).to_json()


@router.delete("/tokens/{token_id}", responses=error_responses(401, 403, 404))
def delete_token(
    request: Request, token_id: str, grant: Grant = Depends(authenticated)
) -> dict[str, Any]:
    """Revoke a token at once: one's own, or anyone's with users.manage (another
    user's answers 404 otherwise). Revoking twice is fine."""
    not_append(grant, "for tokens")
    with use(request) as ctx:
        only = None if _may_manage(grant) else grant.user
        return revoke_token(ctx, token_id=token_id[:200], user=only).to_json()


__all__ = ["router"]
