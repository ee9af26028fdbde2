"""The staging cache: packs are written to a local directory and uploaded in the
background, so a slow object store does not slow reading, chunking and compressing.

Contract it keeps (the backend contract, seen from the pool):

* ``put`` of a pack returns once the pack is durable in the staging directory (an
  atomic, fsynced local write); the upload runs on ``uploads`` background threads.
* ``put`` of anything else (index segments, snapshots, identity, key slots) is a
  **barrier**: it first waits until every pack staged before it is in the store, and
  fails if any upload failed. So an index segment or a snapshot never reaches the store
  before the packs it names — with a verifying stack underneath, never before they are
  verified (the pool writes packs, then the index segment, then the snapshot).
* Reads of a pack that is still staged are served from the staging directory; listing
  shows staged and stored objects together.
* Crash safety: a staged pack whose upload did not finish (killed process, store down)
  stays in the staging directory and is uploaded when the next process opens the pool;
  the next backup adopts it like any pack no index names (``Pool.adopt_orphan_packs``),
  so its blobs are reused, and prune (later) removes whatever stays unreferenced.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from costor.errors import ObjectNotFound
from costor.store.backends.base import Backend, ObjectInfo
from costor.store.backends.local import LocalBackend

STAGED_PREFIXES = ("packs/",)


class StagingBackend:
    def __init__(
        self, inner: Backend, directory: str | Path, *, uploads: int = 2, fsync: bool = True
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.staging = LocalBackend(directory, fsync=fsync)
        self._executor = ThreadPoolExecutor(max(1, uploads), thread_name_prefix="upload")
        self._pending: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self.uploaded = 0  # counters for reports and tests
        self.resumed = 0
        self.staging.cleanup_temporaries()
        for info in self.staging.list(""):  # left by a process that did not finish
            self.resumed += 1
            self._enqueue(info.name)

    # --- writing ----------------------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        if name.startswith(STAGED_PREFIXES):
            self.staging.put(name, data)
            self._enqueue(name)
            return
        self.drain()
        self.inner.put(name, data)

    def _enqueue(self, name: str) -> None:
        with self._lock:
            if name not in self._pending:
                self._pending[name] = self._executor.submit(self._upload, name)

    def _upload(self, name: str) -> None:
        self.inner.put(name, self.staging.get(name))
        self.staging.delete(name)
        with self._lock:
            self._pending.pop(name, None)
            self.uploaded += 1

    def drain(self) -> None:
        """Wait for every upload started so far; raise the first failure (its pack
        stays staged for the next run)."""
        with self._lock:
            waiting = list(self._pending.items())
        first_error: BaseException | None = None
        for name, future in waiting:
            error = future.exception()
            if error is not None:
                with self._lock:
                    if self._pending.get(name) is future:
                        del self._pending[name]  # a later run (or put) tries again
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._executor.shutdown(wait=True)

    # --- reading ----------------------------------------------------------------------

    def get(self, name: str) -> bytes:
        if name.startswith(STAGED_PREFIXES):
            try:
                return self.staging.get(name)
            except ObjectNotFound:
                pass  # not staged, or uploaded (and removed) just now
        return self.inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if name.startswith(STAGED_PREFIXES):
            try:
                return self.staging.get_range(name, offset, length)
            except ObjectNotFound:
                pass
        return self.inner.get_range(name, offset, length)

    def exists(self, name: str) -> bool:
        return (name.startswith(STAGED_PREFIXES) and self.staging.exists(name)) or (
            self.inner.exists(name)
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        for info in self.staging.list(prefix):
            seen.add(info.name)
            yield info
        for info in self.inner.list(prefix):
            if info.name not in seen:
                yield info

    def delete(self, name: str) -> None:
        self.staging.delete(name)
        self.inner.delete(name)
