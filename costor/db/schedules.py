"""Queries on the recurring jobs (the ``schedules`` table), kept in step with the
applied inventory by ``costor apply``; reading what they may target (``clients``,
``pools``) and cancelling the queued runs (``jobs``) of a removed schedule. Queuing a
schedule's due runs is the queue's (``costor.db.queue.enqueue_due``)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select, update

from costor.db.models import ClientRow, JobRow, PoolRow, ScheduleRow


def schedule_targets(session: Session) -> tuple[set[str], set[str]]:
    """(clients, pools) a schedule may target: those the state has (a client or pool
    whose creation failed has none), clients not retired."""
    clients = set(
        session.exec(select(ClientRow.name).where(col(ClientRow.retired_at).is_(None))).all()
    )
    pools = set(session.exec(select(PoolRow.name)).all())
    return clients, pools


def schedules_by_key(session: Session) -> dict[str, ScheduleRow]:
    return {row.key: row for row in session.exec(select(ScheduleRow)).all()}


def cancel_queued_runs(session: Session, keys: Collection[str], now: datetime) -> None:
    """Cancel the queued jobs of the schedules ``keys`` (removed)."""
    session.execute(
        update(JobRow)
        .where(col(JobRow.schedule_key).in_(list(keys)), col(JobRow.state) == "queued")
        .values(state="cancelled", finished_at=now, error="its schedule was removed")
    )


def count_schedules(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(ScheduleRow)).one())
