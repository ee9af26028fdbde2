"""What every page of the web UI shares: who is looking (:class:`Viewer`, from the
session cookie), the templates, rendering, CSRF on forms, error pages and the headers
every page carries.

A page's route takes ``viewer: Viewer = Depends(viewer)``; without a valid session the
browser is sent to ``/login?next=<the page>`` (303), never shown a JSON error. The use
cases run through :func:`costor.server.permissions.use`, as the API's do, so the audit
log names the user (``user:NAME``) and the request id.

A route that changes something is a POST whose form carries ``csrf`` (or whose htmx
request carries ``X-CSRF-Token``: ``base.html`` sets it on every htmx request); it calls
:func:`checked_form` first. The session cookie is ``SameSite=Strict`` as well, so
another site's form never arrives with it; the token is the second lock.

Templates are autoescaped (every name from a snapshot, a host or a request is
untrusted); pages carry a Content-Security-Policy that allows scripts and styles from
this server only, so nothing a snapshot's file name holds can run: no inline script or
style attribute in a template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from costor import __version__
from costor.errors import CostorError, NotAuthenticated
from costor.ops.control.logins import SessionAuth, authenticate_session
from costor.ops.control.tokens import Grant
from costor.server.permissions import CSRF_HEADER, SESSION_COOKIE, asking

PACKAGE = Path(__file__).resolve().parents[2]  # costor/
TEMPLATES = PACKAGE / "templates" / "ui"
STATIC = PACKAGE / "server" / "static"
POLL_HEADER = "X-Costor-Poll"  # sent by what a page polls by itself (hx-headers)
# Paths that are not pages: their errors stay JSON (the API's shape) or WebDAV's own.
NOT_PAGES = ("/api/", "/dav", "/static/", "/metrics", "/healthz")

templates = Jinja2Templates(directory=str(TEMPLATES))


@dataclass(frozen=True)
class Viewer:
    """The logged-in user a page is for: its grant (what it may do, on which clients)
    and its session (the CSRF token its forms carry)."""

    grant: Grant
    session: SessionAuth

    @property
    def user(self) -> str:
        return self.grant.user

    @property
    def csrf(self) -> str:
        return self.session.csrf_token

    def may(self, permission: str, client: str | None = None) -> bool:
        """Whether the permission is held on ``client`` (None: on every client)."""
        return self.grant.may(permission, client)

    def may_somewhere(self, permission: str) -> bool:
        """Whether the permission is held on some client (a menu item, a list page)."""
        return self.grant.may_somewhere(permission)


def viewer(request: Request) -> Viewer:
    """The dependency of every page: the session's viewer, else ``NotAuthenticated``
    (:func:`error_page` makes it a 303 to the login page). A bearer token is not a
    page's login: pages are for browsers."""
    cookie = request.cookies.get(SESSION_COOKIE, "").strip()
    if not cookie:
        raise NotAuthenticated(reason="no session")
    # A block that refreshes itself says so (POLL_HEADER): it keeps no session alive.
    renew = request.headers.get(POLL_HEADER) is None
    with request.app.state.gate.use(**asking(request, None)) as ctx:
        session = authenticate_session(ctx, cookie, renew=renew)
    request.state.grant = session.grant
    request.state.login = session
    return Viewer(grant=session.grant, session=session)


async def checked_form(request: Request, who: Viewer) -> Mapping[str, Any]:
    """The POSTed form, once its CSRF token (the form's ``csrf`` field, or the
    ``X-CSRF-Token`` header htmx sends) matches the session's (else 403)."""
    form = await request.form()
    sent = request.headers.get(CSRF_HEADER) or form.get("csrf")
    who.session.check_csrf(sent if isinstance(sent, str) else None)
    return form


def render(
    request: Request,
    template: str,
    who: Viewer | None,
    *,
    status_code: int = 200,
    title: str = "",
    **context: Any,
) -> HTMLResponse:
    """``template`` filled with ``context``, the viewer and what the layout needs."""
    return templates.TemplateResponse(
        request,
        template,
        {"viewer": who, "title": title, "version": __version__, **context},
        status_code=status_code,
    )


def is_page(request: Request) -> bool:
    """Whether ``request`` asked for a page (an error is shown as a page then)."""
    path = request.url.path
    return not any(path == p.rstrip("/") or path.startswith(p) for p in NOT_PAGES)


def login_url(request: Request) -> str:
    """The login page, with this page to come back to."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?" + urlencode({"next": target})


def error_page(request: Request, error: Exception) -> Response | None:
    """An error on a page as a page (None for a request that is not for a page: its
    error stays the API's JSON): the login for a missing or ended session; a 404
    page for what is not there or not the viewer's (the same page either way); the
    error's message otherwise (a 500 says no more than that it happened)."""
    if not is_page(request):
        return None
    if isinstance(error, NotAuthenticated):
        if request.headers.get("HX-Request") == "true":
            # A fragment htmx asked for (a poll, a live block) after the session ended:
            # the whole browser goes to the login page, and back to the page it showed.
            shown = urlsplit(request.headers.get("HX-Current-URL", ""))
            back = safe_next(shown.path + (f"?{shown.query}" if shown.query else ""))
            return Response(
                status_code=204, headers={"HX-Redirect": "/login?" + urlencode({"next": back})}
            )
        if request.method == "GET":
            return RedirectResponse(login_url(request), status_code=303)
        return RedirectResponse("/login", status_code=303)
    if isinstance(error, CostorError):
        status, message = error.http_status, str(error)
    else:
        status = getattr(error, "status_code", 500)
        message = "internal error (see the server's log)" if status == 500 else str(error)
    if status == 404:
        message = "There is nothing here, or nothing you may see."
    who = None
    login = getattr(request.state, "login", None)
    if isinstance(login, SessionAuth):
        who = Viewer(grant=login.grant, session=login)
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 429: "Too many tries"}
    return render(
        request,
        "error.html",
        who,
        status_code=status,
        title=titles.get(status, "Something went wrong"),
        status=status,
        message=message,
        request_id=getattr(request.state, "request_id", None),
    )


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (never ``//host`` or
    ``https://…``: a login link must not send anyone elsewhere)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def url_path(*parts: str) -> str:
    """A URL path from untrusted parts (a client's name, a snapshot id), each quoted."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


def ago(when: datetime | str | None, now: datetime | None = None) -> str:
    """``when`` as people say it: "3 min ago", "2 h ago", "5 days ago" ("never")."""
    if when is None:
        return "never"
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 0:
        return "just now"
    for size, unit in ((86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= size * (2 if unit == "days" else 1):
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def size(count: int | float | None) -> str:
    """Bytes for people: 1.5 GiB, 320 KiB."""
    if count is None:
        return "–"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def duration(seconds: float | None) -> str:
    """Seconds for people: "45 s", "3 min 20 s", "2 h 5 min"."""
    if seconds is None:
        return "–"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


templates.env.filters.update(ago=ago, size=size, duration=duration)
templates.env.globals.update(url_path=url_path)

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class PageHeaders:
    """Every page's response says: no framing, no sniffing, scripts and styles from
    this server only, no referrer to other sites (a page's URL holds paths of backed-up
    files), and no caching of what a user was shown."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_page(Request(scope)):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", _CSP)
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "same-origin")
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)


__all__ = [
    "STATIC",
    "POLL_HEADER",
    "PageHeaders",
    "Viewer",
    "ago",
    "checked_form",
    "duration",
    "error_page",
    "is_page",
    "render",
    "safe_next",
    "size",
    "templates",
    "url_path",
    "viewer",
]
