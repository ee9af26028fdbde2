"""The walk of a restore to a directory: the directories open on the way to the
current entry (the walk's own descriptors), the writer threads' work, and each
writer's own descriptors of the directories it writes in.

The walk hands files to the writers as it goes, in batches (:data:`BATCH_FILES` files
or :data:`BATCH_BYTES` of content, a large file alone). When :data:`BATCHES_HIGH`
batches are queued it waits until only :data:`BATCHES_LOW` are left, then walks on in
one burst. A walk that never waited kept a job, a future and its lock for every file of
the snapshot until the end (3 GB for 1,000,000 files); one woken whenever a writer
finished a batch (or a file) competed with the writers for the GIL all along, and the
writers' system calls with it: a restore of 20,000 small files took twice as long, with
twice the system time. So memory stays flat whatever the number of files, the walk
wakes once per ~1,500 files, and a job keeps no future unless another job needs its
outcome (the first name of a hard-link group). A job does not keep the walk's descriptor of its directory open; a writer opens
the directory itself, one component at a time without following links, and keeps the
few it wrote in last (:class:`WriterDirs`)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from costor.store.restore.confined import Parts, close_fd, open_parts
from costor.store.tree import Node

WRITER_DIRS = 16  # directories each writer keeps open (most files follow their siblings)
# A batch of files for one writer: one hand-off per batch, not per file.
BATCH_FILES = 64
BATCH_BYTES = 4 * 1024 * 1024  # content bytes; a file this large goes alone
BATCHES_HIGH = 32  # batches queued (~2,000 files) when the walk stops ...
BATCHES_LOW = 8  # ... until only so many are left

# One job of a batch: its place in the walk (the first failure by that order is the one
# raised), the future of its outcome if another job waits for it, the job and its args.
_Job = tuple[int, "Future[Any] | None", Callable[..., Any], tuple[Any, ...]]


class Walk:
    """The state of one restore's walk: the open directories leading to the current
    entry (each a descriptor, None in a dry run where the directory does not exist),
    what is left to do at the end, and the work handed to the writers in batches."""

    def __init__(self, root_fd: int | None, executor: ThreadPoolExecutor) -> None:
        self.root_fd = root_fd
        self.stack: list[tuple[Parts, int | None]] = [((), root_fd)]
        self.made: set[Parts] = set()  # directories on the stack this restore made
        self.directories: list[tuple[Parts, Node]] = []  # their metadata, at the end
        self.hardlinks: dict[tuple[int, int], tuple[Parts, Future[str]]] = {}
        self.blocked: list[Parts] = []  # dirs whose content is left out (see module doc)
        self._executor = executor
        self._batch: list[_Job] = []
        self._batch_bytes = 0
        self._jobs = 0
        self._queued = 0  # batches handed over and not finished
        self._drained = threading.Condition()
        self._batches: deque[Future[None]] = deque()
        self._errors: list[tuple[int, BaseException]] = []
        self._errors_lock = threading.Lock()

    def parent(self, parts: Parts) -> int | None:
        """The descriptor of the directory holding ``parts`` (closing those left)."""
        while len(self.stack) > 1 and self.stack[-1][0] != parts[:-1]:
            left, fd = self.stack.pop()
            self.made.discard(left)
            close_fd(fd)
        if self.stack[-1][0] != parts[:-1]:
            raise RuntimeError("restore walk lost its place")  # a bug, never the data
        return self.stack[-1][1]

    def push(self, parts: Parts, fd: int | None, *, made: bool = False) -> None:
        """Enter a directory; ``made``: this restore made it (it was not there)."""
        self.stack.append((parts, fd))
        if made:
            self.made.add(parts)

    def in_made(self, parts: Parts) -> bool:
        """Is the entry ``parts`` in a directory this restore made? Then nothing can be
        there yet (its mode is 0700 until the end, and a repeated name is refused by
        the walk): no need to look before writing."""
        return parts[:-1] in self.made

    def is_blocked(self, parts: Parts) -> bool:
        return any(parts[: len(b)] == b for b in self.blocked)

    def submit(
        self, job: Callable[..., Any], *args: Any, size: int = 0, outcome: bool = False
    ) -> Future[Any] | None:
        """Run ``job(*args)`` on a writer, in the current batch; ``size``: the bytes it
        writes. With ``outcome``, a future of its result (for a job that waits for this
        one: it was submitted earlier, so it is running or done by then, never queued
        behind the waiter)."""
        future: Future[Any] | None = Future() if outcome else None
        if size >= BATCH_BYTES:
            self.flush()  # a large file alone: the other writers take the small ones
        self._batch.append((self._jobs, future, job, args))
        self._jobs += 1
        self._batch_bytes += size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self.flush()
        return future

    def flush(self) -> None:
        """Hand the current batch to the writers (waiting while enough are queued)."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        with self._drained:
            if self._queued >= BATCHES_HIGH:
                self._drained.wait_for(self._low)
            self._queued += 1
        try:
            self._batches.append(self._executor.submit(self._run, batch))
        except BaseException:
            self._done()
            raise
        while self._batches and self._batches[0].done():
            self._batches.popleft()

    def _run(self, batch: list[_Job]) -> None:
        try:
            for number, future, job, args in batch:
                try:
                    result = job(*args)
                except Exception as error:
                    with self._errors_lock:
                        self._errors.append((number, error))
                    if future is not None:
                        future.set_exception(error)
                else:
                    if future is not None:
                        future.set_result(result)
        finally:
            self._done()

    def _low(self) -> bool:
        return self._queued <= BATCHES_LOW

    def _done(self) -> None:
        with self._drained:
            self._queued -= 1
            if self._queued == BATCHES_LOW:
                self._drained.notify()

    def wait(self) -> BaseException | None:
        """Hand over the last batch and wait for every job; the first failure (in walk
        order), if any."""
        self.flush()
        while self._batches:
            self._batches.popleft().result()
        with self._errors_lock:
            return min(self._errors, key=_first)[1] if self._errors else None

    def close(self) -> None:
        while len(self.stack) > 1:
            close_fd(self.stack.pop()[1])


def _first(failure: tuple[int, BaseException]) -> int:
    return failure[0]


class WriterDirs:
    """Each writer thread's descriptors of the directories it writes in: opened from the
    target one component at a time (``O_NOFOLLOW``), the last :data:`WRITER_DIRS` kept.
    Closed all at once by :meth:`close` when the writers are done."""

    def __init__(self, root_fd: int | None) -> None:
        self.root_fd = root_fd
        self._local = threading.local()
        self._all: list[OrderedDict[Parts, int]] = []
        self._lock = threading.Lock()

    def fd(self, parts: Parts) -> int | None:
        """The descriptor of the directory at ``parts`` (None in a dry run without a
        target); the caller does not close it."""
        if self.root_fd is None:
            return None
        if not parts:
            return self.root_fd
        cache: OrderedDict[Parts, int] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
            with self._lock:
                self._all.append(cache)
        fd = cache.get(parts)
        if fd is not None:
            cache.move_to_end(parts)
            return fd
        fd = cache[parts] = open_parts(self.root_fd, parts)
        while len(cache) > WRITER_DIRS:
            os.close(cache.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        with self._lock:
            for cache in self._all:
                while cache:
                    os.close(cache.popitem()[1])
            self._all.clear()
