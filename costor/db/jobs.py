"""Queries on the job queue's history (the ``jobs`` table) for reports; the queue's
own transitions (enqueue, claim, finish, recover) are in ``costor.db.queue``."""

from __future__ import annotations

from sqlalchemy import and_, func
from sqlmodel import Session, col, select

from costor.db.models import JobRow

OUTCOMES = ("succeeded", "failed")


def last_outcomes(session: Session) -> dict[tuple[str, str], JobRow]:
    """(kind, target) -> the job of that kind and target that finished last with an
    outcome (succeeded or failed; an interrupted run has none)."""
    latest = (
        select(
            col(JobRow.kind).label("kind"),
            col(JobRow.target).label("target"),
            func.max(JobRow.finished_at).label("at"),
        )
        .where(col(JobRow.state).in_(OUTCOMES))
        .group_by(col(JobRow.kind), col(JobRow.target))
        .subquery()
    )
    rows = session.exec(
        select(JobRow)
        .join(
            latest,
            and_(
                col(JobRow.kind) == latest.c.kind,
                col(JobRow.target) == latest.c.target,
                col(JobRow.finished_at) == latest.c.at,
            ),
        )
        .where(col(JobRow.state).in_(OUTCOMES))
        .order_by(col(JobRow.id))
    ).all()
    return {(job.kind, job.target): job for job in rows}  # ties: the later id wins


def count_by_state(session: Session, *states: str) -> dict[str, int]:
    """How many jobs are in each of ``states`` (0 for none)."""
    rows = session.exec(
        select(JobRow.state, func.count())
        .where(col(JobRow.state).in_(states))
        .group_by(col(JobRow.state))
    ).all()
    counts = dict.fromkeys(states, 0)
    counts.update({state: int(count) for state, count in rows})
    return counts
