"""The web UI's dashboard (costor/server/ui/__init__.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from costor.server.ui.pages import Viewer, render, viewer

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, who: Viewer = Depends(viewer)) -> HTMLResponse:
    """What needs attention first, then sites, pools, clients and running jobs."""
    return render(request, "dashboard.html", who, title="Dashboard", nav="dashboard")
