"""The web UI (docs/ui.md): server-rendered pages (Jinja2 templates in
``costor/templates/ui``) made livelier with htmx, which ``costor serve`` serves itself
from ``costor/server/static`` (vendored from npm by ``scripts/vendor-web.sh``: no build
step, no CDN).

The pages are a thin edge over the same use cases as the Admin API, with the same
permissions: a page is for a logged-in session (the API's login, ``costor_session``),
shows what the session's grants allow and nothing else; another client's object is a
404 page, as it is a 404 answer in the API. A page that changes something is a POST
that carries the session's CSRF token (a form field ``csrf``, or htmx's
``X-CSRF-Token`` header). The modules: :mod:`.pages` (what every page shares),
:mod:`.login` (log in, log out), and one module per area of the UI.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from costor.server.ui import audit, browse, clients, dashboard, jobs, login, pages


def mount(app: FastAPI) -> None:
    """The pages, their static files and their error pages, on ``app``."""
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    app.add_middleware(pages.PageHeaders)
    app.state.page_error = pages.error_page
    for module in (login, dashboard, clients, jobs, audit, browse):
        app.include_router(module.router, include_in_schema=False)


__all__ = ["mount"]
