"""The Admin API's routes that read what the site recorded: a job's log, the applies
and the sites as applied, the audit log (docs/server.md).

- ``GET /api/v1/jobs/{id}/log?after=N``: the job's log lines numbered after ``N``
  (``costor jobs log ID --json``); ``jobs.read`` on the job's target, 404 for a job the
  caller does not see, as ``GET /api/v1/jobs/{id}``.
- ``GET /api/v1/applies?limit=``: the newest applies' summaries; ``GET
  /api/v1/sites``: each site as applied (listen address, health, maintenance, the
  applied revision and last apply). ``config.read``; a summary names any resource, so
  the applies need it on every client, and a caller limited to some clients sees each
  site as the health of its clients only.
- ``GET /api/v1/audit?…`` (``costor audit --json``) and ``GET /api/v1/audit/verify``
  (``costor audit verify --json``): ``audit.read`` on the whole site (its records name
  every client). A broken chain is a finding, not a failed request: verify answers 200
  with ``"intact": false`` and the first broken link, as the CLI prints the same
  document (and exits 3). Reading the log is not itself recorded: it changes nothing and
  reads no backed-up content (what docs/audit.md records), and a dashboard polling it
  would otherwise fill the log with records of its own reading.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from costor.config.model import DEFAULT_LISTEN
from costor.ops.audit import list_records, verify_log
from costor.ops.context import Context
from costor.ops.control.apply import MAX_HISTORY, apply_history
from costor.ops.jobs.logs import MAX_SEQ, job_log
from costor.ops.status import LEVELS, status
from costor.server import documents
from costor.server.permissions import Access, requires, use

API = "/api/v1"
MAX_PAGE = 1000
MAX_OFFSET = 100_000  # audit records skipped at most (read and dropped: deeper, use since)
router = APIRouter(prefix=API, tags=["admin"])


@router.get("/jobs/{job_id}/log")
def get_job_log(
    request: Request,
    job_id: int,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="the last line number already read")
    ] = 0,
    access: Access = requires("jobs.read", per_object=True),
) -> dict[str, Any]:
    """The job's log lines numbered after `after`, oldest first (at most 1,000; `more`
    says when more follow). Follow a running job by asking again with `next` until
    `ended` is true and nothing new comes (`costor jobs log ID --follow`)."""
    with use(request) as ctx:
        access.job(documents.job_document(ctx, job_id), set(ctx.inventory.clients))
        return job_log(ctx, job_id, after=after).to_json()


@router.get("/applies")
def get_applies(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 20,
    access: Access = requires("config.read"),
) -> list[dict[str, Any]]:
    """The newest applies, newest first: when, who, succeeded or failed, the changes
    carried out counted by what they did and resource type, the saved plan's hash."""
    access.site(what="the applies (they name every resource)")
    with use(request) as ctx:
        return apply_history(ctx, limit=limit).to_json()


@router.get("/sites")
def get_sites(request: Request, access: Access = requires("config.read")) -> list[dict[str, Any]]:
    """Each site: where its server listens, its health (as `costor status`), whether it
    is in maintenance, the applied revision (the state's serial) and the last apply. A
    caller limited to some clients: each site's name and the health of its clients."""
    with use(request) as ctx:
        report = status(ctx).to_json()
        if not access.whole_site:
            return _sites_seen_by(report, access)
        history = apply_history(ctx, limit=1)
        return [
            _site_document(ctx, line, report, history.serial, history.last)
            for line in report["sites"]
        ]


@router.get("/audit")
def get_audit(
    request: Request,
    response: Response,
    since: Annotated[
        str | None, Query(description="a duration back from now (1h, 7d) or an ISO 8601 time")
    ] = None,
    until: Annotated[str | None, Query(description="as since: records before then")] = None,
    actor: Annotated[
        str | None, Query(description="e.g. token:ID, os:alice@host (* matches)")
    ] = None,
    action: Annotated[str | None, Query(description="e.g. restore, download (* matches)")] = None,
    target: Annotated[str | None, Query(description="e.g. client:web1 (* matches)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    access: Access = requires("audit.read"),
) -> list[dict[str, Any]]:
    """The audit records matching every filter, newest first, as `costor audit --json`
    (a page: `Link: <…>; rel="next"` when more follow)."""
    access.site(what="the audit log")
    with use(request) as ctx:
        records = list_records(
            ctx,
            since=since,
            until=until,
            actor=actor,
            action=action,
            target=target,
            limit=offset + limit + 1,
        ).to_json()
    if len(records) > offset + limit:
        following = request.url.include_query_params(offset=offset + limit, limit=limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return records[offset : offset + limit]


@router.get("/audit/verify")
def get_audit_verify(request: Request, access: Access = requires("audit.read")) -> dict[str, Any]:
    """Walk the audit log's hash chain and compare it with the pools' anchors, as
    `costor audit verify --json`: 200 with `intact` false and the first broken link
    when it is broken (the CLI exits 3 then)."""
    access.site(what="the audit log")
    with use(request) as ctx:
        return verify_log(ctx).to_json()


def _site_document(
    ctx: Context,
    line: dict[str, Any],
    report: dict[str, Any],
    serial: int,
    last_apply: dict[str, Any] | None,
) -> dict[str, Any]:
    """One site for a caller who sees the whole site: its status line, where it
    listens as applied, its clients, the applied revision and the last apply."""
    name = line["site"]
    site = ctx.inventory.sites.get(name)
    return {
        "site": name,
        "url": site.url if site is not None else None,
        "listen": (site.listen if site is not None else None) or DEFAULT_LISTEN,
        "tls": site is not None and site.tls is not None,
        "health": line["health"],
        "maintenance": line["maintenance"],
        "maintenance_reason": line["maintenance_reason"],
        "clients": [c["client"] for c in report["clients"] if c["site"] == name],
        "applied": {"serial": serial, "last_apply": last_apply},
    }


def _sites_seen_by(report: dict[str, Any], access: Access) -> list[dict[str, Any]]:
    """Each site as a caller limited to some clients sees it: its name and the worst
    health of the caller's clients there (no other client's health, no configuration)."""
    sites = []
    for line in report["sites"]:
        mine = [
            str(c["health"])
            for c in report["clients"]
            if c["site"] == line["site"] and access.allows(c["client"])
        ]
        sites.append({"site": line["site"], "health": max(mine, key=LEVELS.index, default="ok")})
    return sites
