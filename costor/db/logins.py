"""Queries on login sessions (the ``login_sessions`` table): add one, find one by the
hash of its secret or by its public id, list, extend, revoke, and forget those that
ended long ago. The cookie's secret is never here: a row's ``id`` is ``sha256(secret)``
(:mod:`costor.ops.control.logins` makes and checks it), and the first
:data:`PUBLIC_ID_LENGTH` hex digits of that hash name the session in lists, the audit
log and ``DELETE /api/v1/sessions/{id}``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from costor.db.models import SessionRow

PUBLIC_ID_LENGTH = 12  # hex digits of the row's hash that name it (48 bits)


def add_session(session: Session, row: SessionRow) -> None:
    session.add(row)


def session_by_hash(session: Session, secret_hash: str) -> SessionRow | None:
    return session.get(SessionRow, secret_hash)


def session_by_public_id(session: Session, public_id: str) -> SessionRow | None:
    """The session whose hash starts with ``public_id`` (hex digits only: the caller
    checks it, so it holds no ``LIKE`` wildcard). None when no session, or more than one
    (48 bits make that a curiosity), has it."""
    rows = list(
        session.exec(select(SessionRow).where(col(SessionRow.id).startswith(public_id)).limit(2))
    )
    return rows[0] if len(rows) == 1 else None


def session_rows(
    session: Session, *, user: str | None = None, active_at: datetime | None = None
) -> list[SessionRow]:
    """Sessions (of ``user``; still open at ``active_at``: not revoked, not expired),
    oldest first."""
    query = select(SessionRow)
    if user is not None:
        query = query.where(SessionRow.user == user)
    if active_at is not None:
        query = query.where(
            col(SessionRow.revoked_at).is_(None), col(SessionRow.expires_at) > active_at
        )
    return list(session.exec(query.order_by(col(SessionRow.created_at), col(SessionRow.id))))


def extend_session(session: Session, secret_hash: str, expires_at: datetime) -> None:
    """Move the session's end to ``expires_at`` (its idle limit, renewed by use): one
    statement, so concurrent requests do not conflict; a revoked session stays ended."""
    session.execute(
        update(SessionRow)
        .where(col(SessionRow.id) == secret_hash, col(SessionRow.revoked_at).is_(None))
        .values(expires_at=expires_at)
    )


def revoke_session(session: Session, secret_hash: str, when: datetime) -> SessionRow | None:
    """Mark the session revoked at ``when`` (kept if already revoked); None if unknown."""
    row = session.get(SessionRow, secret_hash)
    if row is not None and row.revoked_at is None:
        row.revoked_at = when
        session.add(row)
    return row


def forget_ended_sessions(session: Session, before: datetime) -> int:
    """Delete the sessions that ended (expired or revoked) before ``before``; how many."""
    result = session.execute(
        delete(SessionRow).where(
            or_(
                col(SessionRow.expires_at) < before,
                col(SessionRow.revoked_at) < before,
            )
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
