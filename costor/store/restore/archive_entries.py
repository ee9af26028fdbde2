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
    # A tar's image: its zero chunks left out as a GNU sparse member (see SparseLayout)
    sparse: SparseLayout | None = None

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

    @property
    def blobs_to_read(self) -> list[bytes]:
        """The blobs whose bytes go into the archive, in order."""
        return self.sparse.blobs if self.sparse is not None else self.node.content


# An image whose zero chunks add up to less than this is archived as a plain member.
SPARSE_MIN_ZEROS = 1024 * 1024


@dataclass(frozen=True)
class SparseLayout:
    """An image as a GNU tar sparse member (format 1.0, what GNU tar and Python's
    tarfile read back with holes): a map of its data segments, then their bytes only.
    A disk image's unused space is long runs of zeros, which the chunker cuts into
    identical all-zero chunks: those are the holes. Found without reading any data:
    a blob repeated in the image is compared with the id of zeros of its length.

    GNU tar reads each segment's data in whole 512-byte blocks, so every segment but
    the last starts and ends on a multiple of 512: a hole is shrunk to the 512-byte
    blocks inside its zero chunks, and the zeros at its edges are stored as data."""

    pieces: list[tuple[bytes | None, int]]  # the member's data: a blob, or None: zeros
    segments: list[tuple[int, int]]  # (offset, length) of each data segment
    size: int  # the image's size

    @property
    def blobs(self) -> list[bytes]:
        """The blobs to read, in order."""
        return [blob for blob, _length in self.pieces if blob is not None]

    @property
    def data_size(self) -> int:
        return sum(length for _offset, length in self.segments)

    def map_block(self) -> bytes:
        """The sparse map that starts the member's data: decimal lines (the number of
        segments, then each offset and length), padded to 512 bytes."""
        lines = [str(len(self.segments))]
        for offset, length in self.segments:
            lines += [str(offset), str(length)]
        text = ("\n".join(lines) + "\n").encode()
        return text + bytes(-len(text) % 512)

    @property
    def member_size(self) -> int:
        return len(self.map_block()) + self.data_size


def sparse_layout(pool: Pool, node: Node) -> SparseLayout | None:
    """``node``'s holes as a :class:`SparseLayout`, or None when it has too few zeros
    (or its blobs do not add up to its size: the plain path reports that)."""
    counts: dict[bytes, int] = {}
    for blob in node.content:
        counts[blob] = counts.get(blob, 0) + 1
    zero_blobs: set[bytes] = set()
    lengths: dict[bytes, int] = {}
    for blob in node.content:
        if blob not in lengths:
            lengths[blob] = pool.locate(blob).raw_length
            if counts[blob] > 1 and blob == pool.blob_id(bytes(lengths[blob])):
                zero_blobs.add(blob)
    if not zero_blobs or sum(lengths[blob] for blob in node.content) != node.size:
        return None
    holes: list[tuple[int, int]] = []  # runs of zero chunks, shrunk to 512-byte blocks
    position = 0
    for blob in node.content:
        end = position + lengths[blob]
        if blob in zero_blobs:
            if holes and holes[-1][1] == position:
                holes[-1] = (holes[-1][0], end)
            else:
                holes.append((position, end))
        position = end
    holes = [
        (-(-start // 512) * 512, end if end == node.size else end // 512 * 512)
        for start, end in holes
    ]
    holes = [(start, end) for start, end in holes if end > start]
    if sum(end - start for start, end in holes) < SPARSE_MIN_ZEROS:
        return None
    segments: list[tuple[int, int]] = []
    data_from = 0
    for start, end in holes:
        if start > data_from:
            segments.append((data_from, start - data_from))
        data_from = end
    if data_from < node.size:
        segments.append((data_from, node.size - data_from))
    else:
        segments.append((node.size, 0))  # GNU tar's way to end on a hole
    pieces: list[tuple[bytes | None, int]] = []
    position = 0
    holes_left = iter(holes)
    hole = next(holes_left, None)
    for blob in node.content:
        end = position + lengths[blob]
        if blob not in zero_blobs:
            pieces.append((blob, lengths[blob]))
        else:  # what of these zeros lies outside the holes
            at = position
            while at < end:
                while hole is not None and hole[1] <= at:
                    hole = next(holes_left, None)
                if hole is None or hole[0] >= end:
                    pieces.append((None, end - at))
                    break
                if hole[0] > at:
                    pieces.append((None, hole[0] - at))
                at = min(end, hole[1])
        position = end
    return SparseLayout(pieces, segments, node.size)


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
            self._to_read.extend(entry.blobs_to_read)
        return True

    def _fill(self) -> None:
        while len(self._reading) < self._blobs_ahead:
            if self._to_read:
                blob = self._to_read.popleft()
                self._reading.append((blob, self._executor.submit(self._pool.read_blob, blob)))
            elif len(self._ahead) >= self._entries_ahead or not self._walk_one():
                return


class ContentReader:
    """A file's content as the file object ``TarFile.addfile`` reads ``size`` bytes from
    (a sparse image's: its map, then its data segments)."""

    def __init__(self, entry: Entry, blobs: ReadAhead, progress: Progress) -> None:
        self._entry = entry
        sparse = entry.sparse
        self._pieces: Iterator[tuple[bytes | None, int]] = iter(
            sparse.pieces if sparse is not None else [(blob, -1) for blob in entry.node.content]
        )
        self._blobs = blobs
        self._progress = progress
        # A sparse member's data starts with its map; its holes count as done now.
        self._buffer = memoryview(sparse.map_block() if sparse is not None else b"")
        self._left = sparse.member_size if sparse is not None else entry.node.size
        if sparse is not None:
            progress.advance(size=entry.node.size - sparse.data_size)

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        parts: list[memoryview] = []
        needed = size
        while needed:
            if not self._buffer:
                blob, length = next(self._pieces, (None, 0))
                if blob is None and not length:
                    raise size_mismatch(self._entry, "ends before")
                data = self._blobs.read(blob) if blob is not None else bytes(length)
                self._progress.advance(size=len(data))
                self._buffer = memoryview(data)
            piece = self._buffer[:needed]
            parts.append(piece)
            self._buffer = self._buffer[len(piece) :]
            needed -= len(piece)
        self._left -= size
        return b"".join(parts)

    def finish(self) -> None:
        if self._left or self._buffer or next(self._pieces, None) is not None:
            raise size_mismatch(self._entry, "does not end at")


def size_mismatch(entry: Entry, how: str) -> DataCorruption:
    return DataCorruption(
        pack="(tree)",
        reason=(
            f"content of {os.fsdecode(entry.name)!r} {how} its recorded size "
            f"of {entry.node.size} bytes"
        ),
    )
