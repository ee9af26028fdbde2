"""``/dav/``: a read-only WebDAV view of the snapshots a user may read, so an end user
mounts their backups in a file manager (GNOME Files, Dolphin, Finder, Windows, rclone,
davfs2). The protocol is WsgiDAV's (a WSGI application, run on a2wsgi's thread pool
inside the FastAPI app); this module gives it a provider (what is there) and a domain
controller (who asks), and keeps to the use cases the API's routes call.

What is shown::

    /dav/                                   one folder per client the user may read
    /dav/CLIENT/                            one folder per snapshot, and ``latest``
    /dav/CLIENT/2026-12-07T16-20-01_1a2b3c4d/...   the snapshot's tree

A snapshot's folder is named by its time (UTC, ``:`` written ``-`` so that every file
manager takes it) and the first 8 hex digits of its id (more when two of the client's
snapshots share them); ``latest`` is the client's newest, as ``CLIENT:latest`` resolves
(a rolled-back catalogue refuses it as the API does). Inside: directories and regular
files, with size, modification time and an ``ETag`` naming the content
(:func:`~costor.ops.restore.download.content_id`, the API's). Symbolic links, devices,
FIFOs and sockets are not shown: a link shown as a file would be restored as one, and
following it could leave the snapshot. A name that is not UTF-8 is not shown either
(a URL cannot carry it back through the server); ``costor restore`` and the API's
archives have every entry.

Who may see what, as on the API (costor/server/permissions.py): a client is listed
when the user holds ``snapshots.read`` on it; any other client, snapshot or path is
**404**, exactly as one that does not exist (never 403). Every request checks again:
no listing is cached across requests.

Read-only: PROPFIND, GET, HEAD and OPTIONS; every method that would change something
(PUT, DELETE, MKCOL, MOVE, COPY, PROPPATCH, LOCK, UNLOCK) is refused with **405** and
an ``Allow`` header before anything else is read. A PROPFIND of ``Depth: infinity`` (or
none, which means it) would read whole snapshots: it is refused with **403** and RFC
4918's ``propfind-finite-depth`` (file managers ask Depth 0 or 1).

Logging in: HTTP Basic (a file manager knows nothing else), never the session cookie.
The password is a user's password, checked by the API's login use case with the API's
throttle (``costor.ops.control.logins``: a wrong password is audited as ``login
failed``, too many answer **429** with ``Retry-After``); or an API token (``costor token
create``) given as the password with its user's name, so that scripts mount without a
password. A file manager sends the password with every request, and argon2id costs
~30 ms, so a password that logged in opens a login session (listed by ``costor session
list``, ended by its idle and absolute limits or ``costor session revoke``), which this
process remembers by an HMAC of the name and password under a key of its own: the next
requests with the same pair use the session, the next after it ended log in again.
Basic sends the password as it is, so it is taken over HTTPS, or plain HTTP from this
machine (a loopback peer) only: anything else is **403** without a look at it.

Every file read is the API's download: :func:`~costor.ops.restore.download.open_file`
writes the ``download`` audit record (``started`` before a byte is sent, fail closed;
then ``ok`` or ``failed`` with the bytes sent) with the caller as the audit log names
API callers (``user:NAME`` for a password, ``token:ID`` for a token), the peer's address
and the request's ``X-Request-Id``. Listings are not audited (names and sizes, as the
API's tree route).

Threads: WsgiDAV runs each request on one of a2wsgi's :data:`WORKERS` threads, which
also bounds how many downloads stream at once. Every use of the state and the pools
goes through the server's :class:`~costor.server.gate.Gate` (a lock: one request at a
time inside), and a download is read outside it, as the API's are.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import mimetypes
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi_typing import WSGIApp
from fastapi import FastAPI
from starlette.responses import PlainTextResponse
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from wsgidav.dav_error import (
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_ERROR,
    HTTP_NOT_FOUND,
    DAVError,
    PRECONDITION_CODE_PropfindFiniteDepth,
)
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider, _DAVResource
from wsgidav.dc.base_dc import BaseDomainController
from wsgidav.wsgidav_app import WsgiDAVApp

from costor.errors import (
    AmbiguousSnapshot,
    CostorError,
    LoginFailed,
    LoginThrottled,
    NotAuthenticated,
    PathNotInSnapshot,
    SnapshotNotFound,
    UsageError,
)
from costor.ops.context import Context
from costor.ops.control.logins import (
    LoginThrottle,
    authenticate_session,
    configured_policy,
)
from costor.ops.control.tokens import Grant, authenticate
from costor.ops.restore.browse import list_snapshot
from costor.ops.restore.download import ByteRange, FileDownload, content_id, open_file
from costor.ops.restore.snapshots import list_snapshots
from costor.server.downloads import byte_range
from costor.server.gate import Gate
from costor.server.sessions import logged_in_through
from costor.server.visible import resolve_visible
from costor.store.snapshot import Snapshot
from costor.store.tree import CONTENT_TYPES, DIR, Node
from costor.util.net import is_loopback

logger = logging.getLogger("costor.server")  # errors.py's
PREFIX = "/dav"
REALM = "CoStor"
READ = "snapshots.read"
LATEST = "latest"
SHORT_ID = 8  # hex digits of a snapshot's id in its folder's name (more on a clash)
WORKERS = 10  # a2wsgi threads: WebDAV requests (and streaming downloads) at once
BLOCK = 256 * 1024  # bytes handed to the response at a time (downloads.py PIPE_CHUNK)
MAX_BODY = 1024 * 1024  # bytes of a request's body (a PROPFIND's XML is a few hundred)
MAX_REMEMBERED = 1024  # password logins remembered (the stalest forgotten first)
READ_METHODS = ("OPTIONS", "GET", "HEAD", "PROPFIND")
_TOKEN_SHAPE = re.compile(r"^costor_[0-9a-f]{12}_")  # tokens.py _TOKEN
_GRANT = "costor.dav.grant"
_GONE = "costor.dav.gone"  # in the ASGI scope: a threading.Event, set when the client left
_DOOR = "costor.dav.door"
# XML 1.0 cannot carry these (a PROPFIND answer is XML): shown as U+FFFD in display names.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def mount(app: FastAPI) -> None:
    """Serve the WebDAV view at ``/dav/`` of ``app`` (after ``app.state.gate`` is set).
    The login throttle is the API's (``app.state.login_throttle``, made here if no login
    made it yet), so failures count together whichever door they come through."""
    gate: Gate = app.state.gate
    if getattr(app.state, "login_throttle", None) is None:
        app.state.login_throttle = LoginThrottle(configured_policy())
    door = _Door(gate, app.state)
    config = {
        "provider_mapping": {"/": _Provider()},
        "http_authenticator": {
            "domain_controller": _Logins,
            "accept_basic": True,
            "accept_digest": False,
            "default_to_digest": False,
            "trusted_auth_header": None,
        },
        "simple_dc": {"user_mapping": {}},
        "dir_browser": {"enable": False},
        "lock_storage": None,
        "property_manager": None,
        "mount_path": PREFIX,  # hrefs name /dav/…; PATH_INFO comes without it
        "block_size": BLOCK,
        "verbose": 0,
        "logging": {"enable": False, "enable_loggers": []},
        "add_header_MS_Author_Via": False,
        "hotfixes": {"re_encode_path_info": True, "unquote_path_info": False},
    }
    dav = WsgiDAVApp(config)
    wsgi = cast(WSGIApp, _ReadOnly(dav, door))
    app.mount(PREFIX, _Watched(cast(ASGIApp, WSGIMiddleware(wsgi, workers=WORKERS))))
    # Starlette's pattern for a mount, ``^/dav/(?P<path>.*)$``, would not match a path
    # with a newline in it (a file's name may hold one): ``.`` matches it too here.
    mounted = app.router.routes[-1]
    assert isinstance(mounted, Mount) and mounted.path == PREFIX
    mounted.path_regex = re.compile(mounted.path_regex.pattern, re.DOTALL)


class _Watched:
    """Between the server and a2wsgi: the request's body is read first (at most
    :data:`MAX_BODY`: a PROPFIND's XML; more is **413**), then the connection is watched,
    and a client that leaves sets the request's :data:`_GONE` event, which a download
    checks before each block. Without it a download whose reader left would be read to
    its end (uvicorn drops what is sent to a closed connection, a2wsgi goes on) and
    audited as complete."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                refused = PlainTextResponse(
                    f"a request body of /dav/ has at most {MAX_BODY} bytes\n", status_code=413
                )
                await refused(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        gone = threading.Event()
        left = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            left.set()

        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        watcher = asyncio.create_task(watch())
        try:
            await self.app({**scope, _GONE: gone}, replay, send)
        finally:
            watcher.cancel()


# --- who asks --------------------------------------------------------------------------


class _Door:
    """Basic credentials into a :class:`Grant` (the module's docstring: passwords through
    the login use case and its throttle, remembered as sessions; tokens as tokens)."""

    def __init__(self, gate: Gate, state: Any) -> None:
        self.gate = gate
        self._state = state
        self._key = secrets.token_bytes(32)  # this process's: the remembered logins' HMAC
        self._sessions: OrderedDict[str, str] = OrderedDict()  # HMAC -> session secret
        self._lock = threading.Lock()
        self._logging_in: dict[str, threading.Lock] = {}

    @property
    def throttle(self) -> LoginThrottle:
        throttle = self._state.login_throttle
        assert isinstance(throttle, LoginThrottle)
        return throttle

    def grant(self, user: str, password: str, environ: dict[str, Any]) -> Grant | None:
        """The grant of ``user`` with ``password`` (a password or a token of that user),
        None when they do not match; :class:`LoginThrottled` when the throttle says
        wait."""
        if _TOKEN_SHAPE.match(password):
            with self.gate.use(**_asking(environ, None)) as ctx:
                try:
                    found = authenticate(ctx, password)
                except NotAuthenticated:
                    found = None
            if found is not None:
                return found if found.user == user else None
            # not a token after all: a password that looks like one goes on below
        key = hmac.new(
            self._key,
            user.encode("utf-8", "surrogateescape")
            + b"\0"
            + password.encode("utf-8", "surrogateescape"),
            hashlib.sha256,
        ).hexdigest()
        remembered = self._remembered(key, environ)
        if remembered is not None:
            return remembered
        with self._lock:
            one_at_a_time = self._logging_in.setdefault(key, threading.Lock())
        # A file manager's parallel first requests: one logs in, the others then find
        # its session (one that comes just as the lock is dropped may log in again).
        with one_at_a_time:
            remembered = self._remembered(key, environ)
            if remembered is not None:
                return remembered
            try:
                return self._log_in(key, user, password, environ)
            finally:
                with self._lock:
                    self._logging_in.pop(key, None)

    def _remembered(self, key: str, environ: dict[str, Any]) -> Grant | None:
        with self._lock:
            secret = self._sessions.get(key)
            if secret is not None:
                self._sessions.move_to_end(key)
        if secret is None:
            return None
        with self.gate.use(**_asking(environ, None)) as ctx:
            try:
                return authenticate_session(ctx, secret).grant
            except NotAuthenticated:  # ended, revoked, or the user changed: log in again
                with self._lock:
                    self._sessions.pop(key, None)
                return None

    def _log_in(self, key: str, user: str, password: str, environ: dict[str, Any]) -> Grant | None:
        address = environ.get("REMOTE_ADDR")
        who = _asking(environ, None)
        try:
            logged_in = logged_in_through(
                self.gate,
                who,
                user=user,
                password=password,
                address=address,
                throttle=self.throttle,
            )
            with self.gate.use(**who) as ctx:
                grant = authenticate_session(ctx, logged_in.secret).grant
        except (LoginFailed, UsageError):
            return None
        with self._lock:
            self._sessions[key] = logged_in.secret
            while len(self._sessions) > MAX_REMEMBERED:
                self._sessions.popitem(last=False)
        return grant


class _Logins(BaseDomainController):
    """WsgiDAV's domain controller: one realm, Basic only, every request authenticated
    (an ``OPTIONS`` too: what a server offers is not for strangers)."""

    def get_domain_realm(self, path_info: str, environ: dict[str, Any] | None) -> str:
        return REALM

    def require_authentication(self, realm: str, environ: dict[str, Any] | None) -> bool:
        return True

    def supports_http_digest_auth(self) -> bool:
        return False  # Digest would need the password itself (the state keeps a hash)

    def basic_auth_user(
        self, realm: str, user_name: str, password: str, environ: dict[str, Any]
    ) -> bool:
        door: _Door = environ[_DOOR]
        if environ.get("wsgi.url_scheme") != "https" and not is_loopback(
            environ.get("REMOTE_ADDR", "")
        ):
            raise DAVError(
                HTTP_FORBIDDEN,
                "Basic authentication over plain HTTP is taken from this machine only: use https",
            )
        try:
            grant = door.grant(user_name, password, environ)
        except LoginThrottled as error:
            seconds = str(error.fields["retry_after"])
            raise DAVError(429, str(error), add_headers=[("Retry-After", seconds)]) from None
        except Exception as error:  # noqa: BLE001  (as WebDAV's answer: _as_dav_error)
            raise _as_dav_error(error, environ) from None
        if grant is None:
            return False
        environ[_GRANT] = grant
        return True


def _asking(environ: dict[str, Any], grant: Grant | None) -> dict[str, Any]:
    """Who asks, as the audit log names API callers (permissions.py ``asking``)."""
    actor = "anonymous"
    if grant is not None:
        is_session = grant.token_id.startswith("session:")
        actor = f"user:{grant.user}" if is_session else f"token:{grant.token_id}"
    scope = environ.get("asgi.scope") or {}
    return {
        "actor": actor,
        "source": environ.get("REMOTE_ADDR"),
        "request_id": (scope.get("state") or {}).get("request_id"),
    }


class _ReadOnly:
    """In front of WsgiDAV: a method that would change something is refused (405, with
    ``Allow``) before any credential or path is looked at; a malformed ``Authorization``
    header is a 401 (WsgiDAV's own parser would fail on it); the door is handed on.

    A response that fails after it started (damaged data met midway through a file) is
    cut: WsgiDAV's error printer would call ``start_response`` again and append an error
    page to the file's bytes, which a2wsgi lets through (PEP 3333 says that second call
    must raise: here it does), so the client sees a broken transfer, never a
    complete-looking one."""

    def __init__(self, dav: WsgiDAVApp, door: _Door) -> None:
        self.dav = dav
        self.door = door

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("REQUEST_METHOD", "")
        if method not in READ_METHODS:
            body = f"{method} is not allowed: /dav/ is read-only\n".encode()
            start_response(
                "405 Method Not Allowed",
                [
                    ("Allow", ", ".join(READ_METHODS)),
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        header = environ.get("HTTP_AUTHORIZATION")
        if header is not None and not _well_formed(header):
            del environ["HTTP_AUTHORIZATION"]  # WsgiDAV then asks for credentials: 401
        environ[_DOOR] = self.door
        started: list[str] = []

        def start_once(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if started:
                raise ConnectionAbortedError(
                    f"the response failed after it started ({started[0]}): {status}"
                )
            started.append(status)
            return start_response(status, _confined(method, status, headers), exc_info)

        return self.dav(environ, start_once)


def _confined(method: str, status: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every answer of ``/dav/`` as something a browser never runs: a snapshot's file
    is whatever a backed-up machine held (an ``.html`` or ``.svg`` of anyone's), and it
    comes from the web UI's own origin. So no page of it may run a script or be sniffed
    into one (a sandbox CSP, ``nosniff``), and a file's GET is a download
    (``Content-Disposition: attachment``), as the API's downloads are."""
    names = {name.lower() for name, _value in headers}
    confined = [*headers]
    if "content-security-policy" not in names:
        confined.append(("Content-Security-Policy", "sandbox; default-src 'none'"))
    if "x-content-type-options" not in names:
        confined.append(("X-Content-Type-Options", "nosniff"))
    if method == "GET" and status[:3] in ("200", "206") and "content-disposition" not in names:
        confined.append(("Content-Disposition", "attachment"))
    return confined


def _well_formed(header: str) -> bool:
    """A header WsgiDAV's Basic parser takes without failing: ``Basic`` and base64 of
    UTF-8 ``user:password``; any other scheme is for WsgiDAV to refuse."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return True
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:
        return False
    return ":" in decoded


# --- what is there ---------------------------------------------------------------------


class _Provider(DAVProvider):
    """The tree under ``/dav/`` for the request's grant (module docstring). Each
    request resolves its path again; a path the caller may not see is None (404)."""

    def is_readonly(self) -> bool:
        return True

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> _DAVResource | None:
        view = _View.of(environ)
        depth = environ.get("HTTP_DEPTH", "infinity").strip().lower()  # RFC 4918 §9.1
        if environ.get("REQUEST_METHOD") == "PROPFIND" and depth == "infinity":
            raise DAVError(
                HTTP_FORBIDDEN,
                "PROPFIND with Depth: infinity would read whole snapshots: ask Depth 1",
                err_condition=PRECONDITION_CODE_PropfindFiniteDepth,
            )
        parts = [part for part in path.split("/") if part]
        if ".." in parts:
            return None
        if not parts:
            return _Root("/", environ, view)
        client = parts[0]
        with view.context() as ctx:
            if not view.grant.may(READ, client):
                return None
            snapshots = _named_snapshots(ctx, client)
            if len(parts) == 1:
                if not snapshots and client not in ctx.inventory.clients:
                    return None
                return _Client(_join(parts), environ, view, client, snapshots)
            found = _find(ctx, view.grant, client, parts[1], snapshots)
            if found is None:
                return None
            pool, snapshot = found
            inside = "/" + "/".join(parts[2:])
            if len(parts) == 2:
                return _Directory(_join(parts), environ, view, pool, snapshot, inside, None)
            try:
                listing = list_snapshot(ctx, snapshot=snapshot.id, pool=pool, path=inside, depth=0)
            except PathNotInSnapshot:
                return None
        node = listing.entries[0][1] if listing.entries else None
        if node is None or not _shown(node):
            return None
        if node.type == DIR:
            return _Directory(_join(parts), environ, view, pool, snapshot, inside, node)
        return _File(_join(parts), environ, view, pool, snapshot, inside, node)


@dataclass(frozen=True)
class _View:
    """The request's grant and the gate, for the resources of one request."""

    grant: Grant
    environ: dict[str, Any]
    gate: Gate

    @classmethod
    def of(cls, environ: dict[str, Any]) -> _View:
        grant = environ.get(_GRANT)
        if not isinstance(grant, Grant):  # the domain controller ran, or no request came
            raise DAVError(401)
        return cls(grant=grant, environ=environ, gate=environ[_DOOR].gate)

    @contextmanager
    def context(self) -> Iterator[Context]:
        """The gate's context, naming who asks; the use cases' errors as WebDAV's."""
        try:
            with self.gate.use(**_asking(self.environ, self.grant)) as ctx:
                yield ctx
        except Exception as error:  # noqa: BLE001  (as WebDAV's answer: _as_dav_error)
            raise _as_dav_error(error, self.environ) from None


def _as_dav_error(error: Exception, environ: dict[str, Any]) -> DAVError:
    """A use case's error as WebDAV answers it, as costor/server/errors.py maps them for
    the API: a :class:`CostorError` with its class's status and message (a snapshot or
    path that is not there: 404 without one); anything else a 500 that says no more
    (WsgiDAV's page would show the exception), its traceback in the server's log."""
    if isinstance(error, DAVError):
        return error
    if isinstance(error, (SnapshotNotFound, PathNotInSnapshot, AmbiguousSnapshot)):
        return DAVError(HTTP_NOT_FOUND)
    if isinstance(error, CostorError):
        return DAVError(error.http_status, str(error))
    request_id = _asking(environ, None)["request_id"]
    logger.error(f"request {request_id}: unexpected error in /dav/", exc_info=error)
    return DAVError(HTTP_INTERNAL_ERROR, "internal error (see the server's log)")


def _join(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def _named_snapshots(ctx: Context, client: str) -> dict[str, tuple[str, Snapshot]]:
    """The client's snapshots by folder name, oldest first (module docstring)."""
    found = [(pool, s) for pool, s in list_snapshots(ctx, client=client) if s.client == client]
    return _folder_names(found)


def _folder_names(found: list[tuple[str, Snapshot]]) -> dict[str, tuple[str, Snapshot]]:
    """One client's (pool, snapshot) pairs, oldest first, by folder name: the time and
    the shortest id prefix (8 hex digits or more) that tells them apart."""
    length = SHORT_ID
    while length < 64:
        prefixes = [s.id[:length] for _p, s in found]
        if len(set(prefixes)) == len(prefixes):
            break
        length *= 2
    return {f"{_folder_time(s.time)}_{s.id[:length]}": (pool, s) for pool, s in found}


def _folder_time(rfc3339: str) -> str:
    """``2026-12-07T16:20:01.123456+00:00`` → ``2026-12-07T16-20-01`` (UTC)."""
    when = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return when.strftime("%Y-%m-%dT%H-%M-%S")


def _find(
    ctx: Context,
    grant: Grant,
    client: str,
    name: str,
    snapshots: dict[str, tuple[str, Snapshot]],
) -> tuple[str, Snapshot] | None:
    """The (pool, snapshot) of folder ``name``, checked as the API checks a reference
    (:func:`resolve_visible`); None for a name that is none of the client's."""
    if name == LATEST:
        if not snapshots:
            return None
        return resolve_visible(ctx, grant, f"{client}:{LATEST}", READ)
    chosen = snapshots.get(name)
    if chosen is None:
        return None
    return resolve_visible(ctx, grant, chosen[1].id, READ)


def _shown(node: Node) -> bool:
    """Directories, regular files and images (served as files) whose names are UTF-8
    (module docstring)."""
    if node.type != DIR and node.type not in CONTENT_TYPES:
        return False
    try:
        node.name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _seconds(ns: int) -> float:
    return ns / 1e9


class _Root(DAVCollection):
    """``/dav/``: the clients whose snapshots the user may read."""

    def __init__(self, path: str, environ: dict[str, Any], view: _View) -> None:
        super().__init__(path, environ)
        self.view = view

    def get_display_name(self) -> str:
        return REALM

    def get_member_names(self) -> list[str]:
        with self.view.context() as ctx:
            declared = set(ctx.inventory.clients)
            backed_up = {s.client for _p, s in list_snapshots(ctx)}
        return sorted(c for c in declared | backed_up if self.view.grant.may(READ, c))

    def get_member_list(self) -> list[_DAVResource]:
        """The clients from one listing of the site's snapshots (WsgiDAV's default would
        look each client up again: a listing of the pools per client)."""
        with self.view.context() as ctx:
            declared = set(ctx.inventory.clients)
            by_client: dict[str, list[tuple[str, Snapshot]]] = {}
            for pool, snapshot in list_snapshots(ctx):
                by_client.setdefault(snapshot.client, []).append((pool, snapshot))
        names = sorted(c for c in declared | set(by_client) if self.view.grant.may(READ, c))
        return [
            _Client(_join([c]), self.environ, self.view, c, _folder_names(by_client.get(c, [])))
            for c in names
        ]

    def get_member(self, name: str) -> _DAVResource | None:
        return self.provider.get_resource_inst(_join([name]), self.environ)


class _Client(DAVCollection):
    """``/dav/CLIENT/``: its snapshots, and ``latest``."""

    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        view: _View,
        client: str,
        snapshots: dict[str, tuple[str, Snapshot]],
    ) -> None:
        super().__init__(path, environ)
        self.view, self.client, self.snapshots = view, client, snapshots

    def get_display_name(self) -> str:
        return _displayed(self.client)

    def get_last_modified(self) -> float | None:
        newest = list(self.snapshots.values())[-1:]
        return _epoch(newest[0][1].time) if newest else None

    def get_member_names(self) -> list[str]:
        return [*self.snapshots, LATEST] if self.snapshots else []

    def get_member_list(self) -> list[_DAVResource]:
        """The snapshots this folder was made with (the client's, listed once, read on
        it granted), and ``latest`` looked up once. WsgiDAV's default would look each
        snapshot up again by name: a listing of the pools for each snapshot."""
        base = self.path.rstrip("/")
        members: list[_DAVResource] = [
            _Directory(f"{base}/{name}", self.environ, self.view, pool, snapshot, "/", None)
            for name, (pool, snapshot) in self.snapshots.items()
        ]
        if self.snapshots:
            latest = self.get_member(LATEST)
            if latest is not None:
                members.append(latest)
        return members

    def get_member(self, name: str) -> _DAVResource | None:
        return self.provider.get_resource_inst(_join([self.client, name]), self.environ)


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _displayed(name: str) -> str:
    """A name as XML can carry it (its href, percent-encoded, is exact)."""
    return _NOT_XML.sub("\ufffd", name)


class _Directory(DAVCollection):
    """A directory of a snapshot (its root: ``node`` None); its members come from one
    tree read (``depth=1``), never the snapshot's whole tree."""

    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        view: _View,
        pool: str,
        snapshot: Snapshot,
        inside: str,
        node: Node | None,
    ) -> None:
        super().__init__(path, environ)
        self.view, self.pool, self.snapshot = view, pool, snapshot
        self.inside, self.node = inside, node

    def get_display_name(self) -> str:
        return _displayed(self.path.rstrip("/").rsplit("/", 1)[-1])

    def get_last_modified(self) -> float | None:
        if self.node is None:
            return _epoch(self.snapshot.time)
        return _seconds(self.node.mtime_ns)

    def get_etag(self) -> str | None:
        return None

    def _children(self) -> list[tuple[str, Node]]:
        with self.view.context() as ctx:
            listing = list_snapshot(
                ctx, snapshot=self.snapshot.id, pool=self.pool, path=self.inside, depth=1
            )
        children = []
        for _path, node in listing.entries:
            if node is self.node or (self.node is not None and _path == listing.path):
                continue
            if _shown(node):
                children.append((node.name.decode("utf-8"), node))
        return children

    def get_member_names(self) -> list[str]:
        return [name for name, _node in self._children()]

    def get_member_list(self) -> list[_DAVResource]:
        members: list[_DAVResource] = []
        base = self.path.rstrip("/")
        inside = self.inside.rstrip("/")
        for name, node in self._children():
            kind = _Directory if node.type == DIR else _File
            members.append(
                kind(
                    f"{base}/{name}",
                    self.environ,
                    self.view,
                    self.pool,
                    self.snapshot,
                    f"{inside}/{name}",
                    node,
                )
            )
        return members

    def get_member(self, name: str) -> _DAVResource | None:
        return self.provider.get_resource_inst(f"{self.path.rstrip('/')}/{name}", self.environ)


class _File(DAVNonCollection):
    """A regular file of a snapshot; its content is the API's file download."""

    def __init__(
        self,
        path: str,
        environ: dict[str, Any],
        view: _View,
        pool: str,
        snapshot: Snapshot,
        inside: str,
        node: Node,
    ) -> None:
        super().__init__(path, environ)
        self.view, self.pool, self.snapshot = view, pool, snapshot
        self.inside, self.node = inside, node

    def get_display_name(self) -> str:
        return _displayed(self.node.name.decode("utf-8"))

    def get_content_length(self) -> int:
        return self.node.size

    def get_content_type(self) -> str:
        guessed, _encoding = mimetypes.guess_type(self.node.name.decode("utf-8"))
        return guessed or "application/octet-stream"

    def get_last_modified(self) -> float:
        return _seconds(self.node.mtime_ns)

    def get_etag(self) -> str:
        return content_id(self.node)

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def get_content(self) -> _Content:
        return _Content(self)


class _Content:
    """The file object WsgiDAV reads a GET from: ``seek`` (to a range's start), then
    ``read`` until it has the bytes it wants, then ``close``. The download is opened at
    the first read (:func:`open_file`: its audit record, ``started``, before a byte goes
    out), and closed inside the gate (its record of how it ended: ``ok``, or ``failed``
    when fewer bytes went out than it was opened for)."""

    def __init__(self, file: _File) -> None:
        self._file = file
        self._start = 0
        self._download: FileDownload | None = None
        self._chunks: Iterator[bytes] | None = None
        self._buffer = b""
        self._error: BaseException | None = None

    def seek(self, position: int) -> None:
        if self._download is not None:
            raise OSError("seek after the first read")
        self._start = position

    def read(self, size: int = -1) -> bytes:
        if self._chunks is None:
            self._chunks = self._open().chunks()
        gone = (self._file.environ.get("asgi.scope") or {}).get(_GONE)
        if gone is not None and gone.is_set():
            # The end, as far as WsgiDAV knows: no one is left to answer, and an error
            # would only put a traceback in the server's log. close() records why.
            self._error = ConnectionAbortedError("the client disconnected")
            return b""
        try:
            while size < 0 or len(self._buffer) < size:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer += chunk
        except Exception as error:
            self._error = error
            raise _as_dav_error(error, self._file.environ) from None
        except BaseException as error:
            self._error = error
            raise
        if size < 0:
            size = len(self._buffer)
        piece, self._buffer = self._buffer[:size], self._buffer[size:]
        return piece

    def _open(self) -> FileDownload:
        """The API's download of the file, from where WsgiDAV seeked to (to a range's
        end when the request asked for one that starts there)."""
        file = self._file
        wanted: ByteRange | None = None
        asked = byte_range(file.environ.get("HTTP_RANGE"))
        if asked is not None and asked.first == self._start:  # bytes=0-99 included
            wanted = ByteRange(first=self._start, last=asked.last)
        elif self._start:
            wanted = ByteRange(first=self._start, last=None)
        with file.view.context() as ctx:
            self._download = open_file(
                ctx, snapshot=file.snapshot.id, path=file.inside, byte_range=wanted
            )
        return self._download

    def close(self) -> None:
        download, self._download = self._download, None
        if download is None:
            return
        failure = self._error
        if (
            failure is None
            and download.bytes_sent - len(self._buffer) < download.stop - download.start
        ):
            failure = ConnectionAbortedError("the client disconnected")
        with self._file.view.gate.use(**_asking(self._file.environ, self._file.view.grant)):
            download.close(failure)


__all__ = ["PREFIX", "mount"]
