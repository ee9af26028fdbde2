"""The one place errors become HTTP answers: a :class:`CostorError` answers with its
class's ``http_status`` (costor/errors.py says which status means what), every answer
in one shape: ``{"error": type, "message": text, "request_id": id}``.

A request FastAPI cannot parse (a bad query value) is a ``UsageError`` (400); an unknown
route is a 404 in the same shape; anything else is a 500 whose message says no more
than that (the traceback goes to the server's log, never to the caller). An error that says when
to ask again (a ``retry_after`` field: a throttled login, a busy server) carries it as
``Retry-After``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from costor.errors import CostorError, NotAuthenticated, UsageError

logger = logging.getLogger("costor.server")


def error_response(request: Request, error: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    if isinstance(error, CostorError):
        status, kind, message = error.http_status, type(error).__name__, str(error)
    else:
        logger.exception(f"request {request_id}: unexpected error", exc_info=error)
        status, kind, message = 500, "InternalError", "internal error (see the server's log)"
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, NotAuthenticated) else {}
    if isinstance(error, CostorError) and "retry_after" in error.fields:
        headers["Retry-After"] = str(error.fields["retry_after"])  # 429, 503: when to ask again
    return JSONResponse(
        {"error": kind, "message": message, "request_id": request_id},
        status_code=status,
        headers=headers,
    )


def _page(request: Request, error: Exception) -> Response | None:
    """The web UI's page for an error on one of its pages (``app.state.page_error``,
    set by ``costor.server.ui.mount``), None for the API's routes."""
    page_error = getattr(request.app.state, "page_error", None)
    return page_error(request, error) if page_error is not None else None


def install_error_handlers(app: FastAPI) -> None:
    async def costor_error(request: Request, error: Exception) -> Response:
        return _page(request, error) or error_response(request, error)

    async def invalid_request(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        page = _page(request, UsageError(message=f"invalid request: {problems}"))
        if page is not None:
            return page
        return JSONResponse(
            {
                "error": "UsageError",
                "message": f"invalid request: {problems}",
                "request_id": getattr(request.state, "request_id", None),
            },
            status_code=400,
        )

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        page = _page(request, error)
        if page is not None:
            return page
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(error.status_code, "HTTPError")
        return JSONResponse(
            {
                "error": kind,
                "message": str(error.detail),
                "request_id": getattr(request.state, "request_id", None),
            },
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    app.add_exception_handler(CostorError, costor_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
