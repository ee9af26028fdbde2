"""Queries on API tokens (the ``api_tokens`` table): add one, find one by its public
id, list, revoke, and note a use. The secret is never here, only its hash
(:mod:`costor.ops.control.tokens` makes and checks it); a revoked or expired row stays,
so lists and the audit log can still name the token."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from costor.db.models import TokenRow, UserRow


def add_token(session: Session, row: TokenRow) -> None:
    session.add(row)


def token_by_id(session: Session, token_id: str) -> TokenRow | None:
    return session.get(TokenRow, token_id)


def token_rows(session: Session, *, user: str | None = None) -> list[TokenRow]:
    """Every token (of ``user``), oldest first."""
    query = select(TokenRow)
    if user is not None:
        query = query.where(TokenRow.user == user)
    return list(session.exec(query.order_by(col(TokenRow.created_at), col(TokenRow.id))))


def revoke_token(session: Session, token_id: str, when: datetime) -> TokenRow | None:
    """Mark the token revoked at ``when`` (kept if already revoked); None if unknown."""
    row = session.get(TokenRow, token_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = when
        session.add(row)
    return row


def note_token_used(session: Session, token_id: str, when: datetime) -> None:
    """``last_used_at``: one statement, so concurrent requests do not conflict."""
    session.execute(update(TokenRow).where(col(TokenRow.id) == token_id).values(last_used_at=when))


def user_applied(session: Session, name: str) -> bool:
    """Whether ``costor apply`` recorded the user (the ``users`` table)."""
    return session.get(UserRow, name) is not None
