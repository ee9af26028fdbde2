"""A job's log (the ``job_log_lines`` table): the lines its run logged, numbered from 1
per job, appended by the process running it and read back by sequence number, so a
reader polling with the last number it saw gets only the new lines.

Bounded: a job keeps its newest :data:`MAX_LINES` lines, each cut to
:data:`MAX_LINE_CHARS` characters (at most about 2 MB of text per job; a backup logs
tens of lines). Older lines are deleted as new ones arrive; their numbers are not
reused, so a reader sees from ``first_seq`` that the beginning was dropped.

One process writes a job's log at a time (the one running it), so numbering by the
highest number stored is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import col, delete, select

from costor.db.models import JobLogLineRow
from costor.db.session import session_scope

MAX_LINES = 2000  # kept per job: the newest
MAX_LINE_CHARS = 1000  # a longer line is cut, ending in "…"
MAX_READ = 1000  # lines one read returns at most
MAX_SEQ = 2**31 - 1  # line numbers are INTEGER columns (32-bit on PostgreSQL): none is larger


@dataclass(frozen=True)
class LogLine:
    """One line to append: when it was logged, its level name, its text."""

    time: datetime
    level: str
    text: str


def append_lines(engine: Engine, job_id: int, lines: list[LogLine]) -> int:
    """Append ``lines`` to job ``job_id``'s log, numbered after its last one, and drop
    what falls out of the newest :data:`MAX_LINES`. The last number written (0: none)."""
    if not lines:
        return last_seq(engine, job_id)
    with session_scope(engine) as session:
        last = session.exec(
            select(func.max(JobLogLineRow.seq)).where(col(JobLogLineRow.job_id) == job_id)
        ).one()
        seq = int(last or 0)
        for line in lines:
            seq += 1
            text = line.text
            if len(text) > MAX_LINE_CHARS:
                text = text[: MAX_LINE_CHARS - 1] + "…"
            session.add(
                JobLogLineRow(job_id=job_id, seq=seq, time=line.time, level=line.level, text=text)
            )
        if seq > MAX_LINES:
            session.exec(
                delete(JobLogLineRow).where(
                    col(JobLogLineRow.job_id) == job_id,
                    col(JobLogLineRow.seq) <= seq - MAX_LINES,
                )
            )
    return seq


def last_seq(engine: Engine, job_id: int) -> int:
    """The number of the last line job ``job_id`` logged (0: none)."""
    with session_scope(engine, write=False) as session:
        last = session.exec(
            select(func.max(JobLogLineRow.seq)).where(col(JobLogLineRow.job_id) == job_id)
        ).one()
    return int(last or 0)


def read_lines(
    engine: Engine, job_id: int, *, after: int = 0, limit: int = MAX_READ
) -> tuple[list[JobLogLineRow], int | None]:
    """Job ``job_id``'s lines numbered after ``after``, oldest first, at most ``limit``;
    and the number of the first line still kept (None: the job logged nothing)."""
    with session_scope(engine, write=False) as session:
        first = session.exec(
            select(func.min(JobLogLineRow.seq)).where(col(JobLogLineRow.job_id) == job_id)
        ).one()
        rows = session.exec(
            select(JobLogLineRow)
            .where(col(JobLogLineRow.job_id) == job_id, col(JobLogLineRow.seq) > after)
            .order_by(col(JobLogLineRow.seq))
            .limit(max(0, limit))
        ).all()
    return list(rows), (int(first) if first is not None else None)
