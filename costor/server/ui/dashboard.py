"""The web UI's dashboard (docs/ui.md): what needs attention first, then the sites,
the pools, the clients (worst first) and the running jobs, live.

It reads what the API's routes read, with their permissions: the status document
(``GET /api/v1/status``, ``config.read``: a viewer limited to some clients sees theirs
only, through :func:`~costor.server.visible.status_seen_by`), the pools (``GET
/api/v1/pools``: those of the viewer's clients) and the jobs (``GET /api/v1/jobs``,
``jobs.read``). Nothing here reads backed-up content.

The running jobs refresh from ``GET /dashboard/running`` every 2 s (one small request
for the whole list, whatever the number of jobs; a poll that fails once simply comes
again), and the rest of the page every minute (a wall screen stays on it for days).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from costor.db import catalogue
from costor.db.session import session_scope
from costor.ops.context import Context
from costor.ops.status import LEVELS, status
from costor.server.documents import pool_documents
from costor.server.permissions import Access, use
from costor.server.ui.jobs import progress_view, visible_jobs
from costor.server.ui.pages import Viewer, render, viewer
from costor.server.visible import status_seen_by

router = APIRouter()

RECENT_FAILURES = timedelta(hours=24)  # a failed job is news on the dashboard this long
RUNNING_SHOWN = 100
FAILED_SCAN = 500  # failed jobs looked through for a limited viewer's own (newest first)
GROWTH_DAYS = 7  # a pool's growth: what its snapshots of the last week added


def growth_by_pool(ctx: Context, pool_uuids: list[str], days: int = GROWTH_DAYS) -> dict[str, int]:
    """pool uuid -> the bytes its catalogued snapshots of the last ``days`` days added
    (``bytes_added``: after deduplication and compression, before pruning freed any).

    It reads each pool's catalogue rows, as the pools' dedup ratio
    (``costor.db.catalogue.logical_bytes_by_pool``) reads every row's counters; a query
    of the newer rows only belongs in that module (asked for). Snapshot times are ISO
    8601 in UTC, so comparing the text to the cut-off's (to the second) compares the
    times."""
    cutoff = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S")
    totals: dict[str, int] = {}
    with session_scope(ctx.engine, write=False) as session:
        for pool_uuid in pool_uuids:
            rows = catalogue.catalogued_snapshots(session, pool_uuid).values()
            totals[pool_uuid] = sum(_added(row.counters) for row in rows if row.time >= cutoff)
    return totals


def _added(counters: str) -> int:
    try:
        return max(int(json.loads(counters).get("bytes_added", 0)), 0)
    except (ValueError, TypeError, AttributeError):
        return 0  # the state's own row; a bad one counts nothing


def client_label(client: dict[str, Any]) -> str:
    """A client's health in a word or two: "never backed up", "late" (its last good
    backup is older than its RPO), else the status's level ("ok", "warning",
    "critical")."""
    if client["last_backup"] is None:
        return "never backed up"
    if client["rpo_s"] is not None and (client["age_s"] or 0) > client["rpo_s"]:
        return "late"
    return str(client["health"])


def span_words(seconds: int | float | None) -> str:
    """An RPO as people say it: "1 day", "36 h", "2.5 days", "30 min" ("–": none)."""
    if seconds is None:
        return "–"
    if seconds >= 2 * 86400 or (seconds >= 86400 and seconds % 86400 == 0):
        days = round(seconds / 86400, 1)
        return f"{days:g} day" + ("" if days == 1 else "s")
    if seconds >= 3600:
        return f"{round(seconds / 3600, 1):g} h"
    return f"{round(seconds / 60):g} min"


def client_level(client: dict[str, Any]) -> str:
    """The badge's level: the status's health, except that a client never backed up is
    at least a warning (without a policy the status calls it ok: nothing is late
    without an RPO, but no copy of it exists either)."""
    if client["last_backup"] is None and client["health"] == "ok":
        return "warning"
    return str(client["health"])


def _worst_first(client: dict[str, Any]) -> tuple[int, float, str]:
    """Worst health first; then the furthest past (or nearest to) its RPO; then name."""
    age, rpo = client["age_s"], client["rpo_s"]
    if client["last_backup"] is None:
        lateness = float("inf")
    elif rpo:
        lateness = (age or 0) / rpo
    else:
        lateness = 0.0
    return (-LEVELS.index(client_level(client)), -lateness, str(client["client"]))


def _recent(iso: str | None, now: datetime) -> bool:
    if not iso:
        return False
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return now - when <= RECENT_FAILURES


def attention(
    document: dict[str, Any] | None,
    pools: list[dict[str, Any]],
    failed_jobs: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """What needs someone, worst first: the site's own problems (no ``costor serve``
    alive, an inventory that does not validate), clients not ok (past their RPO, a
    failed self-test or check, a failed backup), damaged pools (their last check
    failed), the jobs that failed lately. Each: ``level``, ``text``, ``href``."""
    items: list[dict[str, Any]] = []
    if document is not None:
        items += [
            {"level": document["health"], "text": problem, "href": None}
            for problem in document["problems"]
        ]
        for site in document["sites"]:
            if site.get("maintenance"):
                reason = site.get("maintenance_reason") or "no reason given"
                text = f"site {site['site']} is in maintenance: no job starts ({reason})"
                items.append({"level": "warning", "text": text, "href": None})
        for client in document["clients"]:
            level = client_level(client)
            if level == "ok":
                continue
            problems = client["problems"] or ["it has no snapshot yet"]
            items.append(
                {
                    "level": level,
                    "text": f"{client['client']} ({client_label(client)}): " + "; ".join(problems),
                    "href": None,  # the page makes it: url_path quotes the name
                    "client": client["client"],
                }
            )
    for pool in pools:
        check = pool["last_check"]
        if check is not None and check["state"] == "failed":
            items.append(
                {
                    "level": "critical",
                    "text": f"pool {pool['pool']} is damaged: its last check failed"
                    + (f" ({check['error']})" if check["error"] else ""),
                    "href": f"/jobs/{check['job']}",
                }
            )
    for job in failed_jobs:
        items.append(
            {
                "level": "warning",
                "text": f"job {job['id']} ({job['kind']} of {job['target']}) failed"
                + (f": {job['error']}" if job["error"] else ""),
                "href": f"/jobs/{job['id']}",
            }
        )
    items.sort(key=lambda item: -LEVELS.index(str(item["level"])))
    return items


def _running(request: Request, who: Viewer) -> dict[str, Any]:
    """The running jobs the viewer sees, each with its progress in words, and how many
    wait in the queue."""
    if not who.may_somewhere("jobs.read"):
        return {"may_see_jobs": False, "running": [], "queued": 0}
    running, _more = visible_jobs(request, who, state="running", limit=RUNNING_SHOWN)
    queued, more_queued = visible_jobs(request, who, state="queued", limit=RUNNING_SHOWN)
    return {
        "may_see_jobs": True,
        "running": [
            {**job, "view": progress_view(job["progress"], job["state"])} for job in running
        ],
        "queued": f"More than {len(queued)}" if more_queued else len(queued),
    }


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> Response:
    """What needs attention first, then sites, pools, clients and running jobs."""
    who = viewer(request)  # an ended session: HX-Redirect to the login (pages.error_page)
    document: dict[str, Any] | None = None
    pools: list[dict[str, Any]] = []
    if who.may_somewhere("config.read"):
        access = Access(who.grant, "config.read")
        with use(request) as ctx:
            document = status_seen_by(status(ctx).to_json(), access)
            theirs = {c.pool for name, c in ctx.inventory.clients.items() if access.allows(name)}
            pools = [p for p in pool_documents(ctx) if access.whole_site or p["pool"] in theirs]
            growth = growth_by_pool(ctx, [p["uuid"] for p in pools if p["uuid"]])
        for pool in pools:
            pool["growth_7d"] = growth.get(pool["uuid"], 0) if pool["uuid"] else None
        if not access.whole_site:
            mine = {c["site"] for c in document["clients"]}
            document["sites"] = [s for s in document["sites"] if s["site"] in mine]
    now = datetime.now(UTC)
    failed: list[dict[str, Any]] = []
    if who.may_somewhere("jobs.read"):
        failed, _more = visible_jobs(request, who, state="failed", limit=20, scan=FAILED_SCAN)
        failed = [job for job in failed if _recent(job["finished_at"], now)]
    clients = sorted(document["clients"], key=_worst_first) if document else []
    return render(
        request,
        "dashboard.html",
        who,
        title="Dashboard",
        nav="dashboard",
        document=document,
        attention=attention(document, pools, failed),
        clients=[
            {**c, "label": client_label(c), "level": client_level(c), "rpo": span_words(c["rpo_s"])}
            for c in clients
        ],
        pools=pools,
        **_running(request, who),
    )


@router.get("/dashboard/running", response_class=HTMLResponse)
def running_jobs(request: Request) -> Response:
    """The running jobs block alone (the dashboard polls it)."""
    who = viewer(request)  # an ended session: HX-Redirect to the login (pages.error_page)
    return render(request, "_dashboard_running.html", who, **_running(request, who))


__all__ = ["attention", "client_label", "client_level", "router", "span_words"]
