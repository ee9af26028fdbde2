"""Password logins and their sessions (docs/server.md, "Logging in"): log in, log out,
who am I, list and revoke sessions. The use cases are ``costor.ops.control.logins``.

``POST /api/v1/login`` checks a user's password and sets the session cookie
``costor_session``: ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other
site's page sends it), ``Path=/``, and ``Secure`` when the request came over TLS (or
through a proxy on this machine that said so in ``X-Forwarded-Proto``). The answer
carries the session's CSRF token, which the cookie's requests that change something
send back in ``X-CSRF-Token`` (``costor/server/permissions.py`` checks it). The login
takes a JSON body only: a form of another site can post ``text/plain`` or a form
encoding without asking, never ``application/json``.

Failed logins are slowed per user name and per address (``LoginThrottle``, in this
process's memory): an attempt that comes too early answers **429** with
``Retry-After``. Every route but the login needs a session or a bearer token; a
session's list and revocation are its user's own, every user's with ``users.manage``
(another user's session answers 404 otherwise, as a missing one does).
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from costor.errors import LoginThrottled, UsageError
from costor.ops.control.logins import (
    MAX_PASSWORD,
    MAX_USER_NAME,
    LoggedIn,
    LoginThrottle,
    SessionAuth,
    begin_login,
    configured_policy,
    describe_caller,
    finish_login,
    list_sessions,
    log_out,
    revoke_session,
)
from costor.ops.control.tokens import Grant
from costor.server.errors import error_response
from costor.server.gate import Gate
from costor.server.permissions import SESSION_COOKIE, asking, authenticated, not_append, use
from costor.server.schemas import ErrorDocument

API = "/api/v1"
router = APIRouter(prefix=API, tags=["sessions"])
_THROTTLE_LOCK = threading.Lock()


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "invalid input (not a JSON body with user and password, or a bearer token "
        "logging out)",
        401: "wrong user name or password; no valid session or token",
        403: "a session cookie's request without its X-CSRF-Token",
        404: "no such session, or not the caller's to see",
        429: "too many failed logins for this user or from this address: Retry-After",
    }
    answers: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorDocument, "description": meaning[status]} for status in statuses
    }
    if 429 in answers:
        answers[429]["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before the next attempt",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return answers


class LoginRequest(BaseModel):
    """``POST /api/v1/login``."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=MAX_USER_NAME)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class LoginDocument(BaseModel):
    """A login's answer (the session's secret is in the cookie only)."""

    user: str
    session_id: str = Field(description="the session's public id (lists, revoke)")
    csrf_token: str = Field(description="send it as X-CSRF-Token with POST, PUT, PATCH, DELETE")
    expires_at: str = Field(description="the idle limit, moved forward by use")
    absolute_expires_at: str = Field(description="the session ends then, used or not")


class SessionDocument(BaseModel):
    """A session as lists show it (never its secret nor its CSRF token)."""

    id: str
    user: str
    address: str | None
    created_at: str
    expires_at: str
    revoked_at: str | None
    state: str = Field(description="active, expired or revoked")


class GroupDocument(BaseModel):
    name: str
    roles: list[str]
    clients: list[str] | None = Field(description="null: every client")


class RightDocument(BaseModel):
    permissions: list[str]
    clients: list[str] | None = Field(description="null: every client")


class CallerDocument(BaseModel):
    """``GET /api/v1/session``: who asks and what it may do."""

    user: str
    via: str = Field(description="session or token")
    token_id: str | None
    session: SessionDocument | None
    csrf_token: str | None = Field(description="the session's; null for a token")
    scope: str
    groups: list[GroupDocument]
    rights: list[RightDocument] = Field(description="what this request may do, on which clients")
    token_clients: list[str]


def _throttle(request: Request) -> LoginThrottle:
    """The server's one throttle (made at the first login, with the process's policy)."""
    with _THROTTLE_LOCK:
        throttle = getattr(request.app.state, "login_throttle", None)
        if throttle is None:
            throttle = LoginThrottle(configured_policy())
            request.app.state.login_throttle = throttle
        return throttle


def password_login(request: Request, user: str, password: str) -> LoggedIn:
    """Check ``user``'s ``password`` and open a session (the API's login and the web
    UI's), with the server's one throttle (:func:`logged_in_through`)."""
    address = request.client.host if request.client is not None else None
    return logged_in_through(
        request.app.state.gate,
        asking(request, None),
        user=user,
        password=password,
        address=address,
        throttle=_throttle(request),
    )


def logged_in_through(
    gate: Gate,
    who: dict[str, Any],
    *,
    user: str,
    password: str,
    address: str | None,
    throttle: LoginThrottle,
) -> LoggedIn:
    """A password login through ``gate`` (``who``: the audit log's names for the
    caller), for every door that takes a password (the API, the web UI, WebDAV):
    throttled per user and address, argon2id checked outside the gate so that other
    requests go on meanwhile, audited whatever the outcome. Raises LoginFailed,
    LoginThrottled (its ``retry_after``) or UsageError."""
    with gate.use(**who) as ctx:
        attempt = begin_login(ctx, user=user, password=password, address=address, throttle=throttle)
    attempt.check()
    with gate.use(**who) as ctx:
        return finish_login(ctx, attempt)


def set_session_cookie(request: Request, response: Response, logged_in: LoggedIn) -> None:
    """The session's cookie: HttpOnly, SameSite=Strict, Secure over TLS (module
    docstring), for the session's whole lifetime."""
    response.set_cookie(
        SESSION_COOKIE,
        logged_in.secret,
        max_age=int(_throttle(request).policy.lifetime.total_seconds()),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    """Tell the browser to drop the session's cookie (after a logout)."""
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def _login_of(request: Request) -> SessionAuth | None:
    login = getattr(request.state, "login", None)
    return login if isinstance(login, SessionAuth) else None


@router.post(
    "/login",
    response_model=LoginDocument,
    responses=_errors(400, 401, 429),
)
def login(request: Request, response: Response, body: LoginRequest) -> Any:
    """Log in with a password: sets the `costor_session` cookie (HttpOnly,
    SameSite=Strict, Secure over TLS) and answers with the session's CSRF token."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UsageError(message="a login is a JSON body (Content-Type: application/json)")
    try:
        logged_in = password_login(request, body.user, body.password)
    except LoginThrottled as error:
        return error_response(request, error)  # 429 with Retry-After
    set_session_cookie(request, response, logged_in)
    return logged_in.to_json()


@router.post("/logout", response_model=SessionDocument, responses=_errors(400, 401, 403))
def logout(request: Request, _grant: Grant = Depends(authenticated)) -> JSONResponse:
    """End this session (its cookie is cleared). Needs X-CSRF-Token."""
    if _login_of(request) is None:
        raise UsageError(
            message="a bearer token has no session to log out of "
            "(`costor token revoke ID` ends a token)"
        )
    with use(request) as ctx:
        ended = log_out(ctx, request.cookies.get(SESSION_COOKIE, "").strip())
    answer = JSONResponse(ended.to_json())
    clear_session_cookie(request, answer)
    return answer


@router.get("/session", response_model=CallerDocument, responses=_errors(401))
def get_session(request: Request, grant: Grant = Depends(authenticated)) -> dict[str, Any]:
    """Who am I: the user, its groups and roles, what this request may do, and (for a
    session) its CSRF token."""
    with use(request) as ctx:
        return describe_caller(ctx, grant, _login_of(request)).to_json()


@router.get("/sessions", response_model=list[SessionDocument], responses=_errors(401))
def get_sessions(
    request: Request, user: str | None = None, grant: Grant = Depends(authenticated)
) -> list[dict[str, Any]]:
    """Login sessions (active ones and those ended in the last 7 days), oldest first:
    the caller's own, or every user's (`user=` to choose one) with users.manage."""
    not_append(grant, "for login sessions")
    if not grant.may("users.manage"):
        if user is not None and user != grant.user:
            return []
        user = grant.user
    with use(request) as ctx:
        return list_sessions(ctx, user=user).to_json()


@router.delete(
    "/sessions/{session_id}",
    response_model=SessionDocument,
    responses=_errors(401, 403, 404),
)
def delete_session(
    request: Request, session_id: str, grant: Grant = Depends(authenticated)
) -> dict[str, Any]:
    """End a session at once: one's own, or anyone's with users.manage (another
    user's answers 404 otherwise). A cookie's request needs X-CSRF-Token."""
    not_append(grant, "for login sessions")
    only = None if grant.may("users.manage") else grant.user
    with use(request) as ctx:
        return revoke_session(ctx, session_id=session_id, user=only).to_json()
