"""The web UI's jobs pages (docs/ui.md): the history with its filters, one job with its
progress and its log, live, and cancelling a job.

- ``GET /jobs``: newest first, filtered by state, kind and target, a page at a time; as
  ``GET /api/v1/jobs`` with ``jobs.read``: a caller limited to some clients sees their
  jobs only (never a pool's: a pool holds every client's data).
- ``GET /jobs/{id}``: the job as ``GET /api/v1/jobs/{id}`` shows it (404 page for a job
  the viewer does not see), its progress and its log. While it runs the page follows
  ``GET /jobs/{id}/events``: the same events as ``/api/v1/jobs/{id}/events``
  (costor/server/events.py ``watch_job``: one poller per job, whoever watches), sent as
  HTML fragments htmx swaps in (``progress``, ``log``, ``state`` with ``facts``, then
  ``outcome``, ``actions`` and ``ended``, which closes the stream: an EventSource would
  reconnect otherwise).
- ``POST /jobs/{id}/cancel``: as ``POST /api/v1/jobs/{id}/cancel`` (``jobs.manage`` on
  the job's target), from a form with the CSRF token; then back to the job's page.

:func:`progress_view` and :func:`eta_words` say a progress document in words; the
dashboard shows running jobs with them too, and polls as the jobs page does (a poll
after the session ended sends the browser to the login page: ``pages.error_page``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi import Path as InPath
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from costor.errors import PermissionDenied, UsageError
from costor.ops.jobs.kinds import KINDS
from costor.ops.jobs.logs import MAX_SEQ, RUNNING, job_log
from costor.ops.jobs.requests import cancel_job, job_history
from costor.server import documents
from costor.server.events import watch_job, while_authenticated
from costor.server.permissions import Access, use
from costor.server.ui.pages import Viewer, checked_form, render, size, templates, viewer

router = APIRouter()

STATES = ("queued", "running", "succeeded", "failed", "interrupted", "cancelled")
PER_PAGE = 50
# Jobs read at most to filter by target or by what a limited viewer sees: the jobs
# table's query filters by state and kind only (docs: "searches the newest 5,000").
SCAN = 5000
PING_EVERY = 15  # seconds: a comment line keeps proxies from closing an idle stream
JobId = Annotated[int, InPath(ge=1, le=documents.MAX_JOB_ID)]


def eta_words(seconds: float | None) -> str:
    """What is left, as people say it ("about 2 min"); "estimating" while unknown.
    Never "0 s" while the job runs: a second at least (the progress floors it too)."""
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return "estimating…"
    if seconds < 60:
        return f"about {max(1, math.ceil(seconds))} s"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"about {hours} h {rest} min" if rest else f"about {hours} h"


def progress_view(progress: dict[str, Any] | None, state: str) -> dict[str, Any] | None:
    """A progress document (costor/ops/jobs/progress.py) as the pages show it: the
    <progress> value (None: no total known yet), phase, counts, rate and ETA in words."""
    if progress is None:
        return None
    percent = progress.get("percent")
    running = state in RUNNING
    files_total = progress.get("files_total")
    bytes_total = progress.get("bytes_total")
    rate = progress.get("rate_bps")
    return {
        "phase": progress.get("phase") or "",
        "percent": None if percent is None else round(float(percent), 1),
        "files": f"{progress.get('files', 0):,}"
        + (f" of {files_total:,}" if files_total is not None else ""),
        "bytes": size(progress.get("bytes", 0))
        + (f" of {size(bytes_total)}" if bytes_total is not None else ""),
        # A rate of 0 is a stall only once bytes had moved (scanning, a forget or a
        # check's first steps report none: no rate to speak of yet).
        "rate": "stalled"
        if rate == 0 and running and progress.get("bytes", 0) > 0
        else (f"{size(rate)}/s" if rate else "–"),
        "eta": eta_words(progress.get("eta_s")) if running else "",
        "elapsed_s": progress.get("elapsed_s"),
        "warnings": progress.get("warnings", 0),
    }


# A report's facts shown first, in this order, when it has them (the rest: "all").
HEADLINE = (
    "ok",  # a check, a forget
    "damaged",
    "snapshot_id",
    "files_written",  # a restore
    "bytes_written",
    "files_new",
    "files_changed",
    "files_unmodified",
    "files_failed",
    "bytes_processed",
    "bytes_added",
    "compression_ratio",
    "warnings",
    "errors",
)


def _say(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "–"}[value]
    if isinstance(value, int | float) and key.startswith("bytes"):
        return size(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(_say(key, v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_say(k, v)}" for k, v in value.items())
    return str(value)


def result_items(result: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A job's result (its report) as (label, value) lines: the headline facts, and
    all of it; byte counts in people's units."""
    every = [(key.replace("_", " "), _say(key, value)) for key, value in result.items()]
    headline = [
        (key.replace("_", " "), _say(key, result[key])) for key in HEADLINE if key in result
    ]
    return headline, every


def visible_jobs(
    request: Request,
    who: Viewer,
    *,
    state: str | None = None,
    kind: str | None = None,
    target: str | None = None,
    limit: int = PER_PAGE,
    offset: int = 0,
    scan: int = SCAN,
) -> tuple[list[dict[str, Any]], bool]:
    """The page of jobs ``who`` sees (as ``GET /api/v1/jobs``: a viewer limited to some
    clients sees their clients' jobs only), newest first, and whether more follow.
    Filtering by target or by what the viewer sees looks among the newest ``scan``
    jobs (of the state and kind asked for)."""
    access = Access(who.grant, "jobs.read")
    exact = access.whole_site and not target
    with use(request) as ctx:
        jobs = job_history(
            ctx, state=state, kind=kind, limit=offset + limit + 1 if exact else scan
        ).to_json()
        clients = set(ctx.inventory.clients)
    if not access.whole_site:
        jobs = [j for j in jobs if j["target"] in clients and access.allows(j["target"])]
    if target:
        jobs = [j for j in jobs if j["target"] == target]
    return jobs[offset : offset + limit], len(jobs) > offset + limit


def _query(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "", 0)})


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    state: Annotated[str, Query(max_length=20)] = "",
    kind: Annotated[str, Query(max_length=20)] = "",
    target: Annotated[str, Query(max_length=255)] = "",
    offset: Annotated[int, Query(ge=0, le=SCAN)] = 0,
) -> Response:
    """The jobs, newest first, filtered (state, kind, target), a page at a time (the
    first page refreshes itself every 10 s)."""
    who = viewer(request)  # an ended session: HX-Redirect to the login (pages.error_page)
    if not who.may_somewhere("jobs.read"):
        raise PermissionDenied(reason="jobs.read is not granted to you")
    jobs, more = visible_jobs(
        request,
        who,
        state=state or None,
        kind=kind or None,
        target=target.strip() or None,
        offset=offset,
    )
    filters = {"state": state, "kind": kind, "target": target.strip()}
    return render(
        request,
        "jobs.html",
        who,
        title="Jobs",
        nav="jobs",
        jobs=jobs,
        states=STATES,
        kinds=KINDS,
        filters=filters,
        filtered=any(filters.values()),
        offset=offset,
        per_page=PER_PAGE,
        here=f"/jobs?{_query(**filters)}",
        newer=f"/jobs?{_query(**filters, offset=max(0, offset - PER_PAGE))}" if offset else None,
        older=f"/jobs?{_query(**filters, offset=offset + PER_PAGE)}" if more else None,
    )


def _seen_job(request: Request, who: Viewer, job_id: int, permission: str) -> dict[str, Any]:
    """The job's document, if ``who`` sees it (404 page otherwise, 403 without
    ``permission`` on a job it sees)."""
    with use(request) as ctx:
        job = documents.job_document(ctx, job_id)
        Access(who.grant, permission).job(job, set(ctx.inventory.clients))
    return job


def _job_context(request: Request, who: Viewer, job_id: int) -> dict[str, Any]:
    """What job.html and its fragments show of the job (if ``who`` sees it)."""
    job = _seen_job(request, who, job_id, "jobs.read")
    with use(request) as ctx:
        is_client = job["target"] in ctx.inventory.clients
    headline, report = result_items(job["result"] or {})
    return {
        "job": job,
        "progress": progress_view(job["progress"], job["state"]),
        "result": headline,
        "report": report,
        "running": job["state"] in RUNNING,
        # A job run from a terminal (`costor backup`) is that terminal's to stop.
        "may_cancel": job["state"] in RUNNING
        and job["trigger"] != "cli"
        and who.may("jobs.manage", job["target"]),
        "target_is_client": is_client,
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobId, who: Viewer = Depends(viewer)) -> HTMLResponse:
    """One job: its state, progress, outcome and log (live while it runs)."""
    context = _job_context(request, who, job_id)
    with use(request) as ctx:
        log = job_log(ctx, job_id)
    return render(
        request,
        "job.html",
        who,
        title=f"Job {job_id}",
        nav="jobs",
        crumbs=[("Jobs", "/jobs"), (f"Job {job_id}", None)],
        lines=log.to_json()["lines"],
        after=log.next,
        more=log.more,
        **context,
    )


def _fragment(template: str, **context: Any) -> str:
    return templates.get_template(template).render(**context)


def _resume_point(after: int, last_event_id: str | None) -> int:
    """Where a stream resumes: ``Last-Event-ID`` (an EventSource reconnecting) wins."""
    text = (last_event_id or "").strip()
    if not text:
        return after
    if not text.isdigit() or int(text) > MAX_SEQ:
        raise UsageError(message="Last-Event-ID must be a log line number")
    return int(text)


@router.get("/jobs/{job_id}/events")
async def job_events(
    request: Request,
    job_id: JobId,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
    who: Viewer = Depends(viewer),
) -> EventSourceResponse:
    """The job, live, as HTML fragments: ``progress`` (the progress block), ``log``
    (a line), ``state`` (the state badge) with ``facts`` (the job's facts as they are
    then), then ``outcome``, ``actions`` (no cancel button) and ``ended`` when it
    ends (the page closes the stream on ``ended``)."""
    start = _resume_point(after, last_event_id)
    await run_in_threadpool(_seen_job, request, who, job_id, "jobs.read")
    events = watch_job(request.app, job_id, after=start)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in while_authenticated(request, events):
                data = event.data
                if event.kind == "log":
                    html = _fragment("_job_log_line.html", line=data)
                elif event.kind == "progress":
                    state = "succeeded" if data.get("phase") == "done" else "running"
                    html = _fragment("_job_progress.html", progress=progress_view(data, state))
                else:
                    html = _fragment("_job_state.html", state=data["state"])
                yield ServerSentEvent(data=html, event=event.kind, id=event.id or None)
                if event.kind != "state":
                    continue
                # The facts (attempt, started, finished) change with the state.
                context = await run_in_threadpool(_job_context, request, who, job_id)
                yield ServerSentEvent(data=_fragment("_job_facts.html", **context), event="facts")
                if data["ended"]:
                    yield ServerSentEvent(
                        data=_fragment("_job_progress.html", **context), event="progress"
                    )
                    yield ServerSentEvent(
                        data=_fragment("_job_outcome.html", **context), event="outcome"
                    )
                    yield ServerSentEvent(data="", event="actions")  # no more cancel
                    yield ServerSentEvent(data="", event="ended")
        finally:
            await events.aclose()

    return EventSourceResponse(stream(), ping=PING_EVERY, send_timeout=30)


@router.post("/jobs/{job_id}/cancel")
async def cancel_page(request: Request, job_id: JobId, who: Viewer = Depends(viewer)) -> Response:
    """Cancel the job (``jobs.manage`` on its target), then its page again."""
    await checked_form(request, who)
    await run_in_threadpool(_cancel, request, who, job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def _cancel(request: Request, who: Viewer, job_id: int) -> None:
    _seen_job(request, who, job_id, "jobs.manage")
    with use(request) as ctx:
        cancel_job(ctx, job_id=job_id)


__all__ = [
    "eta_words",
    "progress_view",
    "result_items",
    "router",
    "visible_jobs",
]
