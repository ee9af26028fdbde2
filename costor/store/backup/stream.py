"""Backup from a stream of entries produced elsewhere (the helper on a host reached
over SSH, or an SFTP walk): trees, content and the snapshot.

The producer walks in depth-first order, children sorted by the bytes of their names,
a directory before its children — the order the local walk (:mod:`.walk`) walks in —
and sends one entry (:class:`costor.protocol.Entry`) per file, directory, link or
device with its stat data and a *state* saying what it knows of a regular file's
content (:mod:`costor.protocol` lists them): the parent's node is reused, a digest
looked up in a :class:`DigestIndex`, content taken as it follows or fetched after the
walk, whole or as a *delta* against the parent's version (:meth:`Ingest.missing`,
:meth:`Ingest.delta_request`).

Content is cut with the pool's chunker exactly as the local walk cuts it, so the same
bytes make the same blobs whichever way they arrived (:mod:`.sink`). Directories whose entries
are all known are stored as soon as the walk leaves them; one that waits for fetched
content is stored when it arrives.

Thread safety: an :class:`Ingest` is driven by one thread; it stores sealed blobs on a
pool of worker threads of its own.
"""

from __future__ import annotations

import base64
import itertools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from costor import protocol
from costor.errors import BackupError
from costor.protocol import (
    CHANGED,
    CHANGED_WHILE_READ,
    DATA_FOLLOWS,
    DELTA_FOLLOWS,
    DIGEST_PREFIX,
    ERROR_PREFIX,
    LARGE_FILE,
    LINK_PREFIX,
    SAME,
    SPARSE,
    WARNING_PREFIX,
    Entry,
)
from costor.store.backup.common import (
    StatusAfter,
    changed_while_read,
    node_only_warning,
    rfc3339_now,
)
from costor.store.backup.parent import (
    NOTHING,
    ParentFile,
    PreviousTree,
    merge_docs,
    parent_files,
    splice,
)
from costor.store.backup.sink import ContentSink, RandomReader, _Reuse, wanted_ranges
from costor.store.pack import BlobType
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.snapshot import Snapshot
from costor.store.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    IMAGE,
    SOCKET,
    SYMLINK,
    Node,
    doc_name,
    replace_docs,
)

_NODE_ONLY = (protocol.BLOCKDEV, protocol.CHARDEV, protocol.SYMLINK)  # see _warn_if_device
KINDS = {
    protocol.FILE: FILE,
    protocol.DIR: DIR,
    protocol.SYMLINK: SYMLINK,
    protocol.FIFO: FIFO,
    protocol.CHARDEV: CHARDEV,
    protocol.BLOCKDEV: BLOCKDEV,
    protocol.SOCKET: SOCKET,
    protocol.IMAGE: IMAGE,
}
BASE_KEPT = 64 * 1024 * 1024  # delta bases kept between request and rebuild, at most


class DigestIndex(Protocol):
    """Whole-file digests -> content, kept outside the pool (the state database)."""

    def lookup(self, digest: bytes) -> tuple[list[bytes], int] | None: ...

    def blocks(self, content: list[bytes]) -> bytes | None: ...

    def record(
        self, digest: bytes, content: list[bytes], size: int, blocks: bytes | None
    ) -> None: ...


@dataclass(eq=False)
class _Dir:
    path: str
    node: Node
    parent: _Dir | None
    nodes: list[Node] = field(default_factory=list)
    pending: int = 1  # the walk's hold until it leaves the directory, plus waiting entries
    previous_tree: bytes | None = None  # its tree in the parent snapshot, read when needed
    loaded: PreviousTree | None = None  # that tree's entries, once read
    # Sparse (the producer sends only what changed; what it leaves out is the parent's):
    # entries that were the parent's and are no longer (they failed).
    sparse: bool = False
    removed: list[bytes] = field(default_factory=list)


@dataclass
class _Waiting:
    """A file whose content is not known yet (fetched later, or a link to one)."""

    directory: _Dir
    node: Node
    links: list[tuple[_Dir, Node]] = field(default_factory=list)
    base: Node | None = None  # the parent's version: fetched as a delta against it
    changed_blocks: list[int] | None = None  # of a large file: its changed 1 MiB blocks
    inline: bool = False  # its content follows in the walk
    base_data: bytes | None = None  # the base's bytes, read for the delta request
    block_size: int | None = None  # an image's comparison blocks (None: a file)


@dataclass(frozen=True)
class Missing:
    """What the walk left to fetch: whole files, and files to fetch as deltas."""

    whole: list[str]
    delta: list[str]


class Ingest:
    def __init__(
        self,
        pool: Pool,
        *,
        client: str,
        paths: list[str],
        hostname: str,
        index: DigestIndex,
        parent: Snapshot | None = None,
        progress: Progress | None = None,
        workers: int | None = None,
        images: dict[str, int] | None = None,
    ) -> None:
        self.pool = pool
        # The client's images: path -> the block size the producer was asked to compare
        # by. An image entry for another path, or by another block size, is refused.
        self.images = dict(images or {})
        self._images_seen: set[str] = set()
        self.client = client
        self.paths = paths
        self.hostname = hostname
        self.index = index
        self.parent = parent
        self.progress = progress or Progress()
        self.key = pool.transfer_key()
        self.started = time.monotonic()
        self.counters = {
            "files_new": 0,
            "files_changed": 0,
            "files_unmodified": 0,
            "files_failed": 0,
            "files_deduplicated": 0,
            "dirs": 0,
            "images": 0,
            "entries_omitted": 0,  # left out of a sparse walk: the parent's, unchanged
            "bytes_read": 0,
            "bytes_processed": 0,
        }
        self.errors: list[dict[str, str]] = []
        self._given = {os.path.normpath(p) for p in paths}  # the paths to back up
        self._stack: list[_Dir] = []
        self._root: _Dir | None = None
        self._waiting: dict[str, _Waiting] = {}  # path -> waiting file
        self._resolved: dict[str, Node] = {}  # files by path, for links
        self._workers = ThreadPoolExecutor(
            workers or os.cpu_count() or 2, thread_name_prefix="seal"
        )
        self._inflight = threading.BoundedSemaphore((workers or os.cpu_count() or 2) * 4)
        self._futures: list[Future[None]] = []
        self._chunker = pool.make_chunker()
        self.retry: list[str] = []  # deltas to fetch whole after all (see ContentSink)
        # This snapshot's fingerprints (4-byte path | 8-byte path and stat), for the next
        # pull's producer: kept by the caller so that it need not walk this tree again.
        self.fingerprints = bytearray()
        # Its directories' hashes (of path and entry names), for the same: the producer
        # walks a directory whose names are unchanged sparse (see :meth:`entry`).
        self.dir_hashes = bytearray()
        self._stale_dirs: set[bytes] = set()  # parent directory hashes no longer true
        self._carried_dirs: list[bytes] = []  # parent directory hashes still true, maybe
        self.parent_unreadable = False  # a sparse walk met a parent tree it cannot read
        self.large_blocks: dict[str, bytes] = {}  # path -> block hashes of large files
        self._base_kept = 0  # bytes of delta bases kept in memory (at most BASE_KEPT)
        # Files the producer saw change while it read the content arriving: their
        # warning, given once that copy is stored (see changed_while_read).
        self._unsteady: dict[str, dict[str, str]] = {}

    # --- what the producer is told first -------------------------------------------------

    def parent_files(self) -> Iterator[ParentFile]:
        """Every regular file and directory of the parent snapshot with its stat data
        (and block hashes of large files), for the producer to recognise what did not
        change."""
        if self.parent is None:
            return iter(())
        return parent_files(self.pool, bytes.fromhex(self.parent.tree), self.index.blocks)

    # --- the entry stream ----------------------------------------------------------------

    def entry(self, entry: Entry) -> str:
        """Take one entry (:func:`costor.protocol.parse_entry`); returns its state, so the
        caller knows what follows it."""
        path, state = entry.path, entry.state
        if self.images and path in self.images:
            self._images_seen.add(path)
            if entry.compact:  # an unchanged image file: stored (the parent's copy)
                self.counters["images"] += 1
        if entry.compact:
            return self._unchanged(path, sparse=state == SPARSE)
        if state.startswith(ERROR_PREFIX):
            self._failed_entry(path)
            self._fail(path, state[len(ERROR_PREFIX) :])
            return "error"
        if path == "/":
            self._open_root(sparse=state == SPARSE)
            return ""
        parent_path, name = os.path.split(path)
        self._close_until(parent_path)
        directory = self._stack[-1]
        node = self._node(entry, os.fsencode(name))
        if state.startswith(WARNING_PREFIX):
            self._fail(path, state[len(WARNING_PREFIX) :], count=False)
        if entry.kind in _NODE_ONLY and path in self._given:
            self._warn_if_device(path, entry.kind, entry.target)
        if node.type == IMAGE:
            self._image(entry, node)
            self.counters["images"] += 1
        previous = self._previous(directory).get(node.name)
        if node.type in (FILE, DIR):
            self._fingerprint(path, node)
        if node.type == DIR:
            self._open_dir(path, node, directory, previous, sparse=state == SPARSE)
            return ""
        directory.nodes.append(node)
        if node.type not in (FILE, IMAGE):
            self.progress.advance(files=1)
            return ""
        return self._file(entry, node, directory, previous)

    def _image(self, entry: Entry, node: Node) -> None:
        """An image's entry (checked by :func:`costor.protocol.check_entry`): one the
        client names, compared by the block size asked for; ``node.image`` says how the
        host read it."""
        if entry.extra is None:
            raise protocol.Refused(f"an image {entry.path[:200]!r} without its facts")
        facts = dict(entry.extra["image"])
        wanted = self.images.get(entry.path)
        if wanted is None or facts["block_size"] < wanted:
            raise protocol.Refused(
                f"an image {entry.path[:200]!r} the client does not name, or by blocks "
                f"smaller than {wanted} bytes"
            )
        node.image = facts

    def _open_dir(
        self, path: str, node: Node, directory: _Dir, previous: Node | None, *, sparse: bool
    ) -> None:
        """A directory's entry: its own entries follow."""
        if self._inside_paths(path):  # not the directories leading to them
            self.counters["dirs"] += 1
        directory.nodes.append(node)
        directory.pending += 1
        child = _Dir(path, node, directory, sparse=sparse)
        if previous is not None and previous.type == DIR and previous.subtree:
            child.previous_tree = previous.subtree
        elif child.sparse:
            raise BackupError(client=self.client, reason=f"{path}: sparse, but not in the parent")
        self._stack.append(child)

    def _file(self, entry: Entry, node: Node, directory: _Dir, previous: Node | None) -> str:
        """A regular file's entry, placed in ``directory``: what its state says of its
        content."""
        path, state = entry.path, entry.state
        self.counters["bytes_processed"] += node.size
        base = (
            previous
            if previous is not None and previous.type == node.type and self._reusable(previous)
            else None
        )
        if state == SAME and base is not None:
            # Unchanged by the producer's own rule (SFTP: size and mtime): the parent's
            # content, with the metadata seen now.
            node.content = base.content
            self.counters["files_unmodified"] += 1
            self._resolved[path] = node
            self.progress.advance(files=1, size=node.size)
            return "same"
        if state.startswith(LINK_PREFIX):
            return self._link(path, state[len(LINK_PREFIX) :], node, directory, previous)
        self.counters["files_changed" if previous is not None else "files_new"] += 1
        if self._deduplicated(entry, node):
            return "deduplicated"
        # Content follows at once ("data"), or is fetched after the walk: whole, or as
        # a delta against the parent's version when there is one to compare with.
        directory.pending += 1
        waiting = _Waiting(directory, node, inline=state == DATA_FOLLOWS)
        if node.image is not None:
            waiting.block_size = int(node.image["block_size"])
        if base is not None and state != DATA_FOLLOWS and base.size:
            waiting.base = base
            extra = entry.extra or {}
            if state == CHANGED and "changed_blocks" in extra:
                waiting.changed_blocks = [int(i) for i in extra["changed_blocks"]]
        self._waiting[path] = waiting
        return "data" if state == DATA_FOLLOWS else "wait"

    def _link(
        self, path: str, first: str, node: Node, directory: _Dir, previous: Node | None
    ) -> str:
        """Another name of ``first``, a file sent earlier in the walk."""
        if first in self._resolved:
            node.content = self._resolved[first].content
            same = previous is not None and previous.content == node.content
            kind = "files_unmodified" if same else ("files_changed" if previous else "files_new")
            self.counters[kind] += 1
            return "link"
        self.counters["files_changed" if previous is not None else "files_new"] += 1
        if first in self._waiting:
            directory.pending += 1
            self._waiting[first].links.append((directory, node))
        else:
            self._fail(path, f"hard link to {first}, which is not in the backup")
            self._drop(directory, node)
        return "link"

    def _deduplicated(self, entry: Entry, node: Node) -> bool:
        """Whether the entry's digest names content the pool has (then ``node`` has it)."""
        if entry.state.startswith(DIGEST_PREFIX):
            digest = entry.state[len(DIGEST_PREFIX) :]
        elif entry.state == CHANGED:
            digest = (entry.extra or {})["digest"]
        else:
            return False
        found = self.index.lookup(bytes.fromhex(digest))
        if found is None or not all(blob in self.pool.index for blob in found[0]):
            return False
        node.content, node.size = found
        facts = (entry.extra or {}).get(CHANGED_WHILE_READ)
        if facts is not None:  # the digest is of a read during which the file changed
            warning = _changed_warning(entry.path, facts)
            if warning is not None:
                self._warn(warning)
        self.counters["files_deduplicated"] += 1
        self._resolved[entry.path] = node
        self.progress.advance(files=1, size=node.size)
        return True

    def _unchanged(self, path: str, *, sparse: bool = False) -> str:
        """An entry the producer found unchanged: the parent's node, as it was. (Its
        fingerprint is the parent's: :meth:`carry` adds it.)"""
        parent_path, name = os.path.split(path)
        self._close_until(parent_path)
        directory = self._stack[-1]
        previous = self._previous(directory).get(os.fsencode(name))
        if previous is not None and previous.type == DIR:
            node = replace(previous, subtree=None)
            if self._inside_paths(path):
                self.counters["dirs"] += 1
            directory.nodes.append(node)
            directory.pending += 1
            child = _Dir(path, node, directory, previous_tree=previous.subtree, sparse=sparse)
            if sparse and not previous.subtree:
                raise BackupError(
                    client=self.client, reason=f"{path}: sparse, but not in the parent"
                )
            self._stack.append(child)
            return ""
        if sparse:
            raise BackupError(client=self.client, reason=f"{path}: sparse, but not a directory")
        if previous is not None and self._reusable(previous):
            node = previous  # as it was: nothing changes a file's node once it is placed
            directory.nodes.append(node)
            self.counters["files_unmodified"] += 1
            self.counters["bytes_processed"] += node.size
            self._resolved[path] = node
            self.progress.advance(files=1, size=node.size)
            return "same"
        # Its blobs are gone (pruned, damaged): fetch it whole; the fetched entry brings
        # its stat data.
        node = Node(name=os.fsencode(name), type=FILE)
        directory.nodes.append(node)
        directory.pending += 1
        self.counters["files_changed"] += 1
        self._waiting[path] = _Waiting(directory, node)
        return "wait"

    def missing(self) -> Missing:
        """Files whose content must still be sent, after the walk: whole, or as deltas
        (:meth:`delta_request`). Each arrives with a fresh entry (:meth:`restart`)."""
        whole: list[str] = []
        delta: list[str] = []
        for path, waiting in sorted(self._waiting.items()):
            if waiting.inline:
                continue
            (delta if waiting.base is not None else whole).append(path)
        return Missing(whole, delta)

    def delta_request(self, path: str) -> list[Any]:
        """``[path, old_size, ranges]`` for the producer: hashes of the parent version's
        blocks in each range (``[offset, length, block size, base64 8-byte hashes]``);
        the producer sends the blocks whose hash differs and anything past the old end
        (:func:`~costor.store.backup.sink.wanted_ranges` says which ranges)."""
        waiting = self._waiting[path]
        base = waiting.base
        assert base is not None
        reader = RandomReader(self.pool, base.content)
        ranges: list[list[Any]] = []
        wanted = wanted_ranges(base.size, waiting.changed_blocks, block_size=waiting.block_size)
        for offset, length, block in wanted:
            data = reader.read(offset, length)
            if offset == 0 and length == base.size and self._base_kept + length <= BASE_KEPT:
                # Kept for rebuilding the file when the changed blocks come (a second
                # read of the same blobs was a third of a small-file delta's cost).
                waiting.base_data = data
                self._base_kept += length
            hashes = b"".join(
                protocol.piece_hash(self.key, data[i : i + block])
                for i in range(0, len(data), block)
            )
            ranges.append([offset, length, block, base64.b64encode(hashes).decode()])
        return [path, base.size, ranges]

    def restart(self, entry: Entry) -> ContentSink | None:
        """A fetched file's fresh entry: its node takes the stat data; returns the sink
        its content goes to (None: it could not be read, reported)."""
        path, state = entry.path, entry.state
        waiting = self._waiting[path]
        self._unsteady.pop(path, None)  # this read says for itself
        kept, waiting.base_data = waiting.base_data, None
        self._base_kept -= len(kept or b"")
        if state.startswith(ERROR_PREFIX):
            self._fail(path, state[len(ERROR_PREFIX) :])
            self._resolve(path, None, 0)
            return None
        fresh = self._node(entry, waiting.node.name)
        for key in (
            "mode",
            "uid",
            "gid",
            "user",
            "group",
            "mtime_ns",
            "ctime_ns",
            "size",
            "inode",
            "device",
            "links",
            "xattrs",
        ):
            setattr(waiting.node, key, getattr(fresh, key))
        large, block = self._blocks(waiting)
        if state == DELTA_FOLLOWS and waiting.base is not None:
            base, reuse = waiting.base, None
            if (
                large
                and waiting.changed_blocks is not None
                and (base.size >= LARGE_FILE or waiting.block_size is not None)
            ):
                blocks = self.index.blocks(base.content)
                if blocks and len(blocks) == 16 * -(-base.size // block):  # of this size
                    reuse = _Reuse(self.pool, base, blocks, waiting.changed_blocks)
            sink = ContentSink(
                self,
                path,
                base=base.content,
                large=large,
                reuse=reuse,
                block_size=block,
                limit=self._limit(waiting),
            )
            if kept is not None and sink.base is not None:
                sink.base.preload(kept)
            return sink
        return ContentSink(
            self, path, base=None, large=large, block_size=block, limit=self._limit(waiting)
        )

    @staticmethod
    def _limit(waiting: _Waiting) -> int | None:
        """An image's size (its content is never longer); None for a file."""
        return waiting.node.size if waiting.node.type == IMAGE else None

    def _blocks(self, waiting: _Waiting) -> tuple[bool, int]:
        """Whether a waiting file's proof is block hashes, and their size (an image's
        always are, by its own block size)."""
        if waiting.block_size is not None:
            return True, waiting.block_size
        return waiting.node.size >= LARGE_FILE, protocol.BLOCK_SIZE

    # --- content -------------------------------------------------------------------------

    def content(self, path: str) -> ContentSink:
        """A sink for the whole content of ``path``, which is waiting for it."""
        waiting = self._waiting[path]
        large, block = self._blocks(waiting)
        return ContentSink(
            self, path, base=None, large=large, block_size=block, limit=self._limit(waiting)
        )

    def changed_while_read(self, path: str, facts: list[int]) -> None:
        """The producer saw ``path`` change while it read the content arriving now
        (:func:`costor.protocol.check_changed_while_read`'s numbers): the local walk's
        warning, given if that copy is stored (a failed one needs none; a delta fetched
        whole again is read again, and that read says for itself)."""
        warning = _changed_warning(path, facts)
        if warning is not None:
            self._unsteady[path] = warning

    def _resolve(self, path: str, content: list[bytes] | None, size: int) -> None:
        waiting = self._waiting.pop(path)
        warning = self._unsteady.pop(path, None)
        if warning is not None and content is not None:
            self._warn(warning)
        if content is None:
            if waiting.node.type == IMAGE:  # counted when its entry came: not stored
                self.counters["images"] -= 1
            self._drop(waiting.directory, waiting.node)
            for directory, node in waiting.links:
                self._drop(directory, node)
                self._release(directory)
        else:
            waiting.node.content, waiting.node.size = content, size
            self._resolved[path] = waiting.node
            for directory, node in waiting.links:
                node.content, node.size = content, size
                self._release(directory)
        self._release(waiting.directory)

    def _store(self, data: bytes | memoryview, compress: bool) -> bytes:
        blob = self.pool.blob_id(data)
        if self.pool.reserve(blob):
            self._inflight.acquire()
            future = self._workers.submit(self._seal, blob, bytes(data), compress)
            self._futures.append(future)
        return blob

    def _seal(self, blob: bytes, data: bytes, compress: bool) -> None:
        try:
            self.pool.store_blob(BlobType.DATA, blob, data, compress=compress)
        finally:
            self._inflight.release()

    def _check_workers(self) -> None:
        still = []
        for future in self._futures:
            if future.done():
                future.result()  # a storage error (disk full…) fails the backup here
            else:
                still.append(future)
        self._futures = still

    # --- the end -----------------------------------------------------------------------

    def finish(self, *, bytes_transferred: int = 0) -> Snapshot:
        if self._root is None:
            raise BackupError(client=self.client, reason="the walk sent nothing")
        for path in list(self._waiting):
            self._fail(path, "its content never arrived")
            self._resolve(path, None, 0)
        for path in sorted(set(self.images) - self._images_seen):
            # Neither sent nor said unreadable (an exclude pattern covers it): said
            # here, so that no image is missed silently.
            self._fail(path, "this image was not read (does an exclude pattern cover it?)")
        self._close_until(None)
        for future in self._futures:
            future.result()
        self._workers.shutdown()
        if self._root.node.subtree is None:
            raise BackupError(client=self.client, reason="the tree could not be completed")
        self.dir_hashes += b"".join(h for h in self._carried_dirs if h not in self._stale_dirs)
        self.pool.flush()
        counters = dict(self.counters)
        counters.update(
            bytes_added=self.pool.bytes_added,
            bytes_added_raw=self.pool.raw_bytes_added,
            blobs_added=self.pool.blobs_added,
            blobs_not_compressed=self.pool.blobs_not_compressed,
            bytes_transferred=bytes_transferred,
        )
        snapshot = Snapshot(
            client=self.client,
            time=rfc3339_now(),
            paths=sorted({*self.paths, *self.images}),  # as a local backup's
            tree=self._root.node.subtree.hex(),
            hostname=self.hostname,
            parent=self.parent.id if self.parent else None,
            counters=counters,
            duration_s=time.monotonic() - self.started,
        )
        self.pool.save_snapshot(snapshot)
        self.progress.close()
        return snapshot

    def abort(self) -> None:
        self._workers.shutdown(cancel_futures=True)

    # --- directories -------------------------------------------------------------------

    def _open_root(self, *, sparse: bool = False) -> None:
        root = _Dir("/", Node(name=b"", type=DIR), None, sparse=sparse)
        if self.parent is not None:
            root.previous_tree = bytes.fromhex(self.parent.tree)
        elif sparse:
            raise BackupError(client=self.client, reason="/: sparse, but there is no parent")
        self._root = root
        self._stack = [root]

    def _previous(self, directory: _Dir) -> PreviousTree:
        """The directory's entries in the parent snapshot (read on first use)."""
        if directory.loaded is None:
            directory.loaded = NOTHING
            if directory.previous_tree is not None:
                try:
                    directory.loaded = PreviousTree(self.pool.read_blob(directory.previous_tree))
                except Exception as error:
                    if directory.sparse:  # what the producer left out is in that tree
                        self.parent_unreadable = True
                        raise BackupError(
                            client=self.client,
                            reason=f"{directory.path}: the parent's tree cannot be read "
                            f"({error}); the next backup sends this directory whole",
                        ) from error
                    directory.previous_tree = None  # a damaged parent costs sending files
        return directory.loaded

    def _drop(self, directory: _Dir, node: Node) -> None:
        """Leave out an entry placed in ``directory`` (its content could not be had)."""
        directory.nodes.remove(node)
        if directory.sparse:
            directory.removed.append(node.name)

    def _failed_entry(self, path: str) -> None:
        """An entry the producer could not read: in a sparse directory, the parent's
        entry of that name goes too (as it would from a complete listing)."""
        parent_path, name = os.path.split(path)
        if not name or not any(d.path == parent_path for d in self._stack):
            return
        self._close_until(parent_path)
        directory = self._stack[-1]
        if directory.sparse:
            directory.removed.append(os.fsencode(name))

    def _close_until(self, path: str | None) -> None:
        """Leave every open directory that is not ``path`` or one of its ancestors."""
        if not self._stack:
            raise BackupError(client=self.client, reason="an entry came before the root")
        while self._stack and self._stack[-1].path != path:
            directory = self._stack.pop()
            self._release(directory)
            if path is not None and not self._stack:
                raise BackupError(client=self.client, reason=f"entry outside the walk: {path}")

    def _release(self, released: _Dir) -> None:
        directory: _Dir | None = released
        while directory is not None:
            directory.pending -= 1
            if directory.pending:
                return
            if directory.sparse:
                directory.node.subtree = self._merge(directory)
            else:
                nodes = [n for n in directory.nodes if n.type]
                loaded = directory.loaded
                if (
                    directory.previous_tree is not None
                    and loaded is not None
                    and nodes == loaded.nodes()
                ):
                    directory.node.subtree = directory.previous_tree
                else:
                    directory.node.subtree = self.pool.save_tree(nodes)
                self.dir_hashes += self._dir_hash(directory.path, [n.name for n in nodes])
                directory.nodes = nodes
            directory = directory.parent

    def _merge(self, directory: _Dir) -> bytes:
        """A sparse directory's tree: the parent's, with the entries that were sent."""
        assert directory.previous_tree is not None
        if not directory.nodes and not directory.removed:  # nothing below it was sent
            return directory.previous_tree
        previous = self._previous(directory)
        if not directory.removed:
            replacements = splice(previous, directory.nodes)
            if replacements == []:
                return directory.previous_tree
            if replacements is not None and previous.data is not None:
                return self.pool.save_tree_data(replace_docs(previous.data, replacements))
        docs, names_changed, replaced = merge_docs(previous, directory.nodes, directory.removed)
        if names_changed:  # the parent's hash of its names no longer holds
            self._stale_dirs.add(self._dir_hash(directory.path, list(previous.positions)))
            self.dir_hashes += self._dir_hash(directory.path, [doc_name(d) for d in docs])
        elif not replaced:
            return directory.previous_tree
        return self.pool.save_tree_docs(docs)

    # --- helpers -----------------------------------------------------------------------

    def _fingerprint(self, path: str, node: Node) -> None:
        raw = path.encode("utf-8", "surrogateescape")
        size = node.size if node.type == FILE else 0
        self.fingerprints += protocol.fingerprint(
            self.key, raw, size, node.mtime_ns, node.ctime_ns, node.inode
        )

    def _dir_hash(self, path: str, names: list[bytes]) -> bytes:
        return protocol.dir_hash(self.key, path, names)

    def omitted(self, files: int, size: int, dirs: int) -> None:
        """Entries a sparse walk left out: the parent's, unchanged."""
        self.counters["files_unmodified"] += files
        self.counters["bytes_processed"] += size
        self.counters["dirs"] += dirs
        self.counters["entries_omitted"] += files + dirs
        self.progress.advance(files=files, size=size)

    def carry(self, fingerprints: bytes, seen: bytes, dir_hashes: bytes, dirs_seen: bytes) -> None:
        """The parent's fingerprints and directory hashes the producer saw unchanged (one
        flag each, in the order they were sent) hold for this snapshot too."""
        size, dir_size = protocol.FINGERPRINT_SIZE, protocol.DIR_HASH_SIZE
        if len(seen) != len(fingerprints) // size or len(dirs_seen) != len(dir_hashes) // dir_size:
            raise BackupError(client=self.client, reason="the producer's MATCHED does not fit")
        self.fingerprints += b"".join(
            itertools.compress(
                (fingerprints[i : i + size] for i in range(0, len(fingerprints), size)), seen
            )
        )
        self._carried_dirs = [
            dir_hashes[dir_size * i : dir_size * i + dir_size]
            for i, flag in enumerate(dirs_seen)
            if flag
        ]

    def _inside_paths(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths)

    def _reusable(self, previous: Node) -> bool:
        return previous.type in (FILE, IMAGE) and all(
            blob in self.pool.index for blob in previous.content
        )

    def _node(self, entry: Entry, name: bytes) -> Node:
        kind = entry.kind
        target = entry.target
        return Node(
            name=name,
            type=KINDS[kind],
            mode=int(entry.mode),
            uid=int(entry.uid),
            gid=int(entry.gid),
            user=str(entry.user),
            group=str(entry.group),
            mtime_ns=int(entry.mtime_ns),
            ctime_ns=int(entry.ctime_ns),
            size=int(entry.size),
            inode=int(entry.inode),
            device=int(entry.device),
            links=int(entry.links),
            target=os.fsencode(target) if target is not None and kind == protocol.SYMLINK else None,
            rdev=int(entry.rdev),
            xattrs={k: base64.b64decode(v) for k, v in (entry.xattrs or {}).items()},
        )

    def _warn_if_device(self, path: str, kind: str, target: str | None) -> None:
        """A path given to back up that is a device gets its node stored, not its
        contents: say so (``warnings`` of ``backup --json``). The host does not say what
        a link points to: a link given as a path that leads into /dev counts as one to a
        device (/dev/VG/LV, /dev/disk/by-id/…)."""
        if kind == "l":
            target = os.path.normpath(os.path.join(os.path.dirname(path), target or ""))
            if not target.startswith("/dev/"):
                return
        self.errors.append(node_only_warning(path, kind, target))

    def _warn(self, warning: dict[str, str]) -> None:
        """A warning about a stored file (``"severity": "warning"``), as the local walk
        gives it."""
        self.errors.append(warning)
        self.progress.warning(warning["path"], warning["error"])

    def _fail(self, path: str, message: str, *, count: bool = True) -> None:
        self.errors.append({"path": path, "error": message})
        if count:
            self.counters["files_failed"] += 1
        self.progress.warning(path, message)


def _changed_warning(path: str, facts: list[int]) -> dict[str, str] | None:
    """The local walk's warning from a producer's ``changed_while_read`` numbers (None
    when they show no change)."""
    size, mtime_ns, read, size_after, mtime_after = facts
    return changed_while_read(path, size, mtime_ns, read, StatusAfter(size_after, mtime_after))
