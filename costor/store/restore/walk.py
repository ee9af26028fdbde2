"""The walk of a restore to a directory: the directories open on the way to the
current entry (the walk's own descriptors), the writer threads' work, and each
writer's own descriptors of the directories it writes in.

The walk hands every file to the writers as it goes, without waiting for them (as the
restore always did): a walk that waits for room, woken as writers finish, takes the GIL
from them at every file, and a restore of 20,000 small files took twice as long. So a
job does not keep the walk's descriptor of its directory open; a writer opens the
directory itself, one component at a time without following links, and keeps the few
it wrote in last (:class:`WriterDirs`)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from costor.store.restore.confined import Parts, close_fd, open_parts
from costor.store.tree import Node

WRITER_DIRS = 16  # directories each writer keeps open (most files follow their siblings)


class Walk:
    """The state of one restore's walk: the open directories leading to the current
    entry (each a descriptor, None in a dry run where the directory does not exist),
    what is left to do at the end, and the work handed to the writers."""

    def __init__(self, root_fd: int | None, executor: ThreadPoolExecutor) -> None:
        self.root_fd = root_fd
        self.stack: list[tuple[Parts, int | None]] = [((), root_fd)]
        self.directories: list[tuple[Parts, Node]] = []  # their metadata, at the end
        self.hardlinks: dict[tuple[int, int], tuple[Parts, Future[str]]] = {}
        self.futures: list[Future[Any]] = []
        self.blocked: list[Parts] = []  # dirs whose content is left out (see module doc)
        self._executor = executor

    def parent(self, parts: Parts) -> int | None:
        """The descriptor of the directory holding ``parts`` (closing those left)."""
        while len(self.stack) > 1 and self.stack[-1][0] != parts[:-1]:
            close_fd(self.stack.pop()[1])
        if self.stack[-1][0] != parts[:-1]:
            raise RuntimeError("restore walk lost its place")  # a bug, never the data
        return self.stack[-1][1]

    def push(self, parts: Parts, fd: int | None) -> None:
        self.stack.append((parts, fd))

    def is_blocked(self, parts: Parts) -> bool:
        return any(parts[: len(b)] == b for b in self.blocked)

    def submit(self, job: Any, *args: Any) -> Future[Any]:
        """Run ``job`` on a writer."""
        future = self._executor.submit(job, *args)
        self.futures.append(future)
        return future

    def close(self) -> None:
        while len(self.stack) > 1:
            close_fd(self.stack.pop()[1])


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
