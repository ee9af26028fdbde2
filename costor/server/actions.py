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
``jobs.manage`` on the job's target. A restore job needs ``snapshots.restore`` on the
snapshot's client and on the client whose machine receives the files.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from costor.errors import UnknownResource
from costor.ops.jobs.requests import cancel_job, queue_job
from costor.ops.maintenance.site import maintenance
from costor.server import documents
from costor.server.permissions import Access, requires, use
from costor.server.schemas import error_responses
from costor.server.visible import resolve_visible

API = "/api/v1"
router = APIRouter(prefix=API, tags=["actions"])
_QUEUED: dict[int | str, dict[str, Any]] = {202: {"description": "queued: the job's document"}}


class MaintenanceChange(BaseModel):
    """``PUT /api/v1/maintenance``: as ``costor maintenance on|off [--site S] [--reason T]``."""

    on: bool
    site: str | None = Field(default=None, description="default: the only declared site")
    reason: str | None = Field(default=None, max_length=500)


class RestoreRequest(BaseModel):
    """``POST /api/v1/snapshots/{snapshot}/restore``: what to restore, where."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        min_length=1,
        max_length=4096,
        description="an absolute directory on the receiving client's machine (not /); "
        "made if missing",
    )
    path: str = Field(default="/", max_length=4096, description="the part of the snapshot")
    client: str | None = Field(
        default=None, max_length=255, description="the receiving client (default: the snapshot's)"
    )
    include: list[str] = Field(default_factory=list, max_length=100)
    exclude: list[str] = Field(default_factory=list, max_length=100)


def _queue(
    request: Request,
    response: Response,
    kind: str,
    target: str,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Queue a job as `costor jobs add KIND TARGET` does; its document, 202."""
    with use(request) as ctx:
        queued = queue_job(ctx, kind=kind, target=target, params=params)
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


@router.post("/snapshots/{snapshot}/restore", status_code=202, responses=_QUEUED)
def restore_job(
    request: Request,
    response: Response,
    snapshot: str,
    body: RestoreRequest,
    access: Access = requires("snapshots.restore", per_object=True),
) -> dict[str, Any]:
    """Restore a snapshot (or a path in it) onto a client's machine: the snapshot's own
    client, or `client`, into the directory `target` there (a restore job; over SSH the
    files arrive through `tar` on the host, which replaces what is there). Needs
    `snapshots.restore` on both clients; a snapshot or client the caller does not see
    is 404."""
    with use(request) as ctx:
        _name, found = resolve_visible(ctx, access.grant, snapshot, access.permission)
        client = body.client or found.client
        access.client(client, missing=UnknownResource(kind="client", name=client))
    params = {
        "snapshot": found.id,
        "target": body.target,
        "path": body.path,
        "include": body.include,
        "exclude": body.exclude,
    }
    return _queue(request, response, "restore", client, params)


@router.post("/jobs/{job_id}/cancel", responses=error_responses(409))
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
