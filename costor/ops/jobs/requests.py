"""``costor jobs``: queue one job now, or read the queue's history. The verb parses
and formats; these return outcomes whose ``to_json()`` is its ``--json`` document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from costor.db import queue as jobs
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.ops.jobs.kinds import job_kind, site_of


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


def queue_job(ctx: Context, *, kind: str, target: str) -> JobQueued:
    """Queue a job of ``kind`` on ``target`` (a client or a pool, as the kind says) in
    its site's queue; raises UnknownResource when the target is not declared."""
    site = site_of(ctx, kind, target)
    address = f"{job_kind(kind).target}:{target}"
    with audited(ctx, "jobs.add", address, detail={"kind": kind}) as noted:
        noted["job"] = jobs.enqueue(ctx.engine, kind, target, site=site)
    return JobQueued(id=noted["job"], kind=kind, target=target)


def job_history(
    ctx: Context, *, state: str | None = None, kind: str | None = None, limit: int = 50
) -> JobHistory:
    rows = jobs.list_jobs(ctx.engine, state=state, kind=kind, limit=limit)
    return JobHistory(jobs=[jobs.job_json(row) for row in rows])
