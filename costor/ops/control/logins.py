"""Logging in with a password: login sessions (the web UI's session cookie), their CSRF
token, how long they last, and the throttling of failed attempts.

**A session** is a secret of 32 random bytes (64 hex digits), the ``costor_session``
cookie's value. The state keeps only ``sha256(secret)`` (as for tokens: a 256-bit random
secret needs no slow hash); its first 12 hex digits are the session's public id (lists,
the audit log, ``costor session revoke ID``). Each session also has a CSRF token (32
random bytes), which every request of the cookie that changes something must send back
in ``X-CSRF-Token`` (compared in constant time). A session has its user's full rights
(:func:`~costor.ops.control.tokens.user_grant` with the ``admin`` scope, lowered to what
the user's roles allow now); a user removed from the inventory, or not applied, loses
its sessions at once, and so does a user that ``costor apply`` changed since the login
(a new password, other groups: the password that opened a session must still be the
user's).

**How long it lasts** (:class:`LoginPolicy`): at most 12 hours from the login, and 1
hour without a request. The row's ``expires_at`` is the idle limit, moved forward by
use (one write a minute per session at most, as tokens note their use, or a quarter
of the idle limit when that is shorter); the absolute
limit is the row's ``created_at`` plus the lifetime. Logging out or ``costor session
revoke`` ends it at once. Ended sessions are deleted 7 days after they ended.

**Passwords** are checked against the user's argon2id hash as applied
(``costor.util.passwords``). A user name that is unknown (or declared but not applied)
costs one verification against a dummy hash of the same parameters, and answers with
the same :class:`~costor.errors.LoginFailed`, so neither the answer nor its time tells
which names exist. A login is three steps (:func:`begin_login`,
:meth:`LoginAttempt.check`, :func:`finish_login`; :func:`log_in` takes them at once) so
that the server can check the password, ~30 ms of argon2id, outside its gate.

**Throttling** (:class:`LoginThrottle`): failed attempts are counted per user name and
per address (an IPv6 address by its /64). After ``user_failures`` failures for a name,
or ``address_failures`` from an address, each further attempt must wait ``delay``,
doubled at each further failure up to ``max_delay``; an attempt that comes too early is
refused with :class:`~costor.errors.LoginThrottled` (HTTP 429 with ``Retry-After``)
before any password is checked. A success clears its user's count (not its address's:
one good account must not reset a guesser's address). A count is forgotten
``forget_after`` after its last failure. The counts live in the server's memory: a
restart forgets them, and several servers on one state count apart.

Every attempt is audited (action ``login``, target and actor ``user:NAME`` as given,
the caller's address): ``ok``, or ``failed`` with why (``unknown user``, ``wrong
password``, ``throttled``) — never the password. A login fails closed: when its ``ok``
record cannot be written, no session is made.

Limits and throttling are :class:`LoginPolicy`'s defaults, or the ``COSTOR_LOGIN_POLICY``
environment variable read once per process (``idle=1h,lifetime=12h,user_failures=3,
address_failures=10,delay=1s,max_delay=15m,forget=1h``, any subset): for tests that
need short delays, and sites that need other limits.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from costor.config.fields import duration_seconds
from costor.db import audit as audit_log
from costor.db import logins as db_logins
from costor.db.models import SessionRow, UserRow
from costor.db.session import session_scope
from costor.errors import (
    AuditUnavailable,
    ConfigError,
    CsrfRefused,
    LoginFailed,
    LoginThrottled,
    NotAuthenticated,
    SessionNotFound,
    UsageError,
)
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.ops.control.tokens import Grant, user_grant
from costor.util.clock import utcnow
from costor.util.log import get_logger
from costor.util.passwords import hash_password, verify_password

logger = get_logger("logins")

POLICY_ENV = "COSTOR_LOGIN_POLICY"
PUBLIC_ID_LENGTH = db_logins.PUBLIC_ID_LENGTH
NOTE_USE_EVERY = timedelta(minutes=1)  # how far the idle limit may lag behind use (at most)
FORGET_ENDED_AFTER = timedelta(days=7)  # ended sessions are listed this long, then deleted
MAX_USER_NAME = 256  # characters: longer names are refused before anything is checked
MAX_PASSWORD = 4096  # bytes (UTF-8)
MAX_TRACKED = 10_000  # throttle counts kept; the stalest go first beyond it
_SECRET = re.compile(r"^[0-9a-f]{64}$")
_PUBLIC_ID = re.compile(rf"^[0-9a-f]{{{PUBLIC_ID_LENGTH}}}$")


@dataclass(frozen=True)
class LoginPolicy:
    """How long sessions last and how failed logins are slowed (module docstring).

    12 hours: a working day with its evening, then a new login; 1 hour idle: a browser
    left open on a shared machine in a school or an office ends soon after it is left.
    3 failures per name: a typo or two pass; 10 per address: several people behind one
    NAT each get theirs wrong once. 1 s doubled up to 15 minutes: after 20 failures a
    guesser gets about 4 tries an hour per name."""

    lifetime: timedelta = timedelta(hours=12)
    idle: timedelta = timedelta(hours=1)
    user_failures: int = 3
    address_failures: int = 10
    delay: float = 1.0  # seconds
    max_delay: float = 900.0
    forget_after: float = 3600.0

    _DURATIONS = ("lifetime", "idle", "delay", "max_delay", "forget")
    _COUNTS = ("user_failures", "address_failures")

    @classmethod
    def parse(cls, text: str) -> LoginPolicy:
        """``key=value`` pairs separated by commas (module docstring); a bad one is a
        :class:`~costor.errors.ConfigError` naming it."""
        policy = cls()
        changes: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            try:
                if not sep:
                    raise ValueError("expected key=value")
                if key in cls._COUNTS:
                    count = int(value)
                    if count < 1:
                        raise ValueError("expected a count of at least 1")
                    changes[key] = count
                elif key in cls._DURATIONS:
                    seconds = duration_seconds(value)
                    if seconds <= 0:
                        raise ValueError("expected a duration above 0")
                    if key in ("lifetime", "idle"):
                        changes[key] = timedelta(seconds=seconds)
                    else:
                        changes["forget_after" if key == "forget" else key] = seconds
                else:
                    known = ", ".join(cls._DURATIONS + cls._COUNTS)
                    raise ValueError(f"unknown key (one of: {known})")
            except ValueError as error:
                raise ConfigError(message=f"{POLICY_ENV}: {item!r}: {error}") from None
        return replace(policy, **changes)


@functools.cache
def configured_policy() -> LoginPolicy:
    """The process's policy: :data:`POLICY_ENV` if set, else the defaults (read once)."""
    return LoginPolicy.parse(os.environ.get(POLICY_ENV, ""))


# --- throttling ------------------------------------------------------------------------


@dataclass
class _Failures:
    count: int
    last: float  # monotonic seconds


@dataclass
class LoginThrottle:
    """Failed logins per user name and per address, in this process's memory
    (thread-safe: the server checks logins on several threads)."""

    policy: LoginPolicy = field(default_factory=configured_policy)
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, _Failures] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, user: str, address: str | None) -> None:
        """An attempt begins: :class:`LoginThrottled` when its user or its address must
        wait; otherwise it is counted as a failure now (so parallel attempts cannot
        all pass the check before one fails), which :meth:`succeeded` takes back."""
        now = self.clock()
        keys = self._keys(user, address)
        with self._lock:
            for key, free in keys:
                wait = self._wait(key, free, now)
                if wait > 0:
                    scope = "for this user" if key.startswith("user:") else "from this address"
                    raise LoginThrottled(scope=scope, retry_after=math.ceil(wait))
            for key, _free in keys:
                counted = self._failures.get(key)
                if counted is None or now - counted.last > self.policy.forget_after:
                    counted = self._failures[key] = _Failures(0, now)
                counted.count += 1
                counted.last = now
            self._bound(now)

    def succeeded(self, user: str, address: str | None) -> None:
        """The attempt begun by :meth:`attempt` succeeded: the user's count is cleared,
        the address's loses this attempt."""
        with self._lock:
            self._failures.pop(f"user:{user}", None)
            counted = self._failures.get(f"address:{_network(address)}")
            if counted is not None:
                counted.count -= 1
                if counted.count <= 0:
                    self._failures.pop(f"address:{_network(address)}", None)

    def _keys(self, user: str, address: str | None) -> list[tuple[str, int]]:
        keys = [(f"user:{user}", self.policy.user_failures)]
        if address is not None:
            keys.append((f"address:{_network(address)}", self.policy.address_failures))
        return keys

    def _wait(self, key: str, free: int, now: float) -> float:
        counted = self._failures.get(key)
        if counted is None or counted.count < free or now - counted.last > self.policy.forget_after:
            return 0.0
        delay = min(self.policy.delay * 2 ** min(counted.count - free, 32), self.policy.max_delay)
        return counted.last + delay - now

    def _bound(self, now: float) -> None:
        if len(self._failures) <= MAX_TRACKED:
            return
        for key in [
            k for k, c in self._failures.items() if now - c.last > self.policy.forget_after
        ]:
            del self._failures[key]
        if len(self._failures) > MAX_TRACKED:
            stalest = sorted(self._failures, key=lambda k: self._failures[k].last)
            for key in stalest[: len(self._failures) - MAX_TRACKED]:
                del self._failures[key]


def _network(address: str | None) -> str:
    """An address as the throttle counts it: IPv4 as is, IPv6 by its /64 (one host
    holds a whole /64)."""
    if address is None:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


# --- sessions --------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    """A session as lists show it (never its secret)."""

    id: str
    user: str
    address: str | None
    created_at: datetime
    expires_at: datetime  # the earlier of the idle and the absolute limits
    revoked_at: datetime | None
    state: str  # "active" | "expired" | "revoked"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "address": self.address,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "state": self.state,
        }


@dataclass(frozen=True)
class SessionList:
    sessions: list[SessionInfo]

    def to_json(self) -> list[dict[str, Any]]:
        return [session.to_json() for session in self.sessions]


@dataclass(frozen=True)
class LoggedIn:
    """A new session: ``secret`` is the cookie's value (shown this once), ``csrf_token``
    what the session's requests that change something must send back."""

    info: SessionInfo
    secret: str
    csrf_token: str
    absolute_expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The login's answer (the secret goes in the cookie, not here)."""
        return {
            "user": self.info.user,
            "session_id": self.info.id,
            "csrf_token": self.csrf_token,
            "expires_at": self.info.expires_at.isoformat(),
            "absolute_expires_at": self.absolute_expires_at.isoformat(),
        }


@dataclass(frozen=True)
class SessionAuth:
    """A request's session, once its cookie is checked."""

    grant: Grant
    info: SessionInfo
    csrf_token: str

    def check_csrf(self, sent: str | None) -> None:
        """:class:`CsrfRefused` unless ``sent`` is this session's CSRF token."""
        if sent is None:
            raise CsrfRefused(
                reason="a request of a session cookie that changes something needs its "
                "X-CSRF-Token header (GET /api/v1/session gives it)"
            )
        if not hmac.compare_digest(
            self.csrf_token.encode(), sent.encode("utf-8", "surrogateescape")
        ):
            raise CsrfRefused(reason="the X-CSRF-Token header is not this session's")


@dataclass
class LoginAttempt:
    """A login between its steps (:func:`begin_login`, :meth:`check`,
    :func:`finish_login`): the server checks the password, ~30 ms of argon2id, outside
    the gate its other requests wait for."""

    user: str
    address: str | None
    known: bool  # the user is declared and applied (else ``encoded`` is the dummy hash)
    encoded: str
    policy: LoginPolicy
    throttle: LoginThrottle
    _password: str = field(repr=False)
    matched: bool | None = None

    def check(self) -> bool:
        """Verify the password (once; needs no context or database)."""
        if self.matched is None:
            self.matched = verify_password(self._password, self.encoded) and self.known
            self._password = ""
        return self.matched


def begin_login(
    ctx: Context,
    *,
    user: str,
    password: str,
    address: str | None,
    throttle: LoginThrottle,
) -> LoginAttempt:
    """Refuse bad input and throttled attempts (audited), and read the user's hash (the
    dummy one for an unknown user)."""
    if not user or len(user) > MAX_USER_NAME or not password:
        raise UsageError(
            message=f"a login needs a user (1-{MAX_USER_NAME} characters) and a password"
        )
    if len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD:
        raise UsageError(message=f"a password has at most {MAX_PASSWORD} bytes")
    dummy = _dummy_hash()  # made before the first attempt, so no attempt pays it alone
    try:
        throttle.attempt(user, address)
    except LoginThrottled as error:
        _record(
            ctx, user, "failed", {"reason": "throttled", "retry_after": error.fields["retry_after"]}
        )
        raise
    with session_scope(ctx.engine, write=False) as session:
        row = session.get(UserRow, user) if user in ctx.inventory.users else None
        encoded = row.password_hash if row is not None else dummy
    return LoginAttempt(
        user=user,
        address=address,
        known=row is not None,
        encoded=encoded,
        policy=throttle.policy,
        throttle=throttle,
        _password=password,
    )


def finish_login(ctx: Context, attempt: LoginAttempt) -> LoggedIn:
    """Audit the attempt's outcome; :class:`LoginFailed`, or a new session. The password
    is checked here unless :meth:`LoginAttempt.check` did it already."""
    user, address, policy = attempt.user, attempt.address, attempt.policy
    if not attempt.check():
        reason = "wrong password" if attempt.known else "unknown user"
        _record(ctx, user, "failed", {"reason": reason})
        raise LoginFailed()
    attempt.throttle.succeeded(user, address)
    secret = secrets.token_hex(32)
    secret_hash = _hash(secret)
    public_id = secret_hash[:PUBLIC_ID_LENGTH]
    csrf_token = secrets.token_urlsafe(32)
    now = utcnow()
    absolute = now + policy.lifetime
    try:  # fail closed: no record, no session
        _append(ctx, user, "ok", {"session": public_id})
    except Exception as error:  # noqa: BLE001  (any failure to write the log)
        raise AuditUnavailable(action="login", target=f"user:{user}", reason=str(error)) from error
    new = SessionRow(
        id=secret_hash,
        user=user,
        csrf=csrf_token,
        address=address,
        created_at=now,
        expires_at=min(now + policy.idle, absolute),
    )
    with session_scope(ctx.engine) as session:
        db_logins.add_session(session, new)
        db_logins.forget_ended_sessions(session, now - FORGET_ENDED_AFTER)
        info = _info(new, now, policy)
    return LoggedIn(info=info, secret=secret, csrf_token=csrf_token, absolute_expires_at=absolute)


def log_in(
    ctx: Context,
    *,
    user: str,
    password: str,
    address: str | None,
    throttle: LoginThrottle,
) -> LoggedIn:
    """Check ``user``'s ``password`` and open a session (module docstring): throttled,
    constant-time for unknown users, audited whatever the outcome. In one step; the
    server takes the steps apart (:class:`LoginAttempt`)."""
    attempt = begin_login(ctx, user=user, password=password, address=address, throttle=throttle)
    return finish_login(ctx, attempt)


def authenticate_session(
    ctx: Context, secret: str | None, *, policy: LoginPolicy | None = None, renew: bool = True
) -> SessionAuth:
    """The session of a cookie's ``secret``: :class:`NotAuthenticated` (401) when it is
    missing, malformed, unknown, logged out, revoked, expired (idle or absolute), or
    its user is gone. Renews the idle limit (at most one write a minute) unless
    ``renew`` is off: a page's own polls and live streams are no sign that someone is
    there, and must not keep a browser left open logged in."""
    policy = policy or configured_policy()
    if not secret:
        raise NotAuthenticated(reason="no session cookie")
    if not _SECRET.match(secret):
        raise NotAuthenticated(reason="malformed session cookie")
    now = utcnow()
    with session_scope(ctx.engine, write=False) as session:
        row = db_logins.session_by_hash(session, _hash(secret))
        if row is None:
            raise NotAuthenticated(reason="unknown session (log in again)")
        info = _info(row, now, policy)
        if info.state == "revoked":
            raise NotAuthenticated(reason="the session has ended (logged out or revoked)")
        if info.state == "expired":
            raise NotAuthenticated(reason="the session has expired (log in again)")
        account = session.get(UserRow, row.user)
        if account is None or row.user not in ctx.inventory.users:
            raise NotAuthenticated(reason="the session's user no longer exists")
        if _aware(account.updated_at) > _aware(row.created_at):
            raise NotAuthenticated(
                reason="the user was changed since this login (a new password?): log in again"
            )
    renewed = min(now + policy.idle, _aware(row.created_at) + policy.lifetime)
    if renew and renewed - info.expires_at > min(NOTE_USE_EVERY, policy.idle / 4):
        with session_scope(ctx.engine) as session:
            db_logins.extend_session(session, row.id, renewed)
        info = replace(info, expires_at=renewed)
    grant = user_grant(ctx, row.user, token_id=f"session:{info.id}", scope="admin")
    return SessionAuth(grant=grant, info=info, csrf_token=row.csrf)


def session_grant(ctx: Context, secret: str | None) -> Grant:
    """What a request with the session cookie ``secret`` may do (401 without a valid
    session): its user's rights as applied now."""
    return authenticate_session(ctx, secret).grant


def log_out(ctx: Context, secret: str | None) -> SessionInfo:
    """End the session of the cookie ``secret`` at once (audited as ``logout``)."""
    found = authenticate_session(ctx, secret)
    assert secret is not None  # authenticate_session refuses a missing one
    target = f"session:{found.info.id}"
    with (
        audited(ctx, "logout", target, detail={"user": found.info.user}),
        session_scope(ctx.engine) as session,
    ):
        row = db_logins.revoke_session(session, _hash(secret), utcnow())
        if row is None:  # deleted meanwhile
            raise SessionNotFound(session_id=found.info.id)
        return _info(row, utcnow(), configured_policy())


def list_sessions(ctx: Context, *, user: str | None = None) -> SessionList:
    """Every session kept (of ``user``), oldest first: active ones, and those that
    ended in the last 7 days."""
    policy, now = configured_policy(), utcnow()
    with session_scope(ctx.engine, write=False) as session:
        rows = db_logins.session_rows(session, user=user)
        return SessionList(sessions=[_info(row, now, policy) for row in rows])


def revoke_session(ctx: Context, *, session_id: str, user: str | None = None) -> SessionInfo:
    """End session ``session_id`` (its public id) at once; revoking twice is fine.
    With ``user``, only that user's session is found: another's answers
    :class:`SessionNotFound` as a missing one does. Audited as ``session.revoke``."""
    session_id = session_id.strip().lower()
    if not _PUBLIC_ID.match(session_id):
        raise SessionNotFound(session_id=session_id[:64])
    with (
        audited(ctx, "session.revoke", f"session:{session_id}") as noted,
        session_scope(ctx.engine) as session,
    ):
        row = db_logins.session_by_public_id(session, session_id)
        if row is None or (user is not None and row.user != user):
            raise SessionNotFound(session_id=session_id)
        noted["user"] = row.user
        row = db_logins.revoke_session(session, row.id, utcnow())
        assert row is not None
        return _info(row, utcnow(), configured_policy())


# --- who asks --------------------------------------------------------------------------


@dataclass(frozen=True)
class CallerInfo:
    """``GET /api/v1/session``: who the caller is and what it may do."""

    grant: Grant
    groups: list[dict[str, Any]]
    session: SessionInfo | None
    csrf_token: str | None

    def to_json(self) -> dict[str, Any]:
        grant = self.grant
        return {
            "user": grant.user,
            "via": "session" if self.session is not None else "token",
            "token_id": None if self.session is not None else grant.token_id,
            "session": self.session.to_json() if self.session is not None else None,
            "csrf_token": self.csrf_token,
            "scope": grant.scope,
            "groups": self.groups,
            "rights": [
                {
                    "permissions": sorted(right.permissions),
                    "clients": list(right.clients) if right.clients is not None else None,
                }
                for right in grant.rights
            ],
            "token_clients": list(grant.clients),
        }


def describe_caller(ctx: Context, grant: Grant, session: SessionAuth | None) -> CallerInfo:
    """Who asks: the user's groups and roles as applied, and the rights the request has
    (the user's, cut to its token's scope and clients)."""
    config = ctx.inventory.users.get(grant.user)
    groups = []
    for name in config.groups if config is not None else ():
        group = ctx.inventory.groups.get(name)
        if group is not None:
            clients = list(group.clients) if group.clients is not None else None
            groups.append({"name": name, "roles": list(group.roles), "clients": clients})
    return CallerInfo(
        grant=grant,
        groups=groups,
        session=session.info if session is not None else None,
        csrf_token=session.csrf_token if session is not None else None,
    )


# --- helpers ---------------------------------------------------------------------------


@functools.cache
def _dummy_hash() -> str:
    """What an unknown user's password is checked against: a hash of a random password
    with the parameters of real ones, so the check costs the same."""
    return hash_password(secrets.token_hex(16))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


def _info(row: SessionRow, now: datetime, policy: LoginPolicy) -> SessionInfo:
    created = _aware(row.created_at)
    expires = min(_aware(row.expires_at), created + policy.lifetime)
    revoked = _aware(row.revoked_at) if row.revoked_at is not None else None
    state = "revoked" if revoked is not None else "expired" if expires <= now else "active"
    return SessionInfo(
        id=row.id[:PUBLIC_ID_LENGTH],
        user=row.user,
        address=row.address,
        created_at=created,
        expires_at=expires,
        revoked_at=revoked,
        state=state,
    )


def _append(ctx: Context, user: str, outcome: str, detail: Mapping[str, Any]) -> None:
    actor = f"user:{user[:MAX_USER_NAME]}"
    audit_log.append(
        ctx.engine,
        actor=actor,
        action="login",
        target=actor,
        outcome=outcome,
        source=ctx.source,
        request_id=ctx.request_id,
        detail=dict(detail),
    )


def _record(ctx: Context, user: str, outcome: str, detail: Mapping[str, Any]) -> None:
    """A failed attempt's record: a log that cannot be written is said on stderr, and
    the attempt fails all the same."""
    try:
        _append(ctx, user, outcome, detail)
    except Exception as error:  # noqa: BLE001  (said on stderr; the login fails anyway)
        logger.error(
            f"costor: error: the audit log was not written: login user:{user} {outcome}: {error}"
        )


__all__ = [
    "POLICY_ENV",
    "CallerInfo",
    "LoggedIn",
    "LoginAttempt",
    "LoginPolicy",
    "LoginThrottle",
    "SessionAuth",
    "SessionInfo",
    "SessionList",
    "authenticate_session",
    "begin_login",
    "configured_policy",
    "describe_caller",
    "finish_login",
    "list_sessions",
    "log_in",
    "log_out",
    "revoke_session",
    "session_grant",
]
