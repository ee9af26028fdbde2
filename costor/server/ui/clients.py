"""The web UI's client page (docs/ui.md): one client's health against its RPO, its
snapshots newest first (and on a timeline), its recent jobs, and "back up now".

- ``GET /clients/{client}``: ``config.read`` on the client (its line of ``GET
  /api/v1/status``); its snapshots with ``snapshots.list`` (``GET
  /api/v1/snapshots?client=``), its jobs with ``jobs.read``. A client the viewer does
  not see is the 404 page, the same as one that does not exist.
- ``POST /clients/{client}/backup``: as ``POST /api/v1/clients/{client}/backup``
  (``backups.run`` on the client: a backup job queued for the daemon), from a form with
  the CSRF token; then the job's page, which follows it live.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from costor.errors import UnknownResource
from costor.ops.jobs.requests import queue_job
from costor.ops.restore.snapshots import list_snapshots
from costor.ops.status import status
from costor.server.permissions import Access, use
from costor.server.ui.dashboard import client_label, client_level, span_words
from costor.server.ui.jobs import visible_jobs
from costor.server.ui.pages import Viewer, checked_form, render, url_path, viewer

router = APIRouter()

PER_PAGE = 50  # snapshots per page (and bars on the timeline)
RECENT_JOBS = 10
RECENT_SCAN = 1000  # the site's newest jobs searched for the client's (the jobs page: more)
MAX_OFFSET = 1_000_000


def size_class(value: int, largest: int) -> str:
    """The timeline bar's height class (.h-10 … .h-100) of ``value`` against the
    largest on the page: a tenth at least, so every snapshot shows."""
    if largest <= 0:
        return "h-10"
    tenths = max(1, min(10, -(-value * 10 // largest)))
    return f"h-{tenths * 10}"


def _client_line(request: Request, who: Viewer, client: str) -> dict[str, Any]:
    """The client's status line, if the viewer sees it (else the 404 page)."""
    missing = UnknownResource(kind="client", name=client)
    Access(who.grant, "config.read").client(client, missing=missing)
    with use(request) as ctx:
        if client not in ctx.inventory.clients:
            raise missing
        lines = [c for c in status(ctx).clients if c["client"] == client]
    line = lines[0]
    return {
        **line,
        "label": client_label(line),
        "level": client_level(line),
        "rpo": span_words(line["rpo_s"]),
    }


@router.get("/clients/{client}", response_class=HTMLResponse)
def client_page(
    request: Request,
    client: str,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    who: Viewer = Depends(viewer),
) -> HTMLResponse:
    """The client's health, snapshots (newest first, a page at a time) and jobs."""
    line = _client_line(request, who, client)
    snapshots: list[dict[str, Any]] = []
    total = 0
    if who.may("snapshots.list", client):
        with use(request) as ctx:
            found = list_snapshots(ctx, client=client)
        total = len(found)
        newest_first = found[::-1][offset : offset + PER_PAGE + 1]  # +1: each one's parent
        summaries = [{**s.summary(), "pool": pool} for pool, s in newest_first]
        for index, summary in enumerate(summaries[:PER_PAGE]):
            older = summaries[index + 1] if index + 1 < len(summaries) else None
            summary["previous"] = older["id"] if older else None
            snapshots.append(summary)
        largest = max((s["bytes_processed"] for s in snapshots), default=0)
        for summary in snapshots:
            summary["bar"] = size_class(summary["bytes_processed"], largest)
            summary["changed"] = summary["files_new"] + summary["files_changed"]
    jobs: list[dict[str, Any]] = []
    if who.may("jobs.read", client):
        jobs, _more = visible_jobs(request, who, target=client, limit=RECENT_JOBS, scan=RECENT_SCAN)
    page = url_path("clients", client)
    return render(
        request,
        "client.html",
        who,
        title=client,
        nav="dashboard",
        crumbs=[("Dashboard", "/"), (client, None)],
        client=line,
        snapshots=snapshots,
        timeline=snapshots[::-1],  # oldest on the left
        total=total,
        offset=offset,
        newer=f"{page}?{urlencode({'offset': max(0, offset - PER_PAGE)})}" if offset else None,
        older=f"{page}?{urlencode({'offset': offset + PER_PAGE})}"
        if offset + PER_PAGE < total
        else None,
        jobs=jobs,
        may_see_snapshots=who.may("snapshots.list", client),
        may_see_jobs=who.may("jobs.read", client),
        may_back_up=who.may("backups.run", client),
    )


@router.post("/clients/{client}/backup")
async def back_up_now(request: Request, client: str, who: Viewer = Depends(viewer)) -> Response:
    """Queue a backup of the client now (``backups.run`` on it), then its job's page."""
    await checked_form(request, who)
    job_id = await run_in_threadpool(_queue_backup, request, who, client)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def _queue_backup(request: Request, who: Viewer, client: str) -> int:
    Access(who.grant, "backups.run").client(
        client, missing=UnknownResource(kind="client", name=client)
    )
    with use(request) as ctx:
        queued = queue_job(ctx, kind="backup", target=client)
    return int(queued.id)


__all__ = ["router", "size_class"]
