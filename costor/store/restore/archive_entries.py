"""What goes into an archive, in order: the entries of a snapshot's subtree, depth first
and lazily (hard links noticed, a selection applied), and the content of their files
read a few blobs ahead of the writer, in the same order (:class:`ReadAhead`).

Names are checked component by component (``confined.walk_checked``): a member name is
made only of names that are not empty, ``.`` or ``..`` and hold no ``/`` or NUL, each
the first of its name in its directory. An entry that fails is given with its
``problem``: the writers refuse it (report it, write nothing of it).

A zip also gets no ``\\`` in a member name (:class:`ZipNames`): many zip readers on
Windows (Python's ``zipfile`` among them: ``ZipInfo`` turns ``os.sep`` into ``/``) take
it for a directory separator, so a name ``a\\..\\..\\evil``, harmless on the Linux
host that had it, leaves the extraction directory in any of them that does not check
the parts again. Each ``\\`` becomes ``_`` (as 7-Zip does for a character a Windows
name cannot hold): the entry keeps its content and carries its name in the snapshot
(``original``), which the writers report. A look-alike such as U+FF3C (fullwidth
reverse solidus) is not used: Windows' best-fit conversion to an ANSI code page turns
it back into ``\\``. A tar keeps ``\\``: it is a POSIX format, where a name holds any
byte but ``/`` and NUL, and the format that keeps everything as the snapshot has it
(docs/restore.md)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from costor.errors import DataCorruption
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.restore.confined import Parts, shown_path, walk_checked
from costor.store.restore.selection import Selection
from costor.store.tree import CONTENT_TYPES, DIR, FILE, Node


@dataclass
class Entry:
    name: bytes  # path in the archive
    node: Node
    link_to: bytes | None = None  # an earlier name of the same inode (tar hard link)
    problem: str | None = None  # why it is refused (its name), or None
    original: bytes | None = None  # its path in the snapshot, where that is not ``name``

    @property
    def snapshot_path(self) -> bytes:
        return self.original if self.original is not None else self.name

    @property
    def renamed(self) -> bool:
        """Its own name was changed for the archive (not only a directory's above it)."""
        return self.original is not None and (
            self.original.rpartition(b"/")[2] != self.name.rpartition(b"/")[2]
        )

    @property
    def reads_content(self) -> bool:
        return self.node.type in CONTENT_TYPES and self.link_to is None and self.problem is None


def archive_entries(
    pool: Pool,
    node: Node,
    *,
    hardlinks: bool,
    select: tuple[Selection, bytes] | None = None,
    zip_names: bool = False,
) -> Iterator[Entry]:
    """The selected node's entries in archive order, depth first, lazily. ``zip_names``:
    member names for a zip (no ``\\``, see :class:`ZipNames`)."""
    items = walk_checked(pool, node)
    if select is not None:
        items = _select(items, *select)
    names = ZipNames(pool, node) if zip_names else None
    first_names: dict[tuple[int, int], tuple[bytes, Node]] = {}
    for parts, item, problem in items:
        name, original = shown_path(parts), None
        if names is not None:
            named = names.name(parts, item, problem)
            if named is None:
                continue  # inside a directory refused here
            archived, problem = named
            if archived != parts:
                name, original = shown_path(archived), name
        if problem is not None:
            yield Entry(name, item, problem=problem, original=original)
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
        yield Entry(name, item, link_to, original=original)


def _select(
    items: Iterator[tuple[Parts, Node, str | None]], selection: Selection, where: bytes
) -> Iterator[tuple[Parts, Node, str | None]]:
    """The entries ``selection`` keeps, each preceded by those of its directories not
    yet given (held back until something in them is kept), still lazily."""
    pending: list[tuple[bytes, tuple[Parts, Node, str | None]]] = []  # not yet given
    for parts, item, problem in items:
        name = shown_path(parts)
        while pending and not name.startswith(pending[-1][0] + b"/"):
            pending.pop()
        if selection.selected(where + b"/" + name):
            yield from (walked for _name, walked in pending)
            pending.clear()
            yield parts, item, problem
        elif item.type == DIR and problem is None:
            pending.append((name, (parts, item, problem)))


ZIP_SEPARATOR = b"\\"  # a directory separator to zip readers on Windows
ZIP_SEPARATOR_SUBSTITUTE = b"_"


@dataclass
class _ZipDir:
    parts: Parts  # in the snapshot
    archived: Parts  # in the zip
    node: Node
    taken: set[bytes] | None = None  # names in the zip of this directory, once needed


class ZipNames:
    """Member names for a zip, component by component: each ``\\`` of a name becomes
    ``_``, the names of its directories as they were archived. A changed name that is
    taken in its directory (``a\\b`` beside ``a_b``, or two names changed alike) is
    refused, with what is inside it: the name already there keeps its own entry.

    Entries come depth first, each after its directory: a stack of the directories
    leading to the current entry holds their names in the zip, and the names of one
    is read (one tree) only once a name in it must change."""

    def __init__(self, pool: Pool, node: Node) -> None:
        self._pool = pool
        # Walking the snapshot's root: its entries have the root tree's names beside them;
        # any other node is archived under its own name alone, with nothing beside it.
        self._dirs = [_ZipDir((), (), node)] if node.name == b"" else []
        self._refused_dir: Parts | None = None

    def name(
        self, parts: Parts, node: Node, problem: str | None
    ) -> tuple[Parts, str | None] | None:
        """The entry's name in the zip and why it is refused (None if it is not), or
        None to leave it out (it is inside a directory refused here)."""
        refused_dir = self._refused_dir
        if refused_dir is not None and parts[: len(refused_dir)] == refused_dir:
            return None
        self._refused_dir = None
        while self._dirs and not _inside(parts, self._dirs[-1].parts):
            self._dirs.pop()
        parent = self._dirs[-1] if self._dirs else None
        archived = (*(parent.archived if parent else parts[:-1]), parts[-1])
        if problem is not None:
            return archived, problem
        if ZIP_SEPARATOR in parts[-1]:
            changed = parts[-1].replace(ZIP_SEPARATOR, ZIP_SEPARATOR_SUBSTITUTE)
            taken = self._taken(parent)
            if changed in taken:
                if node.type == DIR:
                    self._refused_dir = parts
                return archived, (
                    f"the name {_shown(parts[-1])} holds a '\\', which a zip cannot keep, "
                    f"and {_shown(changed)} is taken in its directory (a tar keeps it)"
                )
            taken.add(changed)
            archived = (*archived[:-1], changed)
        if node.type == DIR:
            self._dirs.append(_ZipDir(parts, archived, node))
        return archived, None

    def _taken(self, parent: _ZipDir | None) -> set[bytes]:
        if parent is None:
            return set()  # the archived node alone: nothing beside it
        if parent.taken is None:
            subtree = parent.node.subtree
            items = self._pool.load_tree(subtree) if subtree is not None else []
            parent.taken = {item.name for item in items}
        return parent.taken


def _inside(parts: Parts, directory: Parts) -> bool:
    return len(parts) > len(directory) and parts[: len(directory)] == directory


def _shown(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


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
