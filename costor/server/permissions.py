"""Who asks and what they may do, for every route: the bearer token checked into a
:class:`~costor.ops.control.tokens.Grant` (which decides), and :func:`requires`, the
FastAPI dependency by which a route names the permission it needs.

A request proves who it is with a bearer token (``Authorization: Bearer``) or, from a
browser, the session cookie :data:`SESSION_COOKIE` of a password login
(``costor.ops.control.logins``; the token wins when both are sent). A cookie's request
that changes something (POST, PUT, PATCH, DELETE) must also send the session's CSRF
token in ``X-CSRF-Token``, else **403** (:class:`~costor.errors.CsrfRefused`): a browser
sends cookies along with another site's forms and scripts, never a bearer token.

The answers, the same on every route:

- no valid token or session: **401**;
- an object the caller may not see (a snapshot, job, client or pool of clients none of
  its grants or its token covers): **404**, exactly as if it did not exist — never 403,
  which would tell that it exists;
- an object it sees, or a route without an object, whose permission it lacks: **403**
  (:class:`~costor.errors.PermissionDenied`).

A route without an object (a list, the status) needs its permission on some client: it
then shows only what the caller holds it on (:meth:`Access.allows`). A route on an
object declares ``per_object=True`` and checks the object with :meth:`Access.client`,
:meth:`Access.pool` or :meth:`Access.site` before it acts. Objects of the whole site (a
pool, which holds every client's data; maintenance) need the permission on every client.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from costor.errors import (
    CostorError,
    JobNotFound,
    NotAuthenticated,
    PermissionDenied,
    UnknownResource,
)
from costor.ops.context import Context
from costor.ops.control.logins import authenticate_session
from costor.ops.control.tokens import Grant, authenticate

SESSION_COOKIE = "costor_session"
bearer = HTTPBearer(auto_error=False, description="costor token create")
session_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="POST /api/v1/login"
)
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticated(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    cookie: str | None = Depends(session_cookie),
) -> Grant:
    """The grant of the request's bearer token, else of its session cookie (401
    without a valid one; 403 for a cookie's unsafe request without its CSRF token)."""
    if credentials is not None and credentials.scheme.lower() == "bearer":
        with request.app.state.gate.use(**asking(request, None)) as ctx:
            found = authenticate(ctx, credentials.credentials.strip())
        request.state.grant = found
        return found
    if cookie is None:
        raise NotAuthenticated(reason="no bearer token or session cookie")
    with request.app.state.gate.use(**asking(request, None)) as ctx:
        login = authenticate_session(ctx, cookie.strip())
    if request.method not in SAFE_METHODS:
        login.check_csrf(request.headers.get(CSRF_HEADER))
    request.state.grant = login.grant
    request.state.login = login
    return login.grant


def still_authenticated(request: Request) -> bool:
    """Whether the request's bearer token or session cookie still authenticates: a
    stream that outlives its first check (a job's events) ends when a logout, a
    revocation or an expiry ends what let it in. Renews no session."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    try:
        with request.app.state.gate.use(**asking(request, None)) as ctx:
            if scheme.lower() == "bearer" and credential.strip():
                authenticate(ctx, credential.strip())
            else:
                cookie = request.cookies.get(SESSION_COOKIE, "").strip()
                authenticate_session(ctx, cookie, renew=False)
    except NotAuthenticated:
        return False
    return True


def asking(request: Request, who: Grant | None) -> dict[str, Any]:
    """Who asks, as the audit log names them (costor/ops/context.py ``Context.actor``):
    ``token:ID``, or ``user:NAME`` for a login session."""
    actor = "anonymous"
    if who is not None:
        is_session = who.token_id.startswith("session:")
        actor = f"user:{who.user}" if is_session else f"token:{who.token_id}"
    return {
        "actor": actor,
        "source": request.client.host if request.client is not None else None,
        "request_id": getattr(request.state, "request_id", None),
    }


@contextmanager
def use(request: Request) -> Iterator[Context]:
    """The gate's context, for the use case of a request whose token was checked,
    naming who asks."""
    who = getattr(request.state, "grant", None)
    with request.app.state.gate.use(**asking(request, who)) as ctx:
        yield ctx


def not_append(grant: Grant, what: str) -> None:
    """403 for an ``append`` token (an agent's, a peer site's: the Backup API only) on a
    route that keeps to a user's own things (its tokens, its login sessions), which
    :func:`requires` does not guard: they need no permission."""
    if grant.scope == "append":
        raise PermissionDenied(reason=f"an append token is for the Backup API only, not {what}")


@dataclass(frozen=True)
class Access:
    """A request's grant, with the permission its route needs."""

    grant: Grant
    permission: str

    def allows(self, client: str) -> bool:
        """Whether the permission is held on ``client`` (what a list shows)."""
        return self.grant.may(self.permission, client)

    @property
    def whole_site(self) -> bool:
        """Whether the permission is held on every client (nothing to leave out)."""
        return self.grant.may(self.permission)

    def client(self, name: str, *, missing: CostorError) -> None:
        """``missing`` (404) unless the caller sees client ``name``; 403 unless it
        holds the permission on it."""
        if not self.grant.sees_client(name):
            raise missing
        if not self.grant.may(self.permission, name):
            raise self._denied(f"client {name!r}")

    def site(self, *, missing: CostorError | None = None, what: str = "the site") -> None:
        """For an object of the whole site: ``missing`` (404) unless the caller sees
        every client (when the object is not for everyone to see), 403 unless it holds
        the permission on every client."""
        if missing is not None and not self.grant.sees_everything:
            raise missing
        if not self.whole_site:
            raise self._denied(what)

    def job(self, job: dict[str, Any], clients: set[str]) -> None:
        """A job is its target's: a client's job is seen by whoever sees the client, a
        pool's only by a caller who sees every client (``clients``: the declared ones)."""
        missing = JobNotFound(job_id=job["id"])
        if job["target"] in clients:
            self.client(job["target"], missing=missing)
        else:
            self.site(missing=missing, what=f"job {job['id']}")

    def pool(self, ctx: Context, name: str) -> None:
        """A pool: seen by whoever sees one of its clients (or every client), acted on
        only with the permission on every client (it holds them all)."""
        clients = [c for c, config in ctx.inventory.clients.items() if config.pool == name]
        seen = self.grant.sees_everything or any(self.grant.sees_client(c) for c in clients)
        if name not in ctx.inventory.pools or not seen:
            raise UnknownResource(kind="pool", name=name)
        if not self.whole_site:
            raise self._denied(f"pool {name!r} (it holds other clients' data too)")

    def _denied(self, what: str) -> PermissionDenied:
        return PermissionDenied(
            reason=f"{self.permission} on {what} is not granted to this token "
            f"(user {self.grant.user!r}, scope {self.grant.scope!r})"
        )


def requires(permission: str, *, per_object: bool = False) -> Any:
    """The dependency of a route that needs ``permission``: its :class:`Access`. Without
    ``per_object``, a caller who holds it on no client at all is refused (403) here;
    with it, the route checks its object (404 before 403)."""

    def dependency(grant: Grant = Depends(authenticated)) -> Access:
        if not per_object and not grant.may_somewhere(permission):
            raise PermissionDenied(
                reason=f"{permission} is not granted to this token "
                f"(user {grant.user!r}, scope {grant.scope!r})"
            )
        return Access(grant, permission)

    dependency.__name__ = f"requires_{permission.replace('.', '_')}"
    return Depends(dependency)


__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Access",
    "asking",
    "authenticated",
    "not_append",
    "requires",
    "still_authenticated",
    "use",
]
