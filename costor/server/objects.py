"""The Backup API: a pool's stored objects over HTTP, as they are (still encrypted: the
server never opens a pool's key for it), under ``/api/v1/pools/{pool}/objects/``. Agents
and peer sites add objects with an ``append`` token; a copy or a replica reads them with
a ``read`` token; ``costor/store/backends/http.py`` is the backend that speaks it, so a
pool reached this way is a backend like any other (``costor pool copy`` to and from
``https://`` locations).

| Method | Path | Permission (on every client) |
|---|---|---|
| ``HEAD`` | ``objects/NAME`` | ``objects.append`` or ``objects.read``: exists? (``Content-Length``) |
| ``GET`` | ``objects/NAME`` | ``objects.read``: the bytes (one ``Range: bytes=…``: 206) |
| ``PUT`` | ``objects/NAME`` | ``objects.append``: store the body |
| ``GET`` | ``objects/?prefix=P`` | ``objects.append`` or ``objects.read``: names and sizes |
| ``DELETE`` | ``objects/NAME`` | ``admin`` (audited as ``object.delete``) |

Names: a pool's own kinds only (docs/format.md, "Objects"), each in its exact shape —
``costor-pool.json``, ``keys/<32 hex>``, ``packs/<h[0:2]>/<h[2:4]>/<h>``, ``index/<h>``,
``snapshots/<h>``, ``condemned/<h>``, ``damaged/<h>``, ``anchors/<h>`` (``h``: 64 hex).
Leases (``locks/``) are a local process's, rewritten in place to refresh them: not
objects of this API. Anything else, ``..`` or an absolute path included, is 400.

Writes, **verified on arrival**:

* an object named by a hash of its bytes is hashed (unkeyed BLAKE3-256) as its body
  arrives; bytes that do not hash to the name are refused (422 ``ObjectRefused``) and
  nothing is stored, so a wrong object can never be planted. Bytes that do are stored
  (again: a put of a verified object replaces a damaged copy and otherwise changes
  nothing), 201.
* the identity file and key slots (not named by their bytes) are stored only when
  absent (201); the same bytes again are 200 and change nothing; other bytes are 409
  (``ObjectExists``). One server process decides this under a lock (a second server on
  the same storage could race: both see it absent).

Bodies are streamed: at most :data:`MAX_OBJECT` bytes (a pack of the largest
``pack_size`` with its last blob and trailer), refused with 413 as soon as they pass
it; up to :data:`SPILL_AT` they are kept in memory, beyond it written to an unlinked
temporary file in the state directory and handed to the backend as a read-only memory
map (file pages the kernel can drop, not the process's own memory). Reads are streamed
in :data:`READ_CHUNK` ranges; a listing is streamed as NDJSON lines, one per object,
ended by ``{"end": true, "count": N}`` (a listing cut short has no end line), so a pool
of millions of objects is never one list in memory.

Each request takes the gate only to check who asks and resolve the pool's storage (its
filters, no staging); the transfer runs outside it, on the backend (safe to call from
several threads).
"""

from __future__ import annotations

import json
import mmap
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Annotated, Any

import anyio
import blake3
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from costor.errors import (
    ObjectExists,
    ObjectNameRefused,
    ObjectNotFound,
    ObjectRefused,
    ObjectTooLarge,
    PermissionDenied,
    RangeNotSatisfiable,
    UnknownResource,
)
from costor.ops.audit import audited
from costor.ops.control.tokens import Grant
from costor.server.downloads import byte_range
from costor.server.errors import error_response
from costor.server.permissions import authenticated, use
from costor.server.schemas import ERROR_MEANING, ErrorDocument
from costor.store.backends.base import Backend
from costor.store.backends.registry import BackendSettings, open_backend

API = "/api/v1"
MIB = 1024 * 1024
# The largest pack: pack_size at most 512 MiB (costor/config/model.py), closed after
# the blob that reached it (a chunk is at most 8 MiB, sealed a little larger), plus its
# trailer (45 bytes a blob). 576 MiB leaves room for all of it.
MAX_OBJECT = 576 * MIB
SPILL_AT = 8 * MIB  # larger bodies go to a temporary file, not the process's memory
READ_CHUNK = 4 * MIB  # one ranged read of the backend per chunk sent
IDENTITY = "costor-pool.json"

_HEX64 = "[0-9a-f]{64}"
_HASH_NAMED = re.compile(
    rf"packs/(?P<a>[0-9a-f]{{2}})/(?P<b>[0-9a-f]{{2}})/(?P<pack>{_HEX64})"
    rf"|(?:index|snapshots|condemned|damaged|anchors)/(?P<hash>{_HEX64})"
)
_KEY_SLOT = re.compile(r"keys/[0-9a-f]{32}")
KINDS: tuple[str, ...] = (
    "costor-pool.json",
    "keys/",
    "packs/",
    "index/",
    "snapshots/",
    "condemned/",
    "damaged/",
    "anchors/",
)

router = APIRouter(prefix=f"{API}/pools/{{pool}}/objects", tags=["backup"])
_write_once = threading.Lock()  # put-if-absent of the objects not named by a hash


class Stored(BaseModel):
    """A put's answer: the object, its size, and whether this put wrote it."""

    name: str
    size: int
    stored: bool = Field(description="false: it was there with these bytes already")


@dataclass(frozen=True)
class ObjectName:
    """A name the Backup API accepts: ``digest`` is the hex BLAKE3-256 its bytes must
    hash to, or None for the identity file and key slots (written once)."""

    name: str
    digest: str | None


def object_name(name: str) -> ObjectName:
    """``name`` as one of a pool's kinds, or :class:`ObjectNameRefused` (400)."""
    if name == IDENTITY or _KEY_SLOT.fullmatch(name):
        return ObjectName(name, None)
    matched = _HASH_NAMED.fullmatch(name)
    if matched is None:
        kinds = ", ".join(k + ("…" if k.endswith("/") else "") for k in KINDS)
        raise ObjectNameRefused(name=name, reason=f"a pool's objects are {kinds}")
    if matched["pack"] is not None:
        if (matched["a"], matched["b"]) != (matched["pack"][:2], matched["pack"][2:4]):
            raise ObjectNameRefused(
                name=name, reason="a pack lies under packs/<its hash[0:2]>/<its hash[2:4]>/"
            )
        return ObjectName(name, matched["pack"])
    return ObjectName(name, matched["hash"])


def listing_prefix(prefix: str) -> str:
    """A prefix to list by: the start of a name, never one that could leave the pool
    (a backend lists the directory a prefix points into)."""
    *parents, last = prefix.split("/")
    if (
        "\\" in prefix
        or "\x00" in prefix
        or prefix.startswith("/")
        or len(prefix) > 200
        or any(part in ("", ".", "..") for part in parents)
        or last in (".", "..")
    ):
        raise ObjectNameRefused(name=prefix, reason="not a prefix of a pool's object names")
    return prefix


# --- who asks, and the pool's storage ------------------------------------------------


def _site_wide(grant: Grant, *permissions: str) -> None:
    """403 unless one of ``permissions`` is held on every client (a pool holds them all)."""
    if not any(grant.may(permission) for permission in permissions):
        raise PermissionDenied(
            reason=f"{' or '.join(permissions)} on every client is not granted to this "
            f"token (user {grant.user!r}, scope {grant.scope!r}): a pool holds every "
            "client's data"
        )


class _Backends:
    """The pools' backends, opened once and kept while the pool's settings (as applied)
    stay the same: an S3 client costs tens of milliseconds to make."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: dict[str, tuple[BackendSettings, Backend]] = {}

    def get(self, pool: str, settings: BackendSettings) -> Backend:
        with self._lock:
            known = self._opened.get(pool)
            if known is not None and known[0] == settings:
                return known[1]
            backend = open_backend(settings)
            self._opened[pool] = (settings, backend)
            return backend


_backends = _Backends()


@dataclass(frozen=True)
class _Pool:
    name: str
    backend: Backend
    spill_dir: Path


def _open_pool(request: Request, pool: str) -> _Pool:
    """The pool's storage (its filters, not its staging directory: an object put here
    is stored before the answer), inside the gate; 404 for a pool not declared."""
    with use(request) as ctx:
        if pool not in ctx.inventory.pools:
            raise UnknownResource(kind="pool", name=pool)
        settings = replace(ctx.backend_settings(ctx.pool_config(pool)), staging=None)
        spill_dir = Path(ctx.settings.state_dir) / "uploads"
    return _Pool(pool, _backends.get(pool, settings), spill_dir)


def _found(backend: Backend, checked: ObjectName) -> tuple[int, bytes | None]:
    """The stored size of an object, and its bytes when they were read to learn it;
    :class:`ObjectNotFound` when it is not there. The protocol has no stat: the
    identity file and key slots (small) are read; an object named by its hash is found
    by a listing of its own name (one request on S3, one directory on a disk — not the
    whole pool, which a listing by the identity file's name would walk)."""
    if checked.digest is None:
        data = backend.get(checked.name)
        return len(data), data
    for info in backend.list(checked.name):
        if info.name == checked.name:
            return info.size, None
    raise ObjectNotFound(name=checked.name)


def listable(name: str) -> bool:
    """Whether a stored name is one of this API's objects (what a listing shows)."""
    try:
        object_name(name)
    except ObjectNameRefused:
        return False
    return True


def _pool_for(request: Request, pool: str, grant: Grant, *permissions: str) -> _Pool:
    _site_wide(grant, *permissions)
    return _open_pool(request, pool)


_BINARY: dict[str, Any] = {"content": {"application/octet-stream": {}}}
_ERRORS = {
    **ERROR_MEANING,
    400: "not the name (or prefix) of a pool object",
    404: "no such object, or no such pool",
    409: "an object not named by its hash exists with other bytes",
    413: "larger than the largest pool object",
    416: "the range cannot be satisfied",
    422: "the bytes do not hash to the name: nothing was stored",
    503: "the pool's storage failed or is unreachable",
    507: "the pool's storage is full",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route may give, each in the one error shape."""
    return {status: {"model": ErrorDocument, "description": _ERRORS[status]} for status in statuses}


# --- listing ---------------------------------------------------------------------------


def _lines(backend: Backend, prefix: str) -> Iterator[bytes]:
    count = 0
    for info in backend.list(prefix):
        if not listable(info.name):
            continue  # leases, and anything else that is not an object of this API
        count += 1
        yield json.dumps({"name": info.name, "size": info.size}).encode() + b"\n"
    yield json.dumps({"end": True, "count": count}).encode() + b"\n"


async def _in_threads(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Each next chunk on a worker thread: the backend blocks."""
    end = object()
    while (chunk := await anyio.to_thread.run_sync(next, chunks, end)) is not end:
        assert isinstance(chunk, bytes)
        yield chunk


def _list(request: Request, pool: str, prefix: str, grant: Grant) -> StreamingResponse:
    opened = _pool_for(request, pool, grant, "objects.append", "objects.read")
    lines = _lines(opened.backend, listing_prefix(prefix))
    return StreamingResponse(_in_threads(lines), media_type="application/x-ndjson")


_LISTING: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'NDJSON: {"name", "size"} per object, then {"end": true, "count"}',
        "content": {"application/x-ndjson": {}},
    }
}


@router.get(
    "/",
    response_class=StreamingResponse,
    responses={**_LISTING, **_errors(400, 401, 403, 404, 503)},
)
def list_objects(
    request: Request,
    pool: str,
    prefix: Annotated[str, Query(description="names starting with it (packs/, keys/ …)")] = "",
    grant: Grant = Depends(authenticated),
) -> StreamingResponse:
    """The pool's objects whose names start with `prefix`, with their sizes, streamed
    as NDJSON in no particular order; the last line is `{"end": true, "count": N}`.
    Needs `objects.append` or `objects.read` on every client."""
    return _list(request, pool, prefix, grant)


# --- one object ------------------------------------------------------------------------


@router.head(
    "/{name:path}",
    responses={
        200: {"description": "it exists (Content-Length)"},
        **_errors(400, 401, 403, 404, 503),
    },
)
def has_object(
    request: Request, pool: str, name: str, grant: Grant = Depends(authenticated)
) -> Response:
    """Whether the object exists: 200 with its size as `Content-Length`, or 404. Needs
    `objects.append` or `objects.read` on every client."""
    checked = object_name(name)
    opened = _pool_for(request, pool, grant, "objects.append", "objects.read")
    size, _data = _found(opened.backend, checked)
    return Response(headers={"Content-Length": str(size), "Accept-Ranges": "bytes"})


@router.get(
    "/{name:path}",
    response_class=StreamingResponse,
    responses={
        200: {"description": "the object's bytes", **_BINARY},
        206: {"description": "the range asked for (Content-Range)", **_BINARY},
        **_errors(400, 401, 403, 404, 416, 503),
    },
)
def get_object(
    request: Request,
    pool: str,
    name: str,
    range: Annotated[str | None, Header(description="bytes=first-last")] = None,
    grant: Grant = Depends(authenticated),
) -> Response:
    """The object's bytes as stored, streamed; one `Range: bytes=first-last` (or
    `first-`, `-n`) answers 206 with `Content-Range`. Needs `objects.read` on every
    client."""
    checked = object_name(name)
    opened = _pool_for(request, pool, grant, "objects.read")
    size, data = _found(opened.backend, checked)
    wanted = byte_range(range)
    start, stop, status = 0, size, 200
    headers = {"Accept-Ranges": "bytes"}
    if wanted is not None:
        try:
            start, stop = wanted.span(size)
        except RangeNotSatisfiable as error:
            refused = error_response(request, error)
            refused.headers["Content-Range"] = f"bytes */{size}"
            return refused
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    if data is not None:
        chunks: Iterator[bytes] = iter([data[start:stop]] if stop > start else [])
    else:
        chunks = _ranges(opened.backend, checked.name, start, stop)
    return StreamingResponse(
        _in_threads(chunks),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


def _ranges(backend: Backend, name: str, start: int, stop: int) -> Iterator[bytes]:
    """The bytes [start, stop) in ranged reads; a short read (the object shrank or is
    damaged) raises, which cuts the connection: never a complete-looking end."""
    position = start
    while position < stop:
        length = min(READ_CHUNK, stop - position)
        yield backend.get_range(name, position, length)
        position += length


@router.put(
    "/{name:path}",
    status_code=201,
    responses={
        200: {"model": Stored, "description": "already stored with these bytes: unchanged"},
        201: {"model": Stored, "description": "stored"},
        **_errors(400, 401, 403, 404, 409, 413, 422, 503, 507),
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {}}}},
)
async def put_object(
    request: Request,
    response: Response,
    pool: str,
    name: str,
    grant: Grant = Depends(authenticated),
) -> Stored:
    """Store the body as the object `name`, verified on arrival: an object named by a
    hash of its bytes (packs, index segments, snapshots…) is stored only if its bytes
    hash to that name (else 422, nothing stored); the identity file and key slots only
    when absent (201) or byte-identical (200; else 409). Idempotent. Needs
    `objects.append` on every client."""
    checked = object_name(name)
    opened = await run_in_threadpool(_pool_for, request, pool, grant, "objects.append")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_OBJECT:
        raise ObjectTooLarge(name=name, limit=MAX_OBJECT)
    body = await _Body.receive(request, checked, opened.spill_dir)
    try:
        if checked.digest is not None and body.digest != checked.digest:
            raise ObjectRefused(
                name=name,
                reason=f"its bytes hash to {body.digest} (BLAKE3-256), not to its name",
            )
        stored = await run_in_threadpool(_store, opened.backend, checked, body)
    finally:
        body.close()
    response.status_code = 201 if stored else 200
    return Stored(name=name, size=body.size, stored=stored)


class _Body:
    """A request body as it arrived: its size, its BLAKE3-256, its bytes in memory or,
    past :data:`SPILL_AT`, in an unlinked temporary file."""

    def __init__(self) -> None:
        self.size = 0
        self.digest = ""
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None

    @classmethod
    async def receive(cls, request: Request, checked: ObjectName, spill_dir: Path) -> _Body:
        body = cls()
        hasher = blake3.blake3()
        try:
            async for chunk in request.stream():
                body.size += len(chunk)
                if body.size > MAX_OBJECT:
                    raise ObjectTooLarge(name=checked.name, limit=MAX_OBJECT)
                hasher.update(chunk)
                if body._file is None and len(body._memory) + len(chunk) > SPILL_AT:
                    body._file = await run_in_threadpool(_spill_file, spill_dir)
                    await run_in_threadpool(body._file.write, body._memory)
                    body._memory = bytearray()
                if body._file is not None:
                    await run_in_threadpool(body._file.write, chunk)
                else:
                    body._memory += chunk
        except BaseException:
            body.close()
            raise
        body.digest = hasher.hexdigest()
        return body

    def view(self) -> bytes | memoryview:
        """The bytes, for the backend's put (a read-only map of the spilled file)."""
        if self._file is None:
            return bytes(self._memory)
        self._file.flush()
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._map)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view still held by a backend's thread: the GC closes it
                pass
        if self._file is not None:
            self._file.close()


def _spill_file(spill_dir: Path) -> IO[bytes]:
    spill_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=spill_dir, prefix="object-")


def _store(backend: Backend, checked: ObjectName, body: _Body) -> bool:
    """Put the verified body; whether anything was written."""
    data = body.view()
    try:
        if checked.digest is not None:
            backend.put(checked.name, data)
            return True
        with _write_once:
            try:
                existing = backend.get(checked.name)
            except ObjectNotFound:
                backend.put(checked.name, data)
                return True
        if existing != data:
            raise ObjectExists(name=checked.name)
        return False
    finally:
        if isinstance(data, memoryview):
            data.release()


@router.delete(
    "/{name:path}",
    status_code=204,
    responses={204: {"description": "deleted"}, **_errors(400, 401, 403, 404, 503)},
)
def delete_object(
    request: Request, pool: str, name: str, grant: Grant = Depends(authenticated)
) -> Response:
    """Delete the object (a missing one too). Needs `admin` on every client; recorded in
    the audit log as `object.delete` of `pool:NAME`."""
    checked = object_name(name)
    opened = _pool_for(request, pool, grant, "admin")
    with use(request) as ctx, audited(ctx, "object.delete", f"pool:{pool}", detail={"name": name}):
        opened.backend.delete(checked.name)
    return Response(status_code=204)


__all__ = ["KINDS", "MAX_OBJECT", "ObjectName", "listing_prefix", "object_name", "router"]
