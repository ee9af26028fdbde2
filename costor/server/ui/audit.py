"""The web UI's audit log (docs/ui.md): the records newest first, filtered by actor,
action, target and time, a page at a time; and the check of the log's hash chain.

As ``GET /api/v1/audit`` and ``GET /api/v1/audit/verify`` (costor/server/records.py):
``audit.read`` on the whole site (the records name every client), so the auditor and
the admin see it; anyone else gets the 403 page (and no menu entry). Reading the log is
not itself recorded, as in the API. Every field of a record is untrusted text (a
target holds the path of a downloaded file, which anyone who could name a file chose):
the templates escape it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from costor.errors import UsageError
from costor.ops.audit import list_records, verify_log
from costor.server.permissions import Access, use
from costor.server.ui.pages import Viewer, render, viewer

router = APIRouter()

PER_PAGE = 100
MAX_OFFSET = 100_000  # as the API: records skipped at most (deeper: narrow the time)
FILTERS = ("actor", "action", "target", "since", "until")
Filter = Annotated[str, Query(max_length=500)]


def _detail(detail: Any) -> str:
    """A record's detail, compact (shown as text: escaped like every field)."""
    if detail in (None, {}, ""):
        return ""
    if isinstance(detail, str):
        return detail
    return json.dumps(detail, separators=(", ", ": "), ensure_ascii=False, sort_keys=True)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    actor: Filter = "",
    action: Filter = "",
    target: Filter = "",
    since: Filter = "",
    until: Filter = "",
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    who: Viewer = Depends(viewer),
) -> HTMLResponse:
    """The audit records matching every filter, newest first, a page at a time."""
    Access(who.grant, "audit.read").site(what="the audit log")
    filters = {"actor": actor, "action": action, "target": target, "since": since, "until": until}
    given = {name: value.strip() or None for name, value in filters.items()}
    problem = ""
    records: list[dict[str, Any]] = []
    try:
        with use(request) as ctx:
            records = list_records(ctx, **given, limit=offset + PER_PAGE + 1).to_json()
    except UsageError as error:  # a time that is neither a duration nor a date
        problem = str(error)
    more = len(records) > offset + PER_PAGE
    records = [{**r, "detail_text": _detail(r["detail"])} for r in records[offset:][:PER_PAGE]]
    kept = {name: value for name, value in given.items() if value}

    def page(at: int) -> str:
        return "/audit?" + urlencode({**kept, **({"offset": at} if at else {})})

    return render(
        request,
        "audit.html",
        who,
        status_code=400 if problem else 200,
        title="Audit log",
        nav="audit",
        records=records,
        filters=filters,
        filtered=bool(kept),
        problem=problem,
        offset=offset,
        newer=page(max(0, offset - PER_PAGE)) if offset else None,
        older=page(offset + PER_PAGE) if more and offset + PER_PAGE <= MAX_OFFSET else None,
    )


@router.get("/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, who: Viewer = Depends(viewer)) -> HTMLResponse:
    """Walk the hash chain (as ``costor audit verify``): its result, as a block for
    htmx or as the page without it."""
    Access(who.grant, "audit.read").site(what="the audit log")
    with use(request) as ctx:
        check = verify_log(ctx).to_json()
    if request.headers.get("HX-Request") == "true":
        return render(request, "_audit_verify.html", who, check=check)
    return render(
        request,
        "audit_verify.html",
        who,
        title="Audit log: the chain",
        nav="audit",
        crumbs=[("Audit log", "/audit"), ("The chain", None)],
        check=check,
    )


__all__ = ["router"]
