"""Logging in and out of the web UI: the same password check, throttle, audit and
session cookie as ``POST /api/v1/login`` (costor/server/sessions.py), from a form.

A login form is a target of "login CSRF" (another site logs the browser in as the
attacker, whose account then collects what the victim does). The API's login accepts
JSON only for that reason; a form cannot, so the login page sets a one-use random
cookie (``SameSite=Strict``: another site's form never carries it) and puts the same
value in the form; the POST must bring both, equal.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from costor.errors import LoginFailed, LoginThrottled, UsageError
from costor.ops.control.logins import MAX_PASSWORD, MAX_USER_NAME, log_out
from costor.server.permissions import SESSION_COOKIE, use
from costor.server.sessions import clear_session_cookie, password_login, set_session_cookie
from costor.server.ui.pages import Viewer, checked_form, render, safe_next, viewer

router = APIRouter()
LOGIN_COOKIE = "costor_login_csrf"


def _form(
    request: Request, *, status_code: int = 200, problem: str = "", user: str = ""
) -> Response:
    token = secrets.token_urlsafe(24)
    page = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        title="Log in",
        token=token,
        next=safe_next(request.query_params.get("next")),
        problem=problem,
        user=user,
        max_user=MAX_USER_NAME,
        max_password=MAX_PASSWORD,
    )
    page.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=3600,
        path="/login",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return page


@router.get("/login")
def login_page(request: Request) -> Response:
    """The login form (a visitor with a live session goes straight on)."""
    return _form(request)


@router.post("/login")
def log_in(
    request: Request,
    user: Annotated[str, Form(max_length=MAX_USER_NAME)] = "",
    password: Annotated[str, Form(max_length=4 * MAX_PASSWORD)] = "",
    token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=4096)] = "/",
) -> Response:
    """Check the password; on success the session cookie and a 303 to ``next`` (a path
    of this server only); else the form again with what went wrong."""
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), token.encode()):
        return _form(
            request,
            status_code=400,
            problem="The login form had expired. Please try again.",
            user=user,
        )
    try:
        logged_in = password_login(request, user, password)
    except LoginThrottled as error:
        retry = int(error.fields["retry_after"])
        page = _form(
            request,
            status_code=429,
            problem=f"Too many failed logins. Try again in {retry} s.",
            user=user,
        )
        page.headers["Retry-After"] = str(retry)
        return page
    except (LoginFailed, UsageError):
        return _form(request, status_code=401, problem="Wrong user name or password.", user=user)
    going = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(request, going, logged_in)
    going.delete_cookie(LOGIN_COOKIE, path="/login")
    return going


@router.post("/logout")
async def log_out_page(request: Request, who: Viewer = Depends(viewer)) -> Response:
    """End the session (the form's CSRF token required) and go to the login page."""
    await checked_form(request, who)
    await run_in_threadpool(_end_session, request)
    going = RedirectResponse("/login", status_code=303)
    clear_session_cookie(request, going)
    return going


def _end_session(request: Request) -> None:
    with use(request) as ctx:
        log_out(ctx, request.cookies.get(SESSION_COOKIE, "").strip())


__all__ = ["LOGIN_COOKIE", "router"]
