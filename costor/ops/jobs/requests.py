"""``costor jobs``: queue one job now, cancel one, or read the queue's history. The
verb parses and formats; these return outcomes whose ``to_json()`` is its ``--json``
document.

Cancelling is recorded in the state, which is the truth for every daemon: a queued
job is taken off the queue (claimed, so no daemon can start it meanwhile, and finished
``cancelled`` at once); a running one is marked ``cancelled`` and the daemon that runs
it stops its process at its next tick (SIGTERM; costor/daemon/server.py
``_stop_cancelled``). The job's own outcome then finds it no longer running and is not
recorded, so no retry is queued and the cancel stands. A backup run from a terminal
(``costor backup``, trigger ``cli``) is its operator's to stop, not the queue's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from costor.db import queue as jobs
from costor.errors import JobNotCancellable, JobNotFound, UsageError
from costor.ops.audit import audited
from costor.ops.backup.restore_to_host import checked_target
from costor.ops.context import Context
from costor.ops.jobs.kinds import job_kind, site_of
from costor.store.restore.selection import Selection


@dataclass(frozen=True)
class JobQueued:
    """A job queued by hand (trigger ``manual``), for the daemon to run."""

    id: int
    kind: str
    target: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "state": "queued"}


@dataclass(frozen=True)
class JobHistory:
    """Jobs, newest first, each as :func:`costor.db.queue.job_json` documents it."""

    jobs: list[dict[str, Any]]

    def to_json(self) -> list[dict[str, Any]]:
        return self.jobs


def queue_job(
    ctx: Context, *, kind: str, target: str, params: dict[str, Any] | None = None
) -> JobQueued:
    """Queue a job of ``kind`` on ``target`` (a client or a pool, as the kind says) in
    its site's queue, with the kind's ``params`` (a restore's snapshot and directory);
    raises UnknownResource when the target is not declared."""
    site = site_of(ctx, kind, target)
    if kind == "restore":
        params = _restore_params(params or {})
    address = f"{job_kind(kind).target}:{target}"
    detail = {"kind": kind, **({"params": params} if params else {})}
    with audited(ctx, "jobs.add", address, detail=detail) as noted:
        noted["job"] = jobs.enqueue(
            ctx.engine,
            kind,
            target,
            site=site,
            params=params,
            # A restore that failed half-way is the requester's to look at and ask again.
            max_attempts=1 if kind == "restore" else 3,
        )
    return JobQueued(id=noted["job"], kind=kind, target=target)


def _restore_params(params: dict[str, Any]) -> dict[str, Any]:
    """A restore job's parameters, checked before it is queued: the snapshot, an
    absolute target directory (not ``/``), the path in the snapshot, the patterns."""
    if not isinstance(params.get("snapshot"), str) or not params["snapshot"]:
        raise UsageError(
            message="a restore job needs a snapshot and a target directory "
            "(POST /api/v1/snapshots/SNAPSHOT/restore; docs/server.md)"
        )
    path = params.get("path", "/")
    patterns = [params.get("include", []), params.get("exclude", [])]
    if not isinstance(path, str) or not all(
        isinstance(p, list) and all(isinstance(x, str) for x in p) for p in patterns
    ):
        raise UsageError(message="a restore job's path is text, include/exclude lists of text")
    Selection(*patterns)  # a bad pattern is refused now, not when the job runs
    return {
        "snapshot": params["snapshot"],
        "target": checked_target(str(params.get("target", ""))),
        "path": path,
        "include": patterns[0],
        "exclude": patterns[1],
    }


@dataclass(frozen=True)
class JobCancelled:
    """A job cancelled: its document as :func:`costor.db.queue.job_json` gives it."""

    job: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.job


def cancel_job(ctx: Context, *, job_id: int) -> JobCancelled:
    """Cancel job ``job_id`` (queued or running); its document as it is then.
    :class:`JobNotFound`, or :class:`JobNotCancellable` when it has ended or runs in a
    terminal."""
    row = jobs.get_job(ctx.engine, job_id)
    if row is None:
        raise JobNotFound(job_id=job_id)
    with audited(ctx, "jobs.cancel", f"job:{job_id}", detail={"kind": row.kind}) as noted:
        noted["target"] = row.target
        if row.trigger == "cli":
            raise JobNotCancellable(
                job_id=job_id, reason="it runs in a terminal (costor backup): stop it there"
            )
        reason = f"cancelled by {ctx.actor}"
        if row.state == "queued":
            # Claimed first: a daemon claiming it at the same moment gets it or not, never
            # both; a job claimed meanwhile is running now, and is cancelled as such.
            taken = jobs.claim_job(ctx.engine, job_id, jobs.claimant("cancel"))
            row = taken or jobs.get_job(ctx.engine, job_id) or row
        noted["was"] = row.state
        if row.state != "running":
            raise JobNotCancellable(job_id=job_id, reason=f"it is {row.state}")
        finished = jobs.finish(ctx.engine, job_id, "cancelled", error=reason)
        if finished is None:  # it ended meanwhile
            ended = jobs.get_job(ctx.engine, job_id)
            state = ended.state if ended is not None else "gone"
            raise JobNotCancellable(job_id=job_id, reason=f"it is {state}")
    return JobCancelled(job=jobs.job_json(finished))


def job_history(
    ctx: Context, *, state: str | None = None, kind: str | None = None, limit: int = 50
) -> JobHistory:
    rows = jobs.list_jobs(ctx.engine, state=state, kind=kind, limit=limit)
    return JobHistory(jobs=[jobs.job_json(row) for row in rows])
