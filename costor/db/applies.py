"""The outcome of each ``costor apply`` (the ``applies`` table): written once when an
apply ends, read by the Admin API (``/api/v1/applies``, ``/api/v1/sites``)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from costor.db.models import ApplyRow
from costor.db.session import session_scope


def record_apply(engine: Engine, row: ApplyRow) -> int:
    """Store one apply's outcome; its id."""
    with session_scope(engine) as session:
        session.add(row)
        session.flush()
        assert row.id is not None  # given by the insert
        return row.id


def recent_applies(engine: Engine, *, limit: int = 20) -> list[ApplyRow]:
    """The newest ``limit`` applies, newest first."""
    with session_scope(engine, write=False) as session:
        return list(
            session.exec(select(ApplyRow).order_by(col(ApplyRow.id).desc()).limit(max(0, limit)))
        )
