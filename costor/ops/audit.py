"""The audit log of the use cases (docs/audit.md): who did what to which target, and how
it ended, appended to the hash-chained log in the state database (costor.db.audit).

Writes are recorded here, in ``ops``, so every edge is audited alike: the CLI (actor
``os:USER@HOST``), the daemon's jobs (``system``) and, later, the server (``user:NAME``
or ``token:ID``, with the request's id and the caller's address). The actor, source and
request id are attributes of the :class:`~costor.ops.context.Context` the edge made.

A use case wraps its work in :func:`audited`, which appends one record when the work
ends: outcome ``ok``, or ``failed`` with the error's type, message and exit code (the
error is raised again). What is recorded, and how each use case names its target, is
the table in docs/audit.md.

When the log cannot be written, the rule is:

- an action that deletes or replaces data, grants access, or reads backed-up content
  (``before=True``: apply, restore, forget, prune, pool repair, reindex, copy,
  upgrade, add-key, remove-key, hostkey accept, force-unlock) first appends a
  ``started`` record and does not start if it cannot: it fails closed with
  :class:`~costor.errors.AuditUnavailable` (exit 1), having done nothing;
- the record of how an action ended is written after the work: if that fails, the work
  stands (a snapshot taken stays, files restored stay restored, the action's own error
  is what is raised) and the failure is logged as an error on stderr (the job's log
  under ``costor serve``), never dropped silently. Backups, checks and self-tests do not
  wait for the log: a broken log must not stop a site's backups.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from costor.config.model import duration_seconds
from costor.db import audit as audit_log
from costor.db.audit import BrokenLink, ChainCheck
from costor.db.session import Engine
from costor.errors import AuditUnavailable, CostorError, UsageError
from costor.store.anchor import Anchor, newest_anchor, read_anchors, write_anchor
from costor.util.clock import utcnow
from costor.util.log import get_logger

if TYPE_CHECKING:
    from costor.ops.context import Context

logger = get_logger("audit")

MESSAGE_LIMIT = 500  # characters of an error's message kept in a record's detail


class Caller(Protocol):
    """Who acts, as the audit log names them: a :class:`~costor.ops.context.Context`
    (or anything else with its audit attributes and a state database)."""

    @property
    def engine(self) -> Engine: ...

    actor: str
    source: str | None
    request_id: str | None


@dataclass
class StateCaller:
    """A caller without a Context: a command on the state database alone (``costor db
    upgrade``)."""

    engine: Engine
    actor: str
    source: str | None = "cli"
    request_id: str | None = None


@contextmanager
def audited(
    caller: Caller,
    action: str,
    target: str,
    *,
    detail: dict[str, Any] | None = None,
    before: bool = False,
    dry_run: bool = False,
) -> Iterator[dict[str, Any]]:
    """Record ``action`` on ``target`` with its outcome. Yields the record's detail,
    which the work may add to (a snapshot's id, counts). ``before``: append a
    ``started`` record first and fail closed if it cannot be written (see the module's
    docstring). ``dry_run``: nothing is recorded (a dry run changes nothing and reads
    no content)."""
    noted = dict(detail or {})
    if dry_run:
        yield noted
        return
    if before:
        try:
            _append(caller, action, target, "started", noted)
        except Exception as error:  # noqa: BLE001  (any failure to write: do nothing)
            raise AuditUnavailable(action=action, target=target, reason=_describe(error)) from error
    try:
        yield noted
    except BaseException as error:
        _record_end(caller, action, target, "failed", {**noted, **failure_detail(error)})
        raise
    _record_end(caller, action, target, "ok", noted)


def failure_detail(error: BaseException) -> dict[str, Any]:
    """What a ``failed`` record says of the error: its type, message and exit code."""
    code = 1
    if isinstance(error, CostorError):
        code = error.exit_code
    elif isinstance(error, KeyboardInterrupt):
        code = 130  # as the CLI exits
    return {"error": type(error).__name__, "message": str(error)[:MESSAGE_LIMIT], "exit_code": code}


def _append(caller: Caller, action: str, target: str, outcome: str, detail: dict[str, Any]) -> None:
    audit_log.append(
        caller.engine,
        actor=caller.actor,
        action=action,
        target=target,
        outcome=outcome,
        source=caller.source,
        request_id=caller.request_id,
        detail=detail,
    )


def _record_end(
    caller: Caller, action: str, target: str, outcome: str, detail: dict[str, Any]
) -> None:
    """The closing record; a failure to write it is logged, not raised (the work is
    done, and its own outcome or error is what the caller must see)."""
    try:
        _append(caller, action, target, outcome, detail)
    except Exception as error:  # noqa: BLE001  (said on stderr: see the module's docstring)
        logger.error(
            f"costor: error: the audit log was not written: {action} {target} {outcome} "
            f"by {caller.actor}: {_describe(error)}"
        )


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:MESSAGE_LIMIT]


# --- costor audit --------------------------------------------------------------------


@dataclass(frozen=True)
class AuditListing:
    """``costor audit``: records, newest first, each as ``--json`` shows it."""

    records: list[dict[str, Any]]

    def to_json(self) -> list[dict[str, Any]]:
        return self.records


def list_records(
    caller: Caller,
    *,
    since: str | None = None,
    until: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    limit: int = 100,
) -> AuditListing:
    """Records matching every filter given. ``since``/``until``: a duration back from
    now (``30m``, ``2d``) or a time (``2026-12-07``, ``2026-12-07T10:00:00Z``)."""
    rows = audit_log.find_records(
        caller.engine,
        since=parse_since(since, "--since") if since else None,
        until=parse_since(until, "--until") if until else None,
        actor=actor,
        action=action,
        target=target,
        limit=limit,
    )
    return AuditListing([audit_log.record_json(row) for row in rows])


def parse_since(text: str, option: str) -> datetime:
    """A duration back from now, or an ISO 8601 time (UTC unless it says otherwise)."""
    text = text.strip()
    try:
        return utcnow() - timedelta(seconds=duration_seconds(text))
    except ValueError:
        pass  # not a duration: a time?
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            message=f"{option}: {text!r} is neither a duration (30m, 2d) nor a time "
            "(2026-12-07 or 2026-12-07T10:00:00Z)"
        ) from None
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def verify_log(ctx: Context) -> ChainCheck:
    """``costor audit verify``: walk the chain; its first broken link, if any. An intact
    chain is then compared with the newest anchor each pool holds
    (costor/store/anchor.py): a chain that ends before an anchored record, or holds
    another hash there, was cut or rewritten by someone who could write the database."""
    check = audit_log.verify(ctx.engine)
    if not check.intact:
        return check
    point = audit_log.chain_point(ctx.engine)
    seen: list[dict[str, Any]] = []
    for name in ctx.pool_names():
        try:
            pool = ctx.open_pool(name, load_index=False)
            anchors = read_anchors(pool, point.chain if point is not None else None)
        except CostorError as error:
            seen.append({"pool": name, "error": str(error)})
            continue
        if not anchors:
            seen.append({"pool": name, "record": None})
            continue
        anchor = anchors[0][1]
        seen.append({"pool": name, "record": anchor.record, "time": _when(anchor.time)})
        broken = _against_anchor(ctx.engine, point, anchor, name)
        if broken is not None:
            return replace(check, broken=broken, anchors=tuple(seen))
    return replace(check, anchors=tuple(seen))


def _against_anchor(
    engine: Engine, point: audit_log.ChainPoint | None, anchor: Anchor, pool: str
) -> BrokenLink | None:
    written = f"pool {pool}'s anchor of {_when(anchor.time)}"
    if point is None:
        return BrokenLink(
            anchor.record,
            "truncated",
            f"the log is empty, but {written} names record {anchor.record}: it was emptied",
        )
    if anchor.record > point.record:
        return BrokenLink(
            anchor.record,
            "truncated",
            f"{written} names record {anchor.record}, but the log ends at record "
            f"{point.record}: records were cut from its end",
        )
    if audit_log.hash_of(engine, anchor.record) != anchor.hash:
        return BrokenLink(
            anchor.record,
            "changed",
            f"record {anchor.record} is not the one {written} names (another hash, or "
            "gone): the log was rewritten from there",
        )
    return None


def anchor_head(ctx: Context, pool_name: str) -> None:
    """Write the chain's head into the pool (costor/store/anchor.py), when it moved since
    the pool's newest anchor; best effort: a failure is logged, the work stands."""
    try:
        point = audit_log.chain_point(ctx.engine)
        if point is None:
            return
        pool = ctx.open_pool(pool_name, load_index=False)
        newest = newest_anchor(pool, point.chain)
        if newest is not None and newest.record >= point.record:
            return
        write_anchor(pool, Anchor(point.chain, point.record, point.hash, time.time()))
    except Exception as error:  # noqa: BLE001  (best effort: the backup, check or prune stands)
        logger.warning("the audit log's head was not anchored in pool %s: %s", pool_name, error)


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
