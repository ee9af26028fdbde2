"""The Admin API's routes that change things: back up now, check / forget / prune /
self-test now, cancel a job, maintenance on and off (docs/server.md).

Each calls the use case the CLI calls (``costor jobs add``, ``costor jobs cancel``,
``costor maintenance``), through the gate as who asks (so the audit log names the
token, the caller's address and the request id), and answers with its document. A job
queued here is the daemon's to run, as one queued by ``costor jobs add``: the answer is
**202** with the job's document and its URL (``Location``); follow it with
``GET /api/v1/jobs/{id}``.

Permissions (costor/server/permissions.py): a client's job needs ``backups.run`` or
``maintenance.run`` on that client; a pool's (check, prune) and maintenance need
``maintenance.run`` on every client, since a pool holds them all; cancelling needs
``jobs.manage`` on the job's target. Restore as a job is not here: there is no restore
job kind yet (costor/ops/jobs/kinds.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from costor.errors import UnknownResource
from costor.ops.jobs.requests import cancel_job, queue_job
from costor.ops.maintenance.site import maintenance
from costor.server import documents
from costor.server.permissions import Access, requires, use

API = "/api/v1"
router = APIRouter(prefix=API, tags=["actions"])
_QUEUED: dict[int | str, dict[str, Any]] = {202: {"description": "queued: the job's document"}}


class MaintenanceChange(BaseModel):
    """``PUT /api/v1/maintenance``: as ``costor maintenance on|off [--site S] [--reason T]``."""

    on: bool
    site: str | None = Field(default=None, description="default: the only declared site")
    reason: str | None = Field(default=None, max_length=500)


def _queue(request: Request, response: Response, kind: str, target: str) -> dict[str, Any]:
    """Queue a job as `costor jobs add KIND TARGET` does; its document, 202."""
    with use(request) as ctx:
        queued = queue_job(ctx, kind=kind, target=target)
        job = documents.job_document(ctx, queued.id)
    response.status_code = 202
    response.headers["Location"] = f"{API}/jobs/{queued.id}"
    return job


def _client_job(
    request: Request, response: Response, access: Access, kind: str, client: str
) -> dict[str, Any]:
    access.client(client, missing=UnknownResource(kind="client", name=client))
    return _queue(request, response, kind, client)


def _pool_job(
    request: Request, response: Response, access: Access, kind: str, pool: str
) -> dict[str, Any]:
    with use(request) as ctx:
        access.pool(ctx, pool)
    return _queue(request, response, kind, pool)


@router.post("/clients/{client}/backup", status_code=202, responses=_QUEUED)
def backup_now(
    request: Request,
    response: Response,
    client: str,
    access: Access = requires("backups.run", per_object=True),
) -> dict[str, Any]:
    """Back the client up now: a backup job, queued for the daemon (`costor jobs add
    backup CLIENT`)."""
    return _client_job(request, response, access, "backup", client)


@router.post("/clients/{client}/forget", status_code=202, responses=_QUEUED)
def forget_now(
    request: Request,
    response: Response,
    client: str,
    access: Access = requires("maintenance.run", per_object=True),
) -> dict[str, Any]:
    """Apply the client's retention now: a forget job (`costor jobs add forget CLIENT`)."""
    return _client_job(request, response, access, "forget", client)


@router.post("/clients/{client}/selftest", status_code=202, responses=_QUEUED)
def selftest_now(
    request: Request,
    response: Response,
    client: str,
    access: Access = requires("maintenance.run", per_object=True),
) -> dict[str, Any]:
    """Restore a sample of the client's latest snapshot and verify it: a selftest job."""
    return _client_job(request, response, access, "selftest", client)


@router.post("/pools/{pool}/check", status_code=202, responses=_QUEUED)
def check_now(
    request: Request,
    response: Response,
    pool: str,
    access: Access = requires("maintenance.run", per_object=True),
) -> dict[str, Any]:
    """Check the pool now: a check job (`costor jobs add check POOL`)."""
    return _pool_job(request, response, access, "check", pool)


@router.post("/pools/{pool}/prune", status_code=202, responses=_QUEUED)
def prune_now(
    request: Request,
    response: Response,
    pool: str,
    access: Access = requires("maintenance.run", per_object=True),
) -> dict[str, Any]:
    """Reclaim the pool's unreferenced space now: a prune job (`costor jobs add prune POOL`)."""
    return _pool_job(request, response, access, "prune", pool)


@router.post("/jobs/{job_id}/cancel")
def cancel(
    request: Request, job_id: int, access: Access = requires("jobs.manage", per_object=True)
) -> dict[str, Any]:
    """Cancel a job (`costor jobs cancel ID`): a queued one never starts, a running one
    is stopped by its daemon within a tick. 409 when it has ended already."""
    with use(request) as ctx:
        access.job(documents.job_document(ctx, job_id), set(ctx.inventory.clients))
        return cancel_job(ctx, job_id=job_id).to_json()


@router.get("/maintenance")
def get_maintenance(request: Request, access: Access = requires("config.read")) -> dict[str, Any]:
    """Which sites are in maintenance, and why (`costor maintenance --json`)."""
    access.site()
    with use(request) as ctx:
        return maintenance(ctx).to_json()


@router.put("/maintenance")
def put_maintenance(
    request: Request,
    change: MaintenanceChange,
    access: Access = requires("maintenance.run"),
) -> dict[str, Any]:
    """Maintenance on or off (`costor maintenance on|off`): running jobs finish, no new
    ones start while it is on. Then every site's state."""
    access.site()
    with use(request) as ctx:
        return maintenance(ctx, on=change.on, site=change.site, reason=change.reason).to_json()
