"""Queries on the snapshot catalogue (the ``snapshots`` table): the state's index of
what the pools hold, rebuilt from them by ``costor pool reindex``."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from costor.db.models import SnapshotRow


def latest_snapshot_times(session: Session) -> dict[str, str]:
    """Client name (as each snapshot was taken) -> the time of its newest snapshot, in
    any pool. Times are RFC 3339 UTC with microseconds, so the greatest string is the
    latest time."""
    rows = session.exec(
        select(SnapshotRow.client, func.max(SnapshotRow.time)).group_by(col(SnapshotRow.client))
    ).all()
    return {client: time for client, time in rows if time is not None}
