"""Downloads from a snapshot, for the site server (docs/server.md): one file's content
(or a byte range of it), a directory as an archive stream (``.tar``, ``.tar.zst``,
``.zip``), and the versions of one path across a client's snapshots.

A download is opened, then read, then closed, and only the opening needs the
:class:`Context`: :func:`open_file` and :func:`open_archive` resolve the snapshot, take a
reader lease (a prune meanwhile waits), load the index, check what they can before a
byte is sent (the path, a regular file, the range, the format) and write the audit
log's ``started`` record (a read of backed-up content: not read if that record cannot
be written). What they return holds its own :class:`~costor.store.pool.Pool` (opened for
this download, thread-safe for reads: costor/store/pool.py) and the audit caller with
the request's actor, source and request id copied: it can be read on any thread while
the Context serves other requests. :meth:`Download.close` ends it: the producer thread
stopped, the lease released, damaged blob copies recorded, the audit record of how it
ended (``ok``, or ``failed`` with why: a client that went away, damaged data) written
through the Context's state database, so call it where that database may be used (the
server: inside its gate, see costor/server/gate.py).

Memory is bounded whatever the size: a file is read blob by blob (the first blob found
from the index's plaintext lengths, so a range costs only the blobs it covers), each
blob alone (no read windows kept); an
archive is written by the same writer as ``costor restore --archive`` on a thread of its
own into a :class:`_Pipe` of :data:`PIPE_CHUNKS` chunks of :data:`PIPE_CHUNK` bytes that
the reader empties, so a slow reader holds the writer back and a reader that leaves
stops it (the writer's next write raises).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any

from costor.errors import (
    DataCorruption,
    NotARegularFile,
    PathNotInSnapshot,
    RangeNotSatisfiable,
    UnknownResource,
    UsageError,
)
from costor.ops.audit import StateCaller, audited
from costor.ops.context import Context
from costor.ops.restore.run import record_damage
from costor.ops.restore.snapshots import list_snapshots, open_named_pool, resolve
from costor.store.gc.leases import Lease, reader_lease
from costor.store.pool import Pool
from costor.store.restore.archive import resolve_format, write_archive
from costor.store.snapshot import Snapshot
from costor.store.tree import CONTENT_TYPES, DIR, SYMLINK, Node

PIPE_CHUNK = 256 * 1024  # bytes handed to the HTTP response at a time
PIPE_CHUNKS = 8  # chunks waiting in the pipe: 2 MiB between the writer and the reader
STOP_POLL = 0.5  # seconds: how soon a blocked writer notices that the reader left
JOIN_TIMEOUT = 30.0  # seconds to wait for a stopped writer thread (it is a daemon thread)

MEDIA_TYPES = {"tar": "application/x-tar", "tar.zst": "application/zstd", "zip": "application/zip"}


@dataclass(frozen=True)
class ByteRange:
    """One range of an HTTP ``Range: bytes=`` header: ``first-last`` (``last`` None: to
    the end), or a suffix ``-length`` (``first`` None: the last ``suffix`` bytes)."""

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def span(self, size: int) -> tuple[int, int]:
        """[start, stop) within a file of ``size`` bytes (RFC 9110 §14.1.2: a last
        position past the end is the end; a range starting at or past it, or an empty
        suffix, cannot be satisfied)."""
        if self.first is None:
            length = min(self.suffix or 0, size)
            if length <= 0:
                raise RangeNotSatisfiable(range=self.shown(), size=size)
            return size - length, size
        if self.first >= size:
            raise RangeNotSatisfiable(range=self.shown(), size=size)
        stop = size if self.last is None else min(self.last + 1, size)
        return self.first, stop

    def shown(self) -> str:
        if self.first is None:
            return f"bytes=-{self.suffix}"
        return f"bytes={self.first}-{'' if self.last is None else self.last}"


class _Stopped(Exception):
    """The reader left: the archive writer stops at its next write."""


class Download(ABC):
    """What both kinds of download share: the snapshot and path, the pool opened for it,
    its lease, and the audit record left open until :meth:`close`."""

    def __init__(
        self, opening: _Opening, audit: ExitStack, *, snapshot: Snapshot, pool_name: str, path: str
    ) -> None:
        self.pool = opening.pool
        self._lease = opening.lease
        self._audit = audit
        self._closed = False
        self.bytes_sent = 0
        self.noted = opening.noted  # the audit record's detail, completed at close
        self.snapshot_id = snapshot.id
        self.client = snapshot.client
        self.pool_name = pool_name
        self.path = path

    @abstractmethod
    def chunks(self) -> Iterator[bytes]:
        """The download's bytes, in pieces (read on any one thread at a time)."""

    def close(self, error: BaseException | None = None) -> None:
        """End the download: ``error`` is why it did not complete (None: it did). Writes
        the audit record (see the module's docstring: where the Context's database may
        be used). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop()
        finally:
            try:
                record_damage(self.pool)
            finally:
                if self._lease is not None:
                    self._lease.release()
                self.noted["bytes_sent"] = self.bytes_sent
                if error is None:
                    self._audit.close()
                else:
                    self._audit.__exit__(type(error), error, error.__traceback__)

    def _stop(self) -> None:  # noqa: B027  (a hook: only an archive has a thread to stop)
        """Stop the work of a download that produces on a thread of its own."""


class FileDownload(Download):
    """One regular file's bytes ``[start, stop)``, read blob by blob and verified."""

    def __init__(
        self,
        opening: _Opening,
        audit: ExitStack,
        *,
        snapshot: Snapshot,
        pool_name: str,
        path: str,
        node: Node,
        lengths: list[int],
        start: int,
        stop: int,
        partial: bool,
    ) -> None:
        super().__init__(opening, audit, snapshot=snapshot, pool_name=pool_name, path=path)
        self.node = node
        self.size = node.size
        self.start, self.stop, self.partial = start, stop, partial
        self._lengths = lengths

    @property
    def name(self) -> str:
        """The file's name, as text (undecodable bytes escaped)."""
        return self.node.name.decode("utf-8", "backslashreplace")

    @property
    def etag(self) -> str:
        """A strong entity tag: the same content ids are the same bytes."""
        return content_id(self.node)

    def chunks(self) -> Iterator[bytes]:
        """The bytes of ``[start, stop)``, a blob (or part of one) at a time."""
        position = 0
        for blob, length in zip(self.node.content, self._lengths, strict=True):
            end = position + length
            if end > self.start and position < self.stop:
                # Authenticated and verified against its id. Without the pool's read
                # windows: they would keep up to 64 MiB per download (costor/store/pool.py
                # READ_WINDOWS_CACHED) for a file read once, in order.
                data = self.pool.read_blob(blob, window=False)
                piece = data[max(self.start - position, 0) : min(self.stop - position, length)]
                self.bytes_sent += len(piece)
                yield piece
            position = end
            if position >= self.stop:
                return


class ArchiveDownload(Download):
    """A snapshot's directory as an archive, written on a thread into a bounded pipe."""

    def __init__(
        self,
        opening: _Opening,
        audit: ExitStack,
        *,
        snapshot: Snapshot,
        pool_name: str,
        path: str,
        format: str,
    ) -> None:
        super().__init__(opening, audit, snapshot=snapshot, pool_name=pool_name, path=path)
        self.format = format
        self.media_type = MEDIA_TYPES[format]
        self._pipe = _Pipe()
        self._thread = threading.Thread(
            target=self._produce, args=(snapshot,), name="archive-download", daemon=True
        )

    @property
    def name(self) -> str:
        """``CLIENT-SNAPSHOT[-LAST PART OF PATH].FORMAT``."""
        last = [part for part in self.path.split("/") if part and part != "."][-1:]
        return "-".join([self.client, self.snapshot_id[:12], *last]) + "." + self.format

    def start(self) -> None:
        self._thread.start()

    def chunks(self) -> Iterator[bytes]:
        """The archive's bytes as the writer makes them; its error, if it fails (then
        the archive is not finished: the response must not end as if it were)."""
        while True:
            item = self._pipe.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            self.bytes_sent += len(item)
            yield item

    def _produce(self, snapshot: Snapshot) -> None:
        try:
            result = write_archive(self.pool, snapshot, self.path, self._pipe, format=self.format)  # type: ignore[arg-type]  # _Pipe is the writable binary stream it needs
            self.noted.update(files=result.files, bytes=result.bytes_written)
            self._pipe.finish()
        except _Stopped:
            pass  # the reader left; close() records why
        except BaseException as error:  # noqa: BLE001  (handed to the reader, which raises it)
            self._pipe.fail(error)

    def _stop(self) -> None:  # noqa: B027  (a hook: only an archive has a thread to stop)
        self._pipe.stop()
        if self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT)


class _Pipe:
    """The binary stream the archive writer writes to, and the queue of chunks the HTTP
    response reads from: at most :data:`PIPE_CHUNKS` chunks wait, so a slow reader holds
    the writer back. Not seekable, so a zip gets data descriptors, exactly as
    ``costor restore --archive - --format zip`` into a pipe."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(PIPE_CHUNKS)
        self._buffer = bytearray()
        self._stopped = threading.Event()

    # --- the writer's side (a thread) ----------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        while len(self._buffer) >= PIPE_CHUNK:
            self._put(bytes(self._buffer[:PIPE_CHUNK]))
            del self._buffer[:PIPE_CHUNK]
        return len(data)

    def flush(self) -> None:
        """Nothing: the buffer goes out in whole chunks, and the rest at :meth:`finish`."""

    def finish(self) -> None:
        if self._buffer:
            self._put(bytes(self._buffer))
            self._buffer.clear()
        self._put(None)

    def fail(self, error: BaseException) -> None:
        try:
            self._put(error)
        except _Stopped:
            pass

    def _put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._stopped.is_set():
                raise _Stopped()
            try:
                self._queue.put(item, timeout=STOP_POLL)
                return
            except queue.Full:
                continue

    # --- the reader's side ---------------------------------------------------------

    def get(self) -> bytes | BaseException | None:
        """The next chunk, the writer's error, or None at the end; :class:`_Stopped` once
        :meth:`stop` was called (a reader still waiting then is let go)."""
        while not self._stopped.is_set():
            try:
                return self._queue.get(timeout=STOP_POLL)
            except queue.Empty:
                continue
        return _Stopped()

    def stop(self) -> None:
        """The reader leaves: the writer's next write raises; what waits is dropped."""
        self._stopped.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


def content_id(node: Node) -> str:
    """A short digest of what a node holds (a file's blob ids and size, a link's target,
    a directory's tree): equal ids, equal content."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(node.type.encode() + b"\0" + str(node.size).encode() + b"\0")
    if node.type in CONTENT_TYPES:  # a file's or an image's blobs
        digest.update(b"".join(node.content))
    elif node.type == SYMLINK:
        digest.update(node.target or b"")
    elif node.type == DIR:
        digest.update(node.subtree or b"")
    else:
        digest.update(str(node.rdev).encode())
    return digest.hexdigest()


def checked_path(path: str) -> str:
    """A path inside a snapshot as the API takes it: ``..`` is refused (it names
    nothing a restore would write), ``.`` and empty parts are dropped."""
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts or "\0" in path:
        raise UsageError(message=f"path {path!r}: '..' and NUL are not allowed")
    return "/" + "/".join(parts)


def open_file(
    ctx: Context, *, snapshot: str, path: str, byte_range: ByteRange | None = None
) -> FileDownload:
    """Open ``path`` (a regular file) of ``snapshot`` for reading, all of it or
    ``byte_range``. Raises before anything is read: :class:`PathNotInSnapshot`,
    :class:`NotARegularFile`, :class:`RangeNotSatisfiable`, or
    :class:`~costor.errors.AuditUnavailable` when the audit log cannot be written."""
    path = checked_path(path)
    pool_name, pool, found = resolve(ctx, snapshot, load_index=False)
    with _Opening(ctx, pool) as opening:
        node = pool.find_node(bytes.fromhex(found.tree), path)
        if node is None or node.name == b"":
            if node is None:
                raise PathNotInSnapshot(path=path, snapshot=found.id[:12])
            raise NotARegularFile(path=path, snapshot=found.id[:12], type=DIR)
        if node.type not in CONTENT_TYPES:  # an image downloads as its bytes
            raise NotARegularFile(path=path, snapshot=found.id[:12], type=node.type)
        lengths = [pool.locate(blob).raw_length for blob in node.content]
        if sum(lengths) != node.size:
            raise DataCorruption(
                pack="(tree)",
                reason=f"the blobs of {path!r} hold {sum(lengths)} bytes, "
                f"its recorded size is {node.size}",
            )
        start, stop = byte_range.span(node.size) if byte_range is not None else (0, node.size)
        audit = opening.audit(
            found,
            pool_name,
            path,
            range=None if byte_range is None else f"bytes={start}-{stop - 1}",
        )
        return FileDownload(
            opening,
            audit,
            snapshot=found,
            pool_name=pool_name,
            path=path,
            node=node,
            lengths=lengths,
            start=start,
            stop=stop,
            partial=byte_range is not None,
        )


def open_archive(ctx: Context, *, snapshot: str, path: str, format: str) -> ArchiveDownload:
    """Open ``path`` of ``snapshot`` as an archive of ``format`` (tar, tar.zst, zip),
    written on a thread as it is read: the same writer, names, zip renaming and
    refusals as ``costor restore --archive`` (costor/store/restore/archive.py). An
    entry refused there makes the stream fail at its end, as the CLI exits 1."""
    path = checked_path(path)
    chosen = resolve_format("-", format)  # an unknown format fails before the pool opens
    pool_name, pool, found = resolve(ctx, snapshot, load_index=False)
    with _Opening(ctx, pool) as opening:
        if pool.find_node(bytes.fromhex(found.tree), path) is None:
            raise PathNotInSnapshot(path=path, snapshot=found.id[:12])
        audit = opening.audit(found, pool_name, path, format=chosen)
        download = ArchiveDownload(
            opening,
            audit,
            snapshot=found,
            pool_name=pool_name,
            path=path,
            format=chosen,
        )
        download.start()
        return download


class _Opening(AbstractContextManager["_Opening"]):
    """The lease taken before the index is loaded (costor/store/gc/leases.py), released
    again if the opening fails; and the audit record opened last."""

    def __init__(self, ctx: Context, pool: Pool) -> None:
        self.ctx = ctx
        self.pool = pool
        self.lease: Lease | None = None
        self.noted: dict[str, Any] = {}

    def __enter__(self) -> _Opening:
        self.lease = reader_lease(self.pool, "download")
        try:
            self.ctx.load_index(self.pool)
        except BaseException:
            if self.lease is not None:
                self.lease.release()
            raise
        return self

    def audit(self, snapshot: Snapshot, pool_name: str, path: str, **detail: Any) -> ExitStack:
        """The audit record, ``started`` now (fail closed), ended by ``close``. Its
        caller is a copy of who asks now: the Context serves others meanwhile."""
        ctx = self.ctx
        caller = StateCaller(
            engine=ctx.engine, actor=ctx.actor, source=ctx.source, request_id=ctx.request_id
        )
        stack = ExitStack()
        self.noted = stack.enter_context(
            audited(
                caller,
                "download",
                f"client:{snapshot.client}",
                detail={"snapshot": snapshot.id, "pool": pool_name, "path": path, **detail},
                before=True,
            )
        )
        return stack

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if error is not None and self.lease is not None:
            self.lease.release()


# --- versions of a path ---------------------------------------------------------------


@dataclass
class FileVersion:
    """One content a path had, and the snapshots that hold it."""

    content_id: str
    type: str
    size: int
    mode: int
    mtime_ns: int  # in the newest snapshot that holds it
    snapshots: list[dict[str, str]] = field(default_factory=list)  # id, time, pool

    def to_json(self) -> dict[str, Any]:
        times = [s["time"] for s in self.snapshots]
        return {
            "content_id": self.content_id,
            "type": self.type,
            "size": self.size,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "first_seen": min(times),
            "last_seen": max(times),
            "snapshots": self.snapshots,
        }


@dataclass
class FileVersions:
    """``path`` across a client's snapshots: each distinct content once, newest first."""

    client: str
    path: str
    versions: list[FileVersion]

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "path": self.path,
            "versions": [version.to_json() for version in self.versions],
        }


def file_versions(ctx: Context, *, client: str, path: str) -> FileVersions:
    """The versions of ``path`` in every snapshot of ``client`` (in any pool, under any
    name it had): snapshots whose node there has the same content (:func:`content_id`:
    a file's blob ids and size) are one version. Trees only are read (no lease, as
    ``costor ls``). A client without snapshots is :class:`UnknownResource`."""
    path = checked_path(path)
    snapshots = list_snapshots(ctx, client=client)
    if not snapshots:
        raise UnknownResource(kind="client", name=client)
    opened: dict[str, Pool] = {}
    versions: dict[str, FileVersion] = {}
    for pool_name, snapshot in reversed(snapshots):  # newest first
        pool = opened.get(pool_name)
        if pool is None:
            pool = opened[pool_name] = open_named_pool(ctx, pool_name, load_index=True)
        node = pool.find_node(bytes.fromhex(snapshot.tree), path)
        if node is None or node.name == b"":
            continue
        key = content_id(node)
        version = versions.get(key)
        if version is None:
            version = versions[key] = FileVersion(
                key, node.type, node.size, node.mode, node.mtime_ns
            )
        version.snapshots.append({"id": snapshot.id, "time": snapshot.time, "pool": pool_name})
    return FileVersions(client=client, path=path, versions=list(versions.values()))


__all__ = [
    "ArchiveDownload",
    "ByteRange",
    "FileDownload",
    "FileVersions",
    "file_versions",
    "open_archive",
    "open_file",
]
