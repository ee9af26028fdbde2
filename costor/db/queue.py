"""The job queue in the state database (the ``jobs`` and ``schedules`` tables):
enqueue, claim exactly once, heartbeat, finish, retry, recover.

PostgreSQL: a job is claimed with ``SELECT … FOR UPDATE SKIP LOCKED``, so several
``costor serve`` instances take different jobs without waiting for each other. SQLite:
writing transactions are serialised (``BEGIN IMMEDIATE``) and only one ``serve`` may
run (serve.py holds a file lock), so the same query is safe there too.

A job that was running when its process died (kill -9, a crash, a reboot) stops
heart-beating; ``recover`` marks it ``interrupted`` and queues a retry, up to
``max_attempts`` runs in all. A job whose process still runs on this host is never
taken for dead, however late its heartbeat (a loaded machine, a stalled database), and
a job records its own outcome whoever started it: if it was taken for dead meanwhile,
its outcome replaces the guess and the retry queued for it is cancelled, so a job
that completed is never run again.

Every backup is a job: ``costor backup`` on a terminal records one too (trigger
``cli``, see :func:`recorded`), so ``costor jobs`` and ``costor status`` show it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select, update

from costor.db.models import JobRow, ScheduleRow
from costor.db.session import session_scope
from costor.errors import CostorError
from costor.util.clock import utcnow
from costor.util.cron import next_time
from costor.util.processes import process_started

ACTIVE = ("queued", "running")
HEARTBEAT_EVERY = 5.0  # seconds between a running job's heartbeats
STALE_AFTER = 60.0  # a running job not heard from this long is interrupted
RETRY_DELAY = 30.0  # seconds before an interrupted job is tried again
PRESUMED_DEAD = "the process running it stopped (killed or crashed)"


def enqueue(
    engine: Engine,
    kind: str,
    target: str,
    *,
    site: str | None = None,
    trigger: str = "manual",
    params: dict[str, Any] | None = None,
    schedule_key: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int = 3,
) -> int:
    with session_scope(engine) as session:
        row = JobRow(
            kind=kind,
            target=target,
            state="queued",
            trigger=trigger,
            schedule_key=schedule_key,
            site=site,
            run_after=run_after or utcnow(),
            created_at=utcnow(),
            max_attempts=max_attempts,
            params=json.dumps(params or {}, sort_keys=True),
        )
        session.add(row)
        session.flush()
        assert row.id is not None
        return row.id


def enqueue_due(engine: Engine, now: datetime | None = None) -> list[int]:
    """Queue a job for every schedule whose time has come, and move the schedule to its
    next time after ``now``: a schedule missed for days runs once. Moving it is a
    compare-and-set on ``next_run``, so among instances ticking at once exactly one
    queues each run. A run is skipped (the schedule still moves) while the previous job
    of the same schedule is queued or running."""
    now = now or utcnow()
    queued: list[int] = []
    with session_scope(engine, write=False) as session:
        due = session.exec(select(ScheduleRow).where(col(ScheduleRow.next_run) <= now)).all()
    for schedule in due:
        following = next_time(schedule.cron, now)
        with session_scope(engine) as session:
            moved = session.execute(
                update(ScheduleRow)
                .where(
                    col(ScheduleRow.key) == schedule.key,
                    col(ScheduleRow.next_run) == schedule.next_run,
                )
                .values(next_run=following)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another instance took this run
            busy = session.exec(
                select(JobRow.id).where(
                    col(JobRow.schedule_key) == schedule.key, col(JobRow.state).in_(ACTIVE)
                )
            ).first()
            if busy is not None:
                continue
            row = JobRow(
                kind=schedule.kind,
                target=schedule.target,
                state="queued",
                trigger="schedule",
                schedule_key=schedule.key,
                site=schedule.site,
                run_after=now,
                created_at=now,
                params=schedule.params,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            queued.append(row.id)
    return queued


def claim(
    engine: Engine,
    instance: str,
    *,
    sites: Collection[str] | None = None,
    paused_sites: Collection[str] = (),
) -> JobRow | None:
    """Take the oldest runnable job: queued, due, of a site this instance serves and not
    in maintenance, and whose target has no job running (two backups of one client, or
    two prunes of one pool, never run at once)."""
    now = utcnow()
    with session_scope(engine) as session:
        running = select(JobRow.target).where(col(JobRow.state) == "running")
        query = (
            select(JobRow)
            .where(
                col(JobRow.state) == "queued",
                col(JobRow.run_after) <= now,
                col(JobRow.target).not_in(running),
            )
            .order_by(col(JobRow.run_after), col(JobRow.id))
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if sites is not None:
            query = query.where(col(JobRow.site).in_(list(sites)) | col(JobRow.site).is_(None))
        if paused_sites:
            query = query.where(
                col(JobRow.site).not_in(list(paused_sites)) | col(JobRow.site).is_(None)
            )
        job = session.exec(query).first()
        return None if job is None else _start(session, job, instance)


def claim_job(engine: Engine, job_id: int, instance: str) -> JobRow | None:
    """Take one queued job by id (``costor jobs run ID``); None if it is not queued."""
    with session_scope(engine) as session:
        job = session.get(JobRow, job_id, with_for_update=True)
        if job is None or job.state != "queued":
            return None
        return _start(session, job, instance)


def _start(session: Session, job: JobRow, instance: str) -> JobRow:
    now = utcnow()
    job.state = "running"
    job.claimed_by = instance
    job.started_at = now
    job.heartbeat_at = now
    job.attempts += 1
    session.add(job)
    session.flush()
    session.refresh(job)
    return job


def get_job(engine: Engine, job_id: int) -> JobRow | None:
    """Job ``job_id`` as the state has it now (None if there is none)."""
    with session_scope(engine, write=False) as session:
        return session.get(JobRow, job_id)


def record_notification(
    engine: Engine, job_id: int, *, notified: bool, problem: str | None
) -> None:
    """Record whether the finished job's notification was sent; a ``problem`` sending it
    is added to the job's error (its outcome stays)."""
    with session_scope(engine) as session:
        row = session.get(JobRow, job_id)
        if row is not None:
            row.notified = notified
            if problem is not None:
                row.error = f"{row.error or ''}{'; ' if row.error else ''}notification: {problem}"
            session.add(row)


def heartbeat(engine: Engine, job_id: int, pid: int | None = None) -> None:
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if pid is not None:
        values["pid"] = pid
    with session_scope(engine) as session:
        session.execute(
            update(JobRow)
            .where(col(JobRow.id) == job_id, col(JobRow.state) == "running")
            .values(**values)
        )


def record_progress(engine: Engine, job_id: int, progress: dict[str, Any]) -> bool:
    """Store a running job's progress document (costor.ops.jobs.progress); False when
    the job no longer runs in the state (a late write never replaces an ended job's)."""
    with session_scope(engine) as session:
        written = session.execute(
            update(JobRow)
            .where(col(JobRow.id) == job_id, col(JobRow.state) == "running")
            .values(progress=json.dumps(progress, sort_keys=True))
        )
        return bool(written.rowcount)  # type: ignore[attr-defined]


def previous_run(
    engine: Engine, kind: str, target: str, *, before: int | None = None
) -> tuple[float, dict[str, Any] | None] | None:
    """The newest succeeded job of ``kind`` on ``target`` (older than job ``before``):
    its duration in seconds and its last progress document (None: it stored none).
    None when there is no such job: what an ETA starts from."""
    query = select(JobRow).where(
        col(JobRow.kind) == kind,
        col(JobRow.target) == target,
        col(JobRow.state) == "succeeded",
        col(JobRow.started_at).is_not(None),
        col(JobRow.finished_at).is_not(None),
    )
    if before is not None:
        query = query.where(col(JobRow.id) < before)
    with session_scope(engine, write=False) as session:
        job = session.exec(query.order_by(col(JobRow.id).desc()).limit(1)).first()
    if job is None or job.started_at is None or job.finished_at is None:
        return None
    duration = (job.finished_at - job.started_at).total_seconds()
    try:
        progress = json.loads(job.progress) if job.progress else None
    except ValueError:
        progress = None
    return duration, progress if isinstance(progress, dict) else None


def finish(
    engine: Engine,
    job_id: int,
    state: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    retry_delay: float = RETRY_DELAY,
) -> JobRow | None:
    """Record the end of a running job; None if it was no longer running (taken over
    by ``recover`` meanwhile). An ``interrupted`` job is queued again if it has runs
    left."""
    with session_scope(engine) as session:
        job = session.get(JobRow, job_id, with_for_update=True)
        if job is None:
            return None
        presumed_dead = (job.error or "").startswith(PRESUMED_DEAD)
        if job.state in ("interrupted", "failed") and presumed_dead and state != "interrupted":
            # Taken for dead while it ran on (its heartbeat was late): its own outcome
            # wins, and the retry queued for it must not run what is done.
            _cancel_retry(session, job)
        elif job.state != "running":
            return None
        job.state = state
        job.finished_at = utcnow()
        job.result = json.dumps(result or {}, sort_keys=True, default=str)
        job.error = error
        session.add(job)
        if state == "interrupted":
            _retry(session, job, retry_delay)
        session.flush()
        session.refresh(job)
        return job


def _cancel_retry(session: Session, job: JobRow) -> None:
    """Delete the retry ``recover`` queued for ``job`` if it has not started."""
    retry = session.exec(
        select(JobRow)
        .where(
            col(JobRow.kind) == job.kind,
            col(JobRow.target) == job.target,
            col(JobRow.state) == "queued",
            col(JobRow.trigger) == "retry",
            col(JobRow.attempts) == job.attempts,
            col(JobRow.created_at) >= job.finished_at,
        )
        .with_for_update()
    ).first()
    if retry is not None:
        session.delete(retry)


def _retry(session: Session, job: JobRow, delay: float) -> None:
    if job.trigger == "cli":
        return  # a run from a terminal is its operator's to repeat, not the daemon's
    if job.attempts >= job.max_attempts:
        job.error = f"{job.error or 'interrupted'} (gave up after {job.attempts} attempt(s))"
        job.state = "failed"
        session.add(job)
        return
    session.add(
        JobRow(
            kind=job.kind,
            target=job.target,
            state="queued",
            trigger="retry",
            schedule_key=job.schedule_key,
            site=job.site,
            run_after=utcnow() + timedelta(seconds=delay),
            created_at=utcnow(),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            params=job.params,
        )
    )


def recover(
    engine: Engine, *, stale_after: float = STALE_AFTER, retry_delay: float = RETRY_DELAY
) -> list[int]:
    """Interrupt running jobs that stopped heart-beating (their process died) and
    queue their retries. Returns their ids."""
    limit = utcnow() - timedelta(seconds=stale_after)
    with session_scope(engine) as session:
        late = session.exec(
            select(JobRow)
            .where(col(JobRow.state) == "running", col(JobRow.heartbeat_at) < limit)
            .with_for_update(skip_locked=True)
        ).all()
        stale = [job for job in late if not process_alive(job)]
        for job in stale:
            job.state = "interrupted"
            job.finished_at = utcnow()
            job.error = PRESUMED_DEAD
            session.add(job)
            _retry(session, job, retry_delay)
        return [job.id for job in stale if job.id is not None]


def process_alive(job: JobRow) -> bool:
    """Whether the process running ``job`` is alive on this host: same host name, the
    PID exists and started no later than the job (else the PID was reused). A job of
    another host cannot be seen from here: only its heartbeat tells."""
    host = (job.claimed_by or "").split(":", 1)[0]
    if job.pid is None or host != socket.gethostname() or job.started_at is None:
        return False
    ticks = process_started(job.pid)
    if ticks is None:
        return False
    try:
        booted = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return True  # it exists; when it started cannot be told
    started = booted + ticks / os.sysconf("SC_CLK_TCK")
    job_started = (
        job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=utcnow().tzinfo)
    )
    return started <= job_started.timestamp() + 2.0  # /proc's ticks round; the job is later


def claimant(kind: str = "cli") -> str:
    """``claimed_by`` of a job run by this process outside ``serve``: host first, as
    :func:`process_alive` reads it."""
    return f"{socket.gethostname()}:{kind}:{os.getpid()}"


class Recording:
    """A job row for work done in this process (``costor backup`` on a terminal): set
    :attr:`result` before the block ends."""

    def __init__(self, job_id: int) -> None:
        self.id = job_id
        self.result: dict[str, Any] = {}


@contextmanager
def recorded(
    engine: Engine, kind: str, target: str, *, site: str | None, trigger: str = "cli"
) -> Iterator[Recording]:
    """Record work done here as a job: running while the block runs (with a heartbeat,
    so no daemon takes it for dead), then succeeded, failed (a CostorError, whose
    message becomes the job's error) or interrupted (Ctrl-C, a signal). Never retried
    by the daemon. The exception is re-raised."""
    now = utcnow()
    with session_scope(engine) as session:
        row = JobRow(
            kind=kind,
            target=target,
            state="running",
            trigger=trigger,
            site=site,
            run_after=now,
            created_at=now,
            started_at=now,
            heartbeat_at=now,
            attempts=1,
            max_attempts=1,
            claimed_by=claimant(),
            pid=os.getpid(),
        )
        session.add(row)
        session.flush()
        assert row.id is not None
        recording = Recording(row.id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY):
            try:
                heartbeat(engine, recording.id)
            except Exception:  # noqa: BLE001, S112  (a missed beat is retried)
                continue

    beating = threading.Thread(target=beat, daemon=True, name=f"job-{recording.id}-heartbeat")
    beating.start()
    state, error, result = "succeeded", None, recording.result
    try:
        yield recording
        result = recording.result
    except CostorError as failure:
        state, error = "failed", str(failure)
        result = failure.fields.get("report") or {}
        raise
    except BaseException as stopped:
        state, error = "interrupted", f"stopped ({type(stopped).__name__})"
        if not isinstance(stopped, KeyboardInterrupt | SystemExit):
            state, error = "failed", f"internal error: {stopped!r}"
        raise
    finally:
        stop.set()
        beating.join()
        finish(engine, recording.id, state, result=result, error=error)


def list_jobs(
    engine: Engine, *, state: str | None = None, kind: str | None = None, limit: int = 50
) -> list[JobRow]:
    with session_scope(engine, write=False) as session:
        query = select(JobRow).order_by(col(JobRow.id).desc()).limit(limit)
        if state:
            query = query.where(col(JobRow.state) == state)
        if kind:
            query = query.where(col(JobRow.kind) == kind)
        return list(session.exec(query).all())


def job_json(job: JobRow) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    duration = (
        (job.finished_at - job.started_at).total_seconds()
        if job.finished_at and job.started_at
        else None
    )
    return {
        "id": job.id,
        "kind": job.kind,
        "target": job.target,
        "site": job.site,
        "state": job.state,
        "trigger": job.trigger,
        "schedule": job.schedule_key,
        "attempt": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "duration_s": round(duration, 3) if duration is not None else None,
        "instance": job.claimed_by,
        "params": json.loads(job.params),
        "result": json.loads(job.result),
        "error": job.error,
        "progress": json.loads(job.progress) if job.progress else None,
    }
