"""Downloads (docs/server.md, "Downloads"): one file of a snapshot, with HTTP range
requests; a directory as a ``.tar``, ``.tar.zst`` or ``.zip`` stream; the versions of a
path across a client's snapshots. Each route parses, calls one use case of
costor/ops/restore/download.py and formats; visibility is costor/server/visible.py's (a
token limited to some clients gets 404 for another client's snapshot or client) and each needs
``snapshots.read`` on the snapshot's client (403 without it, costor/server/permissions.py).

Why a download does not hold the gate while it streams: the gate lets one request use
the shared Context at a time (gate.py), and a transfer may last hours; every other
request would wait for it. So a route opens the download inside the gate (the snapshot
resolved as the token may see it, a reader lease, the index, the path checked, the
audit log's ``started`` record) and streams outside it: an opened download holds a
Pool of its own (opened for it; a Pool is thread-safe for reads, costor/store/pool.py)
and needs the Context no more. It enters the gate again only to close, for a moment:
the audit record of how the download ended is written through the Context's state
database, which on SQLite must not be in use while the daemon forks a job (gate.py).
The other choice, a Context per download, would derive each pool's key again
(argon2id, ~0.2 s) for every download and use a database outside the gate.

A client that goes away mid-download: Starlette cancels the response's body when the
server reports ``http.disconnect``; the body's ``finally`` closes the download, which
stops the archive writer's thread (its next write raises), releases the lease and
records the download as ``failed`` (``ConnectionAbortedError``). An error while
streaming (damaged data; an archive entry refused, as ``costor restore --archive``
exits 1) is raised from the body after the status was sent, so that the server ends
the connection without finishing the response: a file (``Content-Length``) is cut
short, an archive (chunked) never gets its last chunk, and the archive itself stays
unfinished (the writer never ends a tar, a zstd frame or a zip after an error:
costor/store/restore/archive.py). app.py's request-id middleware is pure ASGI for this
reason: it lets such an error through (tests/server/test_downloads.py, the damage test).

How many at once: at most :data:`MAX_DOWNLOADS` stream at a time (each holds a pool,
a lease and the archive writer's read-ahead, ~tens of MiB); one more answers **503**
with ``Retry-After`` at once rather than queueing behind hours of transfers.
"""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse

from costor.errors import RangeNotSatisfiable, ServerBusy, UnknownResource
from costor.ops.restore.download import (
    ByteRange,
    Download,
    file_versions,
    open_archive,
    open_file,
)
from costor.server.errors import error_response
from costor.server.permissions import Access, requires, use
from costor.server.visible import resolve_visible

# One range, "bytes=first-[last]" or "bytes=-suffix"; anything else (several ranges,
# another unit, a malformed or invalid one) is ignored and the whole file sent, as
# RFC 9110 §14.2 allows.
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_END = object()

_BINARY: dict[str, Any] = {"content": {"application/octet-stream": {}}}
_ARCHIVES = ("application/x-tar", "application/zstd", "application/zip")
# Backed-up content: browsing trees, file versions, downloads (costor/config/access.py).
READ = "snapshots.read"
MAX_DOWNLOADS = 8  # streaming at once (see the module docstring)
_streaming = threading.BoundedSemaphore(MAX_DOWNLOADS)


def _slot() -> None:
    """Take one of the :data:`MAX_DOWNLOADS` slots, or refuse at once (503)."""
    if not _streaming.acquire(blocking=False):
        raise ServerBusy(reason=f"{MAX_DOWNLOADS} downloads are streaming", retry_after=30)


def router() -> APIRouter:
    """The download routes (which snapshot a reference names for a caller:
    :func:`costor.server.visible.resolve_visible`)."""
    routes = APIRouter(tags=["downloads"])

    @routes.get(
        "/snapshots/{snapshot}/file",
        response_class=Response,
        responses={
            200: {"description": "the whole file", **_BINARY},
            206: {"description": "the range asked for (Content-Range)", **_BINARY},
            416: {"description": "the range cannot be satisfied"},
        },
    )
    def get_file(
        request: Request,
        snapshot: str,
        path: str,
        range: Annotated[str | None, Header(description="bytes=first-last | bytes=-n")] = None,
        access: Access = requires(READ, per_object=True),
    ) -> Response:
        """One regular file of the snapshot, verified as it is read; a single byte range
        (`Range: bytes=…`) answers 206 with `Content-Range`. `ETag` names the content."""
        wanted = byte_range(range)
        _slot()
        try:
            with use(request) as ctx:
                _pool, found = resolve_visible(ctx, access.grant, snapshot, access.permission)
                download = open_file(ctx, snapshot=found.id, path=path, byte_range=wanted)
        except RangeNotSatisfiable as error:
            _streaming.release()
            refused = error_response(request, error)
            refused.headers["Content-Range"] = f"bytes */{error.fields['size']}"
            return refused
        except BaseException:
            _streaming.release()
            raise
        headers = {
            "Content-Length": str(download.stop - download.start),
            "Content-Disposition": disposition(download.name),
            "ETag": f'"{download.etag}"',
            "Accept-Ranges": "bytes",
        }
        if download.partial:
            headers["Content-Range"] = f"bytes {download.start}-{download.stop - 1}/{download.size}"
        return _DownloadResponse(
            request,
            download,
            status_code=206 if download.partial else 200,
            media_type="application/octet-stream",
            headers=headers,
        )

    @routes.get(
        "/snapshots/{snapshot}/archive",
        response_class=Response,
        responses={
            200: {
                "description": "the archive, streamed",
                "content": {media_type: {} for media_type in _ARCHIVES},
            }
        },
    )
    def get_archive(
        request: Request,
        snapshot: str,
        path: str = "/",
        format: str = "tar",
        access: Access = requires(READ, per_object=True),
    ) -> Response:
        """`path` of the snapshot as an archive (`tar`, `tar.zst`, `zip`), streamed as it is
        written: the same bytes as `costor restore SNAPSHOT PATH --archive - --format F`."""
        _slot()
        try:
            with use(request) as ctx:
                _pool, found = resolve_visible(ctx, access.grant, snapshot, access.permission)
                download = open_archive(ctx, snapshot=found.id, path=path, format=format)
        except BaseException:
            _streaming.release()
            raise
        return _DownloadResponse(
            request,
            download,
            media_type=download.media_type,
            headers={"Content-Disposition": disposition(download.name)},
        )

    @routes.get("/clients/{client}/versions")
    def get_versions(
        request: Request,
        client: str,
        path: str,
        access: Access = requires(READ, per_object=True),
    ) -> dict[str, Any]:
        """The versions of `path` across the client's snapshots: each distinct content
        once, newest first, with the snapshots that hold it."""
        access.client(client, missing=UnknownResource(kind="client", name=client))
        with use(request) as ctx:
            return file_versions(ctx, client=client, path=path).to_json()

    return routes


def byte_range(header: str | None) -> ByteRange | None:
    """The one range a ``Range`` header asks for, or None (the whole file)."""
    if header is None:
        return None
    matched = _RANGE.match(header)
    if matched is None:
        return None
    first, last = matched.groups()
    if first:
        if last and int(last) < int(first):
            return None  # invalid: ignored (RFC 9110 §14.1.1)
        return ByteRange(first=int(first), last=int(last) if last else None)
    if last:
        return ByteRange(suffix=int(last))
    return None


def disposition(name: str) -> str:
    """``attachment`` with the name twice: plain ASCII for old clients, and RFC 6266's
    ``filename*`` in UTF-8 (quotes, backslashes and controls never reach the header)."""
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return (
        f"attachment; filename=\"{plain or 'download'}\"; filename*=UTF-8''{quote(name, safe='')}"
    )


class _DownloadResponse(StreamingResponse):
    """A download's streamed response, which closes the download when it ends: sent
    whole (``ok``), cut by an error from the body (that error), or ended because the
    client left (Starlette's disconnect watch cancels the body, or the middleware's
    task is cancelled: ``ConnectionAbortedError``). The ``finally`` is in ``__call__``,
    a coroutine that is awaited, not in the body's async generator, which a cancelled
    send leaves suspended and only the garbage collector would close."""

    def __init__(self, request: Request, download: Download, **kwargs: Any) -> None:
        super().__init__(self._chunks(download.chunks()), **kwargs)
        self._request, self._download = request, download
        self._complete = self._closed = False

    async def _chunks(self, chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
        # Each chunk on a worker thread: reading blobs and waiting on the archive
        # writer block.
        while (chunk := await anyio.to_thread.run_sync(next, chunks, _END)) is not _END:
            assert isinstance(chunk, bytes)
            yield chunk
        self._complete = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except BaseException as error:
            if isinstance(error, anyio.get_cancelled_exc_class()):
                await self._closing(ConnectionAbortedError("the client disconnected"))
                raise
            await self._closing(error)
            raise
        gone = None if self._complete else ConnectionAbortedError("the client disconnected")
        await self._closing(gone)

    async def _closing(self, failure: BaseException | None) -> None:
        with anyio.CancelScope(shield=True):  # perhaps being cancelled: close anyway
            await anyio.to_thread.run_sync(self._close, failure)

    def _close(self, failure: BaseException | None) -> None:
        """Inside the gate, as the request that opened it (see the module docstring);
        its slot is free again whatever happens."""
        if self._closed:
            return
        self._closed = True
        try:
            with use(self._request):
                self._download.close(failure)
        finally:
            _streaming.release()
