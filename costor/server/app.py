"""The FastAPI application: ``/healthz``, ``/metrics`` and the Admin API under
``/api/v1`` (docs/server.md). Each route parses its input, calls one use case through
the :class:`Gate` and returns the use case's ``to_json()`` document, the one the CLI
prints with ``--json``.

Who may see what: every ``/api/v1`` route needs a bearer token (``costor token
create``) and names the permission it needs (``costor/server/permissions.py``
``requires``; the decision is ``costor.ops.control.tokens.Grant``'s). A caller whose
grants or token cover some clients only sees only those: their snapshots, their jobs,
their lines of the status; another client's snapshot answers 404 as an unknown one
would (never 403: a 403 would say that it exists). The routes that change things are
in ``costor/server/actions.py``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as InPath
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from costor import __version__
from costor.errors import (
    UsageError,
)
from costor.ops.jobs.requests import job_history
from costor.ops.restore.browse import list_snapshot
from costor.ops.restore.snapshots import list_snapshots
from costor.ops.status import status
from costor.server import (
    actions,
    dav,
    documents,
    downloads,
    events,
    objects,
    records,
    sessions,
    token_routes,
    ui,
)
from costor.server.errors import error_response, install_error_handlers
from costor.server.gate import Gate
from costor.server.metrics import registry
from costor.server.permissions import Access, requires, use
from costor.server.schemas import (
    ERROR_MEANING,
    ERROR_SCHEMA,
    ClientStatus,
    ErrorDocument,
    HealthDocument,
    JobDocument,
    PoolDocument,
    SnapshotDocument,
    StatusDocument,
    TreeEntry,
    error_responses,
)
from costor.server.visible import resolve_visible, status_seen_by
from costor.store.snapshot import Snapshot

API = "/api/v1"
MAX_PAGE = 1000
MAX_DEPTH = 10_000  # deeper than any path a file system holds (PATH_MAX 4096)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def create_app(inventory_path: str | Path, *, gate: Gate | None = None) -> FastAPI:
    """The application for the inventory at ``inventory_path`` (nothing is opened
    until the first request: ``python -m costor.server.openapi`` builds one without an
    inventory)."""
    gate = gate or Gate(inventory_path)
    app = FastAPI(
        title="CoStor site server",
        version=__version__,
        openapi_url=f"{API}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.gate = gate
    install_error_handlers(app)
    app.add_middleware(_RequestIds)
    metrics = registry(gate)
    app.include_router(actions.router)
    app.include_router(records.router)
    app.include_router(events.router)
    app.include_router(sessions.router)
    app.include_router(objects.router)
    app.include_router(token_routes.router)

    @app.get("/healthz", tags=["health"], response_model=HealthDocument)
    def healthz() -> dict[str, Any]:
        """For load balancers: the process serves (no authentication)."""
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def prometheus() -> Response:
        """Prometheus text, read from the state database at scrape time."""
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        f"{API}/status",
        tags=["admin"],
        response_model=StatusDocument,
        responses=error_responses(401, 403),
    )
    def get_status(request: Request, access: Access = requires("config.read")) -> dict[str, Any]:
        """As `costor status --json` (a caller limited to some clients sees theirs only)."""
        with use(request) as ctx:
            document = status(ctx).to_json()
        return status_seen_by(document, access)

    @app.get(
        f"{API}/clients",
        tags=["admin"],
        response_model=list[ClientStatus],
        responses=error_responses(401, 403),
    )
    def get_clients(
        request: Request, access: Access = requires("config.read")
    ) -> list[dict[str, Any]]:
        """Each client's health against its RPO: the `clients` of `costor status --json`."""
        with use(request) as ctx:
            clients: list[dict[str, Any]] = status(ctx).clients
        return [c for c in clients if access.allows(c["client"])]

    @app.get(
        f"{API}/pools",
        tags=["admin"],
        response_model=list[PoolDocument],
        responses=error_responses(401, 403),
    )
    def get_pools(
        request: Request, access: Access = requires("config.read")
    ) -> list[dict[str, Any]]:
        """Each pool: site, backend, bytes before and after compression, snapshots (a
        caller limited to some clients: the pools of its clients)."""
        with use(request) as ctx:
            pools = documents.pool_documents(ctx)
            theirs = {c.pool for name, c in ctx.inventory.clients.items() if access.allows(name)}
        return [p for p in pools if access.whole_site or p["pool"] in theirs]

    @app.get(
        f"{API}/snapshots",
        tags=["admin"],
        response_model=list[SnapshotDocument],
        response_model_exclude_unset=True,
        responses=error_responses(400, 401, 403, 404),
    )
    def get_snapshots(
        response: Response,
        request: Request,
        client: str | None = None,
        pool: str | None = None,
        since: Annotated[str | None, Query(description="ISO 8601 time, inclusive")] = None,
        until: Annotated[str | None, Query(description="ISO 8601 time, exclusive")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        access: Access = requires("snapshots.list"),
    ) -> list[dict[str, Any]]:
        """As `costor snapshots --json`, oldest first (time, then id: a stable order;
        a new snapshot is newer, so the next page is not shifted by it). One page:
        `X-Total-Count` says how many match, `Link: <…>; rel="next"` where the next
        page starts."""
        first = _utc(since) if since is not None else None
        end = _utc(until) if until is not None else None
        if client is not None and not access.allows(client):
            matching: list[tuple[str, Snapshot]] = []
        else:
            with use(request) as ctx:
                found = list_snapshots(ctx, client=client, pool=pool)
            allowed = {name: access.allows(name) for name in {s.client for _p, s in found}}
            matching = [
                (name, snapshot)
                for name, snapshot in found
                if allowed[snapshot.client]
                and (first is None or _utc(snapshot.time) >= first)
                and (end is None or _utc(snapshot.time) < end)
            ]
        # Only the page's documents are made (a page of 100 among 1,000 snapshots).
        page = [{**s.summary(), "pool": name} for name, s in matching[offset : offset + limit]]
        response.headers["X-Total-Count"] = str(len(matching))
        if offset + limit < len(matching):
            following = request.url.include_query_params(offset=offset + limit, limit=limit)
            response.headers["Link"] = f'<{following}>; rel="next"'
        return page

    @app.get(
        f"{API}/snapshots/{{snapshot}}",
        tags=["admin"],
        response_model=SnapshotDocument,
        response_model_exclude_unset=True,
        responses=error_responses(400, 401, 403, 404),
    )
    def get_snapshot(
        request: Request,
        snapshot: str,
        access: Access = requires("snapshots.list", per_object=True),
    ) -> dict[str, Any]:
        """One snapshot (an id, a unique prefix or CLIENT:latest), as in `snapshots --json`."""
        with use(request) as ctx:
            name, found = resolve_visible(ctx, access.grant, snapshot, access.permission)
        return {**found.summary(), "pool": name}

    @app.get(
        f"{API}/snapshots/{{snapshot}}/tree",
        tags=["admin"],
        response_model=list[TreeEntry],
        response_model_exclude_unset=True,
        responses=error_responses(400, 401, 403, 404),
    )
    def get_tree(
        request: Request,
        snapshot: str,
        path: str = "/",
        depth: Annotated[
            int | None,
            Query(
                ge=0,
                le=MAX_DEPTH,
                description="levels below `path` (1: a directory's entries; absent: all, "
                "as `costor ls`)",
            ),
        ] = None,
        access: Access = requires("snapshots.read", per_object=True),
    ) -> list[dict[str, Any]]:
        """What the snapshot holds under `path`, as `costor ls SNAPSHOT PATH --json`; with
        `depth=1`, one directory: its own entry and its entries, not their subtrees."""
        with use(request) as ctx:
            name, found = resolve_visible(ctx, access.grant, snapshot, access.permission)
            listing = list_snapshot(ctx, snapshot=found.id, pool=name, path=path, depth=depth)
            return listing.to_json()

    @app.get(
        f"{API}/jobs",
        tags=["admin"],
        response_model=list[JobDocument],
        responses=error_responses(400, 401, 403),
    )
    def get_jobs(
        request: Request,
        state: str | None = None,
        kind: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        access: Access = requires("jobs.read"),
    ) -> list[dict[str, Any]]:
        """As `costor jobs --json`, newest first (a caller limited to some clients: their
        jobs, not the pools')."""
        with use(request) as ctx:
            jobs = job_history(ctx, state=state, kind=kind, limit=limit).to_json()
            clients = set(ctx.inventory.clients)
        if not access.whole_site:
            jobs = [j for j in jobs if j["target"] in clients and access.allows(j["target"])]
        return jobs

    @app.get(
        f"{API}/jobs/{{job_id}}",
        tags=["admin"],
        response_model=JobDocument,
        responses=error_responses(400, 401, 403, 404),
    )
    def get_job(
        request: Request,
        job_id: Annotated[int, InPath(ge=1, le=documents.MAX_JOB_ID)],
        access: Access = requires("jobs.read", per_object=True),
    ) -> dict[str, Any]:
        """One job, as in `costor jobs --json`."""
        with use(request) as ctx:
            job = documents.job_document(ctx, job_id)
            access.job(job, set(ctx.inventory.clients))
        return job

    app.include_router(downloads.router(), prefix=API)
    dav.mount(app)  # /dav/: the read-only WebDAV view of the snapshots (dav.py)
    ui.mount(app)  # the web UI's pages: after the API, whose paths they never take
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, saying what the server answers to bad input: FastAPI
    declares a 422 for every operation with parameters, but ``costor/server/errors.py``
    (the one place errors are mapped) answers 400 in the error shape; every operation
    that takes a bearer token may answer 401 and 403 (``permissions.requires``), and
    every operation on an object (a path parameter) 404. Built once, then kept."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, routes=app.routes, description=app.description
    )
    shape = {"content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}}}}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": ERROR_MEANING[400], **shape})
            declared = []
            if operation.get("security"):  # requires(): no token 401, no permission 403
                declared += ["401", "403"]
            if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                declared.append("404")  # an object that is not there, or not theirs
            for code in declared:
                responses.setdefault(code, {"description": ERROR_MEANING[int(code)], **shape})
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.setdefault("ErrorDocument", ErrorDocument.model_json_schema())
    app.openapi_schema = document
    return document


class _RequestIds:
    """Every response carries ``X-Request-Id``: the caller's, when it sent a sane one
    (a proxy's), else a new one; an error no handler knew, before the response started,
    is a 500 in the error shape. Pure ASGI rather than Starlette's BaseHTTPMiddleware:
    that one ends a streamed body cleanly when the app fails after it started (a
    download that met damage would look complete); here the error goes on up and the
    server cuts the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-Id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            if started:
                raise  # mid-body: the connection is cut, never a complete-looking end
            response = error_response(Request(scope), error)
            response.headers["X-Request-Id"] = request_id
            await response(scope, receive, send)


def _utc(text: str) -> datetime:
    """An ISO 8601 time, aware (UTC when it names no zone); a bad one is a 400."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(message=f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


__all__ = ["API", "create_app"]
