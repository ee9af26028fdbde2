"""The kinds of job the daemon runs, in one table: ``{kind: JobKind}``.

A kind says what its target names (a client or a pool: hence the job's site and the
address whose unapplied changes its log notes) and how one job of it runs: given the
context, the target, the job's parameters and where to report its progress (the job's
row: costor.ops.jobs.progress), do the work and return the report the job records, or
raise :class:`CostorError`. The runner (``costor.ops.jobs.runner``),
``costor jobs add`` (``costor.ops.jobs.requests``), the schedules (which targets exist:
``costor.ops.jobs.schedules``) and the notifications (whose policy: a client's, or the
policies of a pool's clients: ``costor.ops.jobs.notify``) all read this table; a new
kind is one entry here (and, if the inventory schedules it, a line in
``desired_schedules``). The queue (``costor.db.queue``) stores a kind by name only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from costor.config.model import percentage_fraction
from costor.db import queue
from costor.db.models import JobRow
from costor.errors import CostorError, DamageFound, UnknownResource
from costor.ops.backup.restore_to_host import restore_to_host
from costor.ops.backup.run import run_backup
from costor.ops.context import Context
from costor.ops.maintenance.check import check_pools
from costor.ops.maintenance.forget import forget
from costor.ops.maintenance.prune import prune_pools
from costor.ops.maintenance.selftest import selftest
from costor.ops.progress import Progress

Report = dict[str, Any]


@dataclass(frozen=True)
class JobKind:
    """``target``: what a job's target names (``"client"`` or ``"pool"``); ``run(ctx,
    target, params, progress)``: the work, returning the job's report; ``succeeded(ctx,
    job)``: what follows a job of this kind that succeeded (None: nothing)."""

    name: str
    target: Literal["client", "pool"]
    run: Callable[[Context, str, dict[str, Any], Progress], Report]
    succeeded: Callable[[Context, JobRow], None] | None = None

    def address(self, target: str) -> str:
        """The resource a job of this kind works on, e.g. ``client.web``."""
        return f"{self.target}.{target}"

    def site_of(self, ctx: Context, target: str) -> str:
        """The site of the client or pool ``target`` (raises UnknownResource)."""
        declared = ctx.inventory.clients if self.target == "client" else ctx.inventory.pools
        if target not in declared:
            raise UnknownResource(kind=self.target, name=target)
        return str(declared[target].site)


def _backup(ctx: Context, target: str, _params: dict[str, Any], progress: Progress) -> Report:
    # scan_totals: the totals are counted alongside (a second walk of the metadata, as
    # under the CLI's bar), for the percent and the ETA a job's watchers see.
    return run_backup(  # this job is the record: trigger None
        ctx, target, trigger=None, progress=progress, scan_totals=True
    ).to_json()


def _forget_after_backup(ctx: Context, job: JobRow) -> None:
    """A forget after a scheduled backup (not one run by hand), when the client's policy
    keeps a retention."""
    if job.trigger in ("manual", "cli"):
        return
    client = ctx.inventory.clients.get(job.target)
    policy = ctx.inventory.policies.get(client.policy) if client and client.policy else None
    if policy is not None and policy.retention is not None:
        queue.enqueue(ctx.engine, "forget", job.target, site=job.site, trigger="after-backup")


def _forget(ctx: Context, target: str, _params: dict[str, Any], _progress: Progress) -> Report:
    return dict(forget(ctx, client=target).to_json())


def _prune(ctx: Context, target: str, _params: dict[str, Any], progress: Progress) -> Report:
    [(_name, report)] = prune_pools(ctx, pool=target, progress=progress)
    return dict(report.to_json())


def _check(ctx: Context, target: str, params: dict[str, Any], progress: Progress) -> Report:
    subset = params.get("read_data_subset")
    [(_name, report)] = check_pools(
        ctx,
        pool=target,
        subset=percentage_fraction(subset) if subset else None,
        progress=progress,
    )
    doc = report.to_json()
    if not report.ok:
        raise DamageFound(pool=target, count=len(report.problems), report=doc)
    return dict(doc)


def _selftest(ctx: Context, target: str, params: dict[str, Any], _progress: Progress) -> Report:
    return selftest(ctx, target, files=int(params.get("files", 20))).to_json()


def _restore(ctx: Context, target: str, params: dict[str, Any], progress: Progress) -> Report:
    """A restore job: its target is the client whose machine receives the files."""
    return restore_to_host(
        ctx,
        str(params["snapshot"]),
        client=target,
        target=str(params["target"]),
        path=str(params.get("path", "/")),
        include=[str(p) for p in params.get("include", [])],
        exclude=[str(p) for p in params.get("exclude", [])],
        progress=progress,
    ).to_json()


JOB_KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind("backup", "client", _backup, succeeded=_forget_after_backup),
        JobKind("forget", "client", _forget),
        JobKind("prune", "pool", _prune),
        JobKind("check", "pool", _check),
        JobKind("selftest", "client", _selftest),
        JobKind("restore", "client", _restore),
    )
}
KINDS = tuple(JOB_KINDS)


def job_kind(kind: str) -> JobKind:
    try:
        return JOB_KINDS[kind]
    except KeyError:
        raise CostorError(message=f"unknown job kind {kind!r}") from None


def execute(
    ctx: Context,
    kind: str,
    target: str,
    params: dict[str, Any],
    *,
    progress: Progress | None = None,
) -> Report:
    """Do the work of one job, reporting to ``progress``; returns its report, raises
    CostorError on failure."""
    return job_kind(kind).run(ctx, target, params, progress or Progress())


def site_of(ctx: Context, kind: str, target: str) -> str:
    """The site a job of ``kind`` on ``target`` belongs to."""
    return job_kind(kind).site_of(ctx, target)
