"""What goes into an archive, in order: the entries of a snapshot's subtree, depth first
and lazily (hard links noticed, a selection applied), and the content of their files
read a few blobs ahead of the writer, in the same order (:class:`ReadAhead`).

Names are checked component by component (``confined.walk_checked``): a member name is
made only of names that are not empty, ``.`` or ``..`` and hold no ``/`` or NUL, each
the first of its name in its directory. An entry that fails is given with its
``problem``: the writers refuse it (report it, write nothing of it)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from costor.errors import DataCorruption
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.restore.confined import shown_path, walk_checked
from costor.store.restore.selection import Selection
from costor.store.tree import DIR, FILE, Node


@dataclass
class Entry:
    name: bytes  # path in the archive
    node: Node
    link_to: bytes | None = None  # an earlier name of the same inode (tar hard link)
    problem: str | None = None  # why it is refused (its name), or None

    @property
    def reads_content(self) -> bool:
        return self.node.type == FILE and self.link_to is None and self.problem is None


def archive_entries(
    pool: Pool,
    node: Node,
    *,
    hardlinks: bool,
    select: tuple[Selection, bytes] | None = None,
) -> Iterator[Entry]:
    """The selected node's entries in archive order, depth first, lazily."""
    items: Iterator[tuple[bytes, Node, str | None]] = (
        (shown_path(parts), item, problem) for parts, item, problem in walk_checked(pool, node)
    )
    if select is not None:
        items = _select(items, *select)
    first_names: dict[tuple[int, int], tuple[bytes, Node]] = {}
    for name, item, problem in items:
        if problem is not None:
            yield Entry(name, item, problem=problem)
            continue
        link_to = None
        if hardlinks and item.type == FILE and item.links > 1 and item.inode:
            key = (item.device, item.inode)
            first = first_names.get(key)
            # Same inode but other content cannot be one file: write both in full.
            if first is None:
                first_names[key] = (name, item)
            elif first[1].content == item.content and first[1].size == item.size:
                link_to = first[0]
        yield Entry(name, item, link_to)


def _select(
    items: Iterator[tuple[bytes, Node, str | None]], selection: Selection, where: bytes
) -> Iterator[tuple[bytes, Node, str | None]]:
    """The entries ``selection`` keeps, each preceded by those of its directories not
    yet given (held back until something in them is kept), still lazily."""
    pending: list[tuple[bytes, Node, str | None]] = []  # walked into, not yet given
    for name, item, problem in items:
        while pending and not name.startswith(pending[-1][0] + b"/"):
            pending.pop()
        if selection.selected(where + b"/" + name):
            yield from pending
            pending.clear()
            yield name, item, problem
        elif item.type == DIR and problem is None:
            pending.append((name, item, problem))


class ReadAhead:
    """Hands out the walk's entries and, in the same order, the content of those that
    read content, with up to ``blobs_ahead`` blobs being read by the executor ahead."""

    def __init__(
        self,
        pool: Pool,
        entries: Iterator[Entry],
        executor: ThreadPoolExecutor,
        *,
        blobs_ahead: int,
        entries_ahead: int,
    ):
        self._pool = pool
        self._blobs_ahead = blobs_ahead
        self._entries_ahead = entries_ahead
        self.archive_entries = entries
        self._executor = executor
        self._ahead: deque[Entry] = deque()  # walked, not yet handed out
        self._to_read: deque[bytes] = deque()  # blob ids of those entries, not yet started
        self._reading: deque[tuple[bytes, Future[bytes]]] = deque()
        self._walked_all = False

    def __iter__(self) -> Iterator[Entry]:
        while self._ahead or self._walk_one():
            entry = self._ahead.popleft()
            self._fill()
            yield entry

    def read(self, blob_id: bytes) -> bytes:
        """The next blob, which must be ``blob_id`` (the writer consumes in walk order)."""
        self._fill()
        expected, future = self._reading.popleft()
        if expected != blob_id:  # a bug in the writer, never a property of the data
            raise RuntimeError("archive read-ahead lost step with the writer")
        data = future.result()  # DataCorruption propagates from here
        self._fill()
        return data

    def cancel(self) -> None:
        for _blob, future in self._reading:
            future.cancel()
        self._reading.clear()

    def _walk_one(self) -> bool:
        if self._walked_all:
            return False
        entry = next(self.archive_entries, None)
        if entry is None:
            self._walked_all = True
            return False
        self._ahead.append(entry)
        if entry.reads_content:
            self._to_read.extend(entry.node.content)
        return True

    def _fill(self) -> None:
        while len(self._reading) < self._blobs_ahead:
            if self._to_read:
                blob = self._to_read.popleft()
                self._reading.append((blob, self._executor.submit(self._pool.read_blob, blob)))
            elif len(self._ahead) >= self._entries_ahead or not self._walk_one():
                return


class ContentReader:
    """A file's content as the file object ``TarFile.addfile`` reads ``size`` bytes from."""

    def __init__(self, entry: Entry, blobs: ReadAhead, progress: Progress) -> None:
        self._entry = entry
        self._ids = iter(entry.node.content)
        self._blobs = blobs
        self._progress = progress
        self._buffer = memoryview(b"")
        self._left = entry.node.size

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        parts: list[memoryview] = []
        needed = size
        while needed:
            if not self._buffer:
                blob = next(self._ids, None)
                if blob is None:
                    raise size_mismatch(self._entry, "ends before")
                data = self._blobs.read(blob)
                self._progress.advance(size=len(data))
                self._buffer = memoryview(data)
            piece = self._buffer[:needed]
            parts.append(piece)
            self._buffer = self._buffer[len(piece) :]
            needed -= len(piece)
        self._left -= size
        return b"".join(parts)

    def finish(self) -> None:
        if self._left or self._buffer or next(self._ids, None) is not None:
            raise size_mismatch(self._entry, "does not end at")


def size_mismatch(entry: Entry, how: str) -> DataCorruption:
    return DataCorruption(
        pack="(tree)",
        reason=(
            f"content of {os.fsdecode(entry.name)!r} {how} its recorded size "
            f"of {entry.node.size} bytes"
        ),
    )
