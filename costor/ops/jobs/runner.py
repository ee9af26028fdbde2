"""Run one claimed job (in the child process ``costor jobs run ID`` that serve starts):
do the work, heartbeat and record its progress meanwhile, record the outcome, notify.

A job's process may be killed at any moment; the work it does is safe to repeat (a
backup leaves at most unreferenced packs, prune and forget are idempotent) and the
retry that ``recover`` queues redoes it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import traceback
from typing import TYPE_CHECKING, Any

from costor.db import queue as jobs
from costor.db.models import JobRow
from costor.errors import CostorError, DamageFound
from costor.ops.context import Context
from costor.ops.jobs.kinds import JOB_KINDS, execute
from costor.ops.jobs.logs import capture_job_log
from costor.ops.jobs.notify import notify_job
from costor.ops.jobs.progress import JobProgress, Seed, phases_of
from costor.util.log import JOB, get_logger

if TYPE_CHECKING:
    from costor.db.session import Engine

# What the same verb would print on a terminal: to stderr, which is the job's log file
# under ``costor serve``; each line with the time of day (costor.util.log).
logger = get_logger(JOB)


class Interrupted(Exception):
    """serve asked this job to stop (SIGTERM): it is recorded as interrupted and retried."""


def run_job(ctx: Context, job_id: int) -> int:
    """Run job ``job_id`` (claimed by serve, or queued and claimed here). Exit code: 0
    succeeded, 1 failed, 3 damage found, 75 interrupted.

    The job's log (the ``costor.job`` logger) gets what the same verb would print on a
    terminal: the start, any notice about the configuration it runs, the outcome and its
    report. What the run logs at INFO and up is also kept in the state, as the job's
    log that ``costor jobs log ID`` and the API read (costor.ops.jobs.logs)."""
    engine = ctx.engine
    job = jobs.get_job(engine, job_id)
    if job is None:
        raise CostorError(message=f"no job {job_id}")
    if job.state == "queued":  # run by hand: claim it here
        job = jobs.claim_job(engine, job_id, jobs.claimant())
        if job is None:
            raise CostorError(message=f"job {job_id} was taken by another process")
    elif job.state != "running":
        raise CostorError(message=f"job {job_id} is {job.state}, not queued or running")
    jobs.heartbeat(engine, job_id, pid=os.getpid())
    with capture_job_log(engine, job_id) as job_log:
        return _run_claimed(ctx, job, job_log)


def _run_claimed(ctx: Context, job: JobRow, job_log: logging.Handler) -> int:
    """The run of a job claimed by this process, its log captured (costor.ops.jobs.logs)."""
    engine = ctx.engine
    assert job.id is not None  # a claimed job is stored
    job_id = job.id
    # A job's work is the system's, whoever queued it (the audit log's ``jobs.add``
    # record names who did, the schedule otherwise); its records name the job.
    ctx.actor, ctx.source, ctx.request_id = "system", "job", f"job-{job_id}"
    logger.info(
        f"job {job_id}: {job.kind} {job.target} started (attempt {job.attempts} of "
        f"{job.max_attempts}, {job.trigger}) at {job.started_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    kind = JOB_KINDS.get(job.kind)  # an unknown kind fails below, as the job's outcome
    notice = ctx.drift_notice(kind.address(job.target) if kind else f"pool.{job.target}")
    if notice is not None:
        logger.warning(f"job {job_id}: note: {notice}")
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(engine, job_id, stop), daemon=True)
    beat.start()

    def interrupted(_signum: int, _frame: Any) -> None:
        raise Interrupted()

    progress = _progress(engine, job)
    previous = signal.signal(signal.SIGTERM, interrupted)
    state, code, result, error = "succeeded", 0, {}, None
    worked = False  # what passes through as a BaseException (a kill) is no success to show
    try:
        progress.start()
        result = execute(ctx, job.kind, job.target, json.loads(job.params), progress=progress)
        worked = True
    except Interrupted:
        state, code, error = "interrupted", 75, "stopped by costor serve (SIGTERM)"
    except CostorError as failure:
        state, code, error = "failed", failure.exit_code, str(failure)
        result = failure.fields.get("report") or {}
        if isinstance(failure, DamageFound):
            code = 3
    except Exception as bug:  # noqa: BLE001  (recorded, not retried: it would fail again)
        state, code = "failed", 1
        error = f"internal error: {bug!r}\n{traceback.format_exc(limit=8)}"
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        beat.join()
        # Its last document is stored while the job still runs in the state (a write
        # after ``finish`` is refused), so whoever sees it ended sees its last progress.
        progress.finish(succeeded=worked and state == "succeeded")
    logger.log(
        logging.INFO if state == "succeeded" else logging.ERROR,
        f"job {job_id}: {job.kind} {job.target} {state}" + (f": {error}" if error else ""),
    )
    if result:
        logger.info(json.dumps(result, indent=2, sort_keys=True, default=str))
    # The outcome and report are in the job's log before its state says it ended: a
    # reader who sees it ended has read every line of its run (what follows, a
    # notification's problem, comes within a second).
    job_log.flush()
    delay = float(os.environ.get("COSTOR_JOB_RETRY_DELAY", jobs.RETRY_DELAY))
    finished = jobs.finish(engine, job_id, state, result=result, error=error, retry_delay=delay)
    if finished is None:
        logger.error(
            f"job {job_id}: outcome not recorded: the job is no longer running in the state"
        )
    else:
        after_job(ctx, finished)
    return code


def _progress(engine: Engine, job: JobRow) -> JobProgress:
    """The job's progress, written to its row; its ETA seeded from the previous
    successful job of the same kind and target (costor.ops.jobs.progress)."""
    assert job.id is not None
    job_id = job.id
    try:
        previous = jobs.previous_run(engine, job.kind, job.target, before=job_id)
    except Exception as error:  # noqa: BLE001  (an ETA without a seed, not a failed job)
        logger.warning(f"job {job_id}: previous run not read for the ETA: {error!r}")
        previous = None
    phase, data_phase = phases_of(job.kind)
    return JobProgress(
        lambda doc: jobs.record_progress(engine, job_id, doc),
        phase=phase,
        data_phase=data_phase,
        seed=Seed.from_previous(*previous) if previous is not None else None,
    )


def after_job(ctx: Context, job: JobRow) -> None:
    """What follows a finished job: what its kind does after a success (a forget after a
    scheduled backup, when the policy keeps a retention: costor.ops.jobs.kinds), and the
    policy's notification."""
    kind = JOB_KINDS.get(job.kind)
    if job.state == "succeeded" and kind is not None and kind.succeeded is not None:
        kind.succeeded(ctx, job)
    doc = jobs.job_json(job)
    problem = notify_job(ctx, doc)
    assert job.id is not None  # a finished job has been stored
    jobs.record_notification(
        ctx.engine,
        job.id,
        notified=problem is None and doc["state"] in ("succeeded", "failed"),
        problem=problem,
    )


def _beat(engine: Engine, job_id: int, stop: threading.Event) -> None:
    failing = None
    while not stop.wait(jobs.HEARTBEAT_EVERY):
        try:
            jobs.heartbeat(engine, job_id)
        except Exception as error:  # noqa: BLE001  (a missed beat is retried)
            if repr(error) != failing:  # said once per kind of failure, in the job's log
                failing = repr(error)
                logger.warning(f"job {job_id}: heartbeat not recorded: {failing}")
            continue
        failing = None
