"""Backup from a stream of entries produced elsewhere (the helper on a host reached
over SSH, or an SFTP walk): trees, content and the snapshot.

The producer walks in depth-first order, children sorted by the bytes of their names,
a directory before its children — the order the local archiver walks in — and sends one
entry per file, directory, link or device with its stat data and a *state* saying what
it knows of a regular file's content:

``[path]`` (an entry of one element)
    path and stat data equal to the parent snapshot's (unchanged ctime: unchanged
    metadata too): the parent's node is reused as it is;
``digest:HEX``
    a whole-file digest (keyed BLAKE2b, :meth:`Pool.transfer_key`) that may already be
    in the pool: looked up in a :class:`DigestIndex`; a miss is fetched later;
``changed`` (with ``{"digest", "blocks", "changed_blocks"}``)
    a file that was in the parent and changed: known digest → reused; otherwise its
    content is fetched later as a *delta* against the parent's version (:meth:`missing`,
    :meth:`delta_request`): only blocks whose hash differs are sent;
``data``
    the content follows (:meth:`Ingest.content`);
``link:PATH``
    another name of a file already sent in this walk;
``error:MESSAGE``
    the producer could not read it: counted, left out of the snapshot.

Content is cut with the pool's chunker exactly as the local archiver cuts it, so the
same bytes make the same blobs whichever way they arrived. Directories whose entries
are all known are stored as soon as the walk leaves them; one that waits for fetched
content is stored when it arrives.

Thread safety: an :class:`Ingest` is driven by one thread; it stores sealed blobs on a
pool of worker threads of its own.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import itertools
import os
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from costor.errors import BackupError, DataCorruption
from costor.store.archiver import node_only_warning
from costor.store.compressibility import worth_compressing
from costor.store.pack import BlobType
from costor.store.pool import READ_WINDOW, Pool
from costor.store.progress import Progress
from costor.store.snapshot import Snapshot
from costor.store.tree import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Node,
    decode_docs,
    doc_name,
    find_doc,
    replace_docs,
    searchable,
)
from costor.util import jsonfast

KINDS = {"f": FILE, "d": DIR, "l": SYMLINK, "p": FIFO, "c": CHARDEV, "b": BLOCKDEV, "s": SOCKET}
BLOCK_SIZE = 1024 * 1024  # the producer's read and block size (costor/remote/helper.py)
LARGE_FILE = 64 * 1024 * 1024  # from this size the producer keeps 1 MiB block hashes
# Content is cut when this much is buffered: more than FastCDC's largest chunk, so
# every chunk but the last in the buffer ends where it would in a stream.
CUT_WINDOW = 32 * 1024 * 1024
BASE_KEPT = 64 * 1024 * 1024  # delta bases kept between request and rebuild, at most
BLOCKS_PERSON = b"costor-blocks"  # the digest of a large file is of its block hashes
DIR_PERSON = b"costor-dir"  # a directory's hash, of its path and names (the helper's)


class ContentDigest:
    """What proves a file's content (costor/remote/helper.py computes the same): a keyed
    BLAKE2b of the whole file; for a large file, the keyed 16-byte BLAKE2b of each 1 MiB
    block, and as digest the BLAKE2b of those. A large file's digest can so be checked
    from its blocks: one changed block costs hashing that block, not the file.

    Bytes are fed in file order; :meth:`jump` moves to another offset (blocks not fed
    from their first byte get no hash: the caller knows them otherwise)."""

    def __init__(self, key: bytes, *, large: bool) -> None:
        self.key = key
        self.large = large
        self.whole = None if large else hashlib.blake2b(key=key, digest_size=32)
        self.blocks: dict[int, bytes] = {}  # block index -> hash, of blocks fed whole
        self.position = 0
        self._index = -1
        self._block: Any = None

    def update(self, data: bytes | memoryview) -> None:
        if self.whole is not None:
            self.whole.update(data)
            self.position += len(data)
            return
        view = memoryview(data)
        while len(view):
            index, within = divmod(self.position, BLOCK_SIZE)
            take = min(len(view), BLOCK_SIZE - within)
            if within == 0:
                self._index, self._block = index, hashlib.blake2b(key=self.key, digest_size=16)
            if self._block is not None and self._index == index:
                self._block.update(view[:take])
                if within + take == BLOCK_SIZE:
                    self.blocks[index] = self._block.digest()
                    self._block = None
            view = view[take:]
            self.position += take

    def jump(self, position: int) -> None:
        assert self.whole is None, "only a large file's blocks can be skipped"
        self._block, self.position = None, position

    def close(self) -> None:
        """The file ended: a last, partial block fed from its start has its hash."""
        if self._block is not None:
            self.blocks[self._index] = self._block.digest()
            self._block = None

    def hexdigest(self) -> str:
        """Of a small file; a large file's is :func:`blocks_digest` of its blocks."""
        assert self.whole is not None
        return self.whole.hexdigest()

    def end(self, size: int) -> dict[str, Any]:
        """What a producer reports at the end of a file fed whole: size, digest, blocks."""
        self.close()
        if self.whole is not None:
            return {"size": size, "digest": self.whole.hexdigest(), "blocks": None}
        blocks = b"".join(self.blocks[index] for index in range(-(-size // BLOCK_SIZE)))
        digest = blocks_digest(self.key, blocks)
        return {"size": size, "digest": digest.hex(), "blocks": base64.b64encode(blocks).decode()}


def blocks_digest(key: bytes, blocks: bytes) -> bytes:
    return hashlib.blake2b(blocks, key=key, digest_size=32, person=BLOCKS_PERSON).digest()


class DigestIndex(Protocol):
    """Whole-file digests -> content, kept outside the pool (the state database)."""

    def lookup(self, digest: bytes) -> tuple[list[bytes], int] | None: ...

    def blocks(self, content: list[bytes]) -> bytes | None: ...

    def record(
        self, digest: bytes, content: list[bytes], size: int, blocks: bytes | None
    ) -> None: ...


@dataclass(frozen=True)
class ParentFile:
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    blocks: bytes | None  # block hashes of a large file, for in-place diffs


class _Previous:
    """A directory's entries in the parent snapshot, from its stored tree. An entry asked
    for by name is found in the tree's bytes and decoded alone (tree.py ``find_doc``);
    all of them are decoded only when a listing is needed (``docs``, ``positions``)."""

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data
        self._docs: list[dict[str, Any]] | None = None if data is not None else []
        self._positions: dict[bytes, int] | None = None if data is not None else {}
        self._nodes: dict[bytes, Node] = {}
        self.spans: dict[bytes, tuple[int, int]] = {}  # names found in the bytes
        if data is not None and not searchable(data):
            self._docs = decode_docs(data)  # now: a tree that does not decode fails here

    @property
    def docs(self) -> list[dict[str, Any]]:
        if self._docs is None:
            assert self.data is not None
            self._docs = decode_docs(self.data)
        return self._docs

    @property
    def positions(self) -> dict[bytes, int]:
        if self._positions is None:
            self._positions = {doc_name(doc): i for i, doc in enumerate(self.docs)}
        return self._positions

    def get(self, name: bytes) -> Node | None:
        node = self._nodes.get(name)
        if node is None:
            doc = self._doc(name)
            if doc is None:
                return None
            node = self._nodes[name] = Node.from_dict(doc)
        return node

    def _doc(self, name: bytes) -> dict[str, Any] | None:
        if self._positions is None and self.data is not None:
            found = find_doc(self.data, name)
            if found is not None:
                start, end, doc = found
                self.spans[name] = (start, end)
                return doc
        position = self.positions.get(name)  # not found so: the whole listing decides
        return None if position is None else self.docs[position]

    def nodes(self) -> list[Node]:
        return [self.get(name) or Node(name=name, type="") for name in self.positions]


_NOTHING = _Previous()


@dataclass(eq=False)
class _Dir:
    path: str
    node: Node
    parent: _Dir | None
    nodes: list[Node] = field(default_factory=list)
    pending: int = 1  # the walk's hold until it leaves the directory, plus waiting entries
    previous_tree: bytes | None = None  # its tree in the parent snapshot, read when needed
    loaded: _Previous | None = None  # that tree's entries, once read
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
    ) -> None:
        self.pool = pool
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
        self._done = False
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

    # --- what the producer is told first -------------------------------------------------

    def parent_files(self) -> Iterator[ParentFile]:
        """Every regular file and directory of the parent snapshot with its stat data
        (and block hashes of large files), for the producer to recognise what did not
        change."""
        if self.parent is None:
            return
        for path, node in self._parent_nodes(bytes.fromhex(self.parent.tree), b""):
            if node.type not in (FILE, DIR):
                continue
            blocks = self.index.blocks(node.content) if node.size >= LARGE_FILE else None
            yield ParentFile(
                os.fsdecode(b"/" + path.lstrip(b"/")),
                node.size,
                node.mtime_ns,
                node.ctime_ns,
                node.inode,
                blocks,
            )

    def _parent_nodes(self, tree: bytes, prefix: bytes) -> Iterator[tuple[bytes, Node]]:
        """Pool.walk, past trees it cannot read: a damaged parent only costs sending the
        files below them again (the walk's :meth:`_previous` finds them unreadable too)."""
        try:
            nodes = self.pool.load_tree(tree)
        except DataCorruption:
            return
        for node in nodes:
            path = prefix + b"/" + node.name if prefix else node.name
            yield path, node
            if node.type == DIR and node.subtree is not None:
                yield from self._parent_nodes(node.subtree, path)

    # --- the entry stream ----------------------------------------------------------------

    def entry(self, item: list[Any]) -> str:
        """Take one entry; returns its state, so the caller knows what follows it."""
        path = item[0]
        if len(item) <= 2:
            return self._unchanged(path, sparse=len(item) == 2)
        state = item[16]
        if state.startswith("error:"):
            self._failed_entry(path)
            self._fail(path, state[len("error:") :])
            return "error"
        if path == "/":
            self._open_root(sparse=state == "sparse")
            return ""
        parent_path, name = os.path.split(path)
        self._close_until(parent_path)
        directory = self._stack[-1]
        node = self._node(item, os.fsencode(name))
        if state.startswith("warning:"):
            self._fail(path, state[len("warning:") :], count=False)
        if item[1] in ("b", "c", "l") and path in self._given:
            self._warn_if_device(path, item[1], item[14])
        previous = self._previous(directory).get(node.name)
        if node.type in (FILE, DIR):
            self._fingerprint(path, node)
        if node.type == DIR:
            if self._inside_paths(path):  # not the directories leading to them
                self.counters["dirs"] += 1
            directory.nodes.append(node)
            directory.pending += 1
            child = _Dir(path, node, directory, sparse=state == "sparse")
            if previous is not None and previous.type == DIR and previous.subtree:
                child.previous_tree = previous.subtree
            elif child.sparse:
                raise BackupError(
                    client=self.client, reason=f"{path}: sparse, but not in the parent"
                )
            self._stack.append(child)
            return ""
        directory.nodes.append(node)
        if node.type != FILE:
            self.progress.advance(files=1)
            return ""
        self.counters["bytes_processed"] += node.size
        base = previous if previous is not None and self._reusable(previous) else None
        if state == "same" and base is not None:
            # Unchanged by the producer's own rule (SFTP: size and mtime): the parent's
            # content, with the metadata seen now.
            node.content = base.content
            self.counters["files_unmodified"] += 1
            self._resolved[path] = node
            self.progress.advance(files=1, size=node.size)
            return "same"
        if state.startswith("link:"):
            first = state[len("link:") :]
            if first in self._resolved:
                node.content = self._resolved[first].content
                same = previous is not None and previous.content == node.content
                kind = (
                    "files_unmodified" if same else ("files_changed" if previous else "files_new")
                )
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
        self.counters["files_changed" if previous is not None else "files_new"] += 1
        digest = None
        if state.startswith("digest:"):
            digest = state[len("digest:") :]
        elif state == "changed":
            digest = item[17]["digest"]
        if digest is not None:
            found = self.index.lookup(bytes.fromhex(digest))
            if found is not None and all(blob in self.pool.index for blob in found[0]):
                node.content, node.size = found
                self.counters["files_deduplicated"] += 1
                self._resolved[path] = node
                self.progress.advance(files=1, size=node.size)
                return "deduplicated"
        # Content follows at once ("data"), or is fetched after the walk: whole, or as
        # a delta against the parent's version when there is one to compare with.
        directory.pending += 1
        waiting = _Waiting(directory, node, inline=state == "data")
        if base is not None and state != "data" and base.size:
            waiting.base = base
            if state == "changed" and "changed_blocks" in item[17]:
                waiting.changed_blocks = [int(i) for i in item[17]["changed_blocks"]]
        self._waiting[path] = waiting
        return "data" if state == "data" else "wait"

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
        the producer sends the blocks whose hash differs and anything past the old end.

        A large file whose changed 1 MiB blocks are known: those blocks, in 4 KiB pieces.
        Otherwise the whole old file, in blocks of about the square root of its size
        (rsync's rule; powers of two from 512 B to 64 KiB, so that none spans the
        producer's 1 MiB reads)."""
        waiting = self._waiting[path]
        base = waiting.base
        assert base is not None
        reader = RandomReader(self.pool, base.content)
        ranges: list[list[Any]] = []
        if waiting.changed_blocks is not None and base.size >= LARGE_FILE:
            wanted = [
                (i * BLOCK_SIZE, min(BLOCK_SIZE, base.size - i * BLOCK_SIZE), 4096)
                for i in waiting.changed_blocks
                if i * BLOCK_SIZE < base.size
            ]
        else:
            block = 512
            while block * block < base.size and block < 65536:
                block *= 2
            wanted = [(0, base.size, block)]
        for offset, length, block in wanted:
            data = reader.read(offset, length)
            if offset == 0 and length == base.size and self._base_kept + length <= BASE_KEPT:
                # Kept for rebuilding the file when the changed blocks come (a second
                # read of the same blobs was a third of a small-file delta's cost).
                waiting.base_data = data
                self._base_kept += length
            hashes = b"".join(
                hashlib.blake2b(data[i : i + block], key=self.key, digest_size=8).digest()
                for i in range(0, len(data), block)
            )
            ranges.append([offset, length, block, base64.b64encode(hashes).decode()])
        return [path, base.size, ranges]

    def restart(self, item: list[Any]) -> ContentSink | None:
        """A fetched file's fresh entry: its node takes the stat data; returns the sink
        its content goes to (None: it could not be read, reported)."""
        path, state = item[0], item[16]
        waiting = self._waiting[path]
        kept, waiting.base_data = waiting.base_data, None
        self._base_kept -= len(kept or b"")
        if state.startswith("error:"):
            self._fail(path, state[len("error:") :])
            self._resolve(path, None, 0)
            return None
        fresh = self._node(item, waiting.node.name)
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
        large = waiting.node.size >= LARGE_FILE
        if state == "delta" and waiting.base is not None:
            base, reuse = waiting.base, None
            if large and waiting.changed_blocks is not None and base.size >= LARGE_FILE:
                blocks = self.index.blocks(base.content)
                if blocks:
                    reuse = _Reuse(self.pool, base, blocks, waiting.changed_blocks)
            sink = ContentSink(self, path, base=base.content, large=large, reuse=reuse)
            if kept is not None and sink.base is not None:
                sink.base.preload(kept)
            return sink
        return ContentSink(self, path, base=None, large=large)

    # --- content -------------------------------------------------------------------------

    def content(self, path: str) -> ContentSink:
        """A sink for the whole content of ``path``, which is waiting for it."""
        return ContentSink(self, path, base=None, large=self._waiting[path].node.size >= LARGE_FILE)

    def _resolve(self, path: str, content: list[bytes] | None, size: int) -> None:
        waiting = self._waiting.pop(path)
        if content is None:
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
            time=_rfc3339_now(),
            paths=self.paths,
            tree=self._root.node.subtree.hex(),
            hostname=self.hostname,
            parent=self.parent.id if self.parent else None,
            counters=counters,
            duration_s=time.monotonic() - self.started,
        )
        self.pool.save_snapshot(snapshot)
        self._done = True
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

    def _previous(self, directory: _Dir) -> _Previous:
        """The directory's entries in the parent snapshot (read on first use)."""
        if directory.loaded is None:
            directory.loaded = _NOTHING
            if directory.previous_tree is not None:
                try:
                    directory.loaded = _Previous(self.pool.read_blob(directory.previous_tree))
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
        spliced = self._splice(directory, previous)
        if spliced is not None:
            return spliced
        docs = list(previous.docs)
        gone: set[int] = set()
        added: list[dict[str, Any]] = []
        replaced = False
        for node in directory.nodes:
            position = previous.positions.get(node.name)
            if not node.type:
                if position is not None:
                    gone.add(position)
                continue
            doc = node.to_dict()
            if position is None:
                added.append(doc)
            elif docs[position] != doc:
                docs[position] = doc
                replaced = True
        sent = {node.name for node in directory.nodes if node.type}
        for name in directory.removed:  # failed, and not sent (a directory it cannot list is)
            position = previous.positions.get(name)
            if position is not None and name not in sent:
                gone.add(position)
        if gone or added:  # its names changed: the parent's hash of them no longer holds
            self._stale_dirs.add(self._dir_hash(directory.path, list(previous.positions)))
            docs = [doc for i, doc in enumerate(docs) if i not in gone] + added
            docs.sort(key=doc_name)
            self.dir_hashes += self._dir_hash(directory.path, [doc_name(d) for d in docs])
        elif not replaced:
            return directory.previous_tree
        return self.pool.save_tree_docs(docs)

    def _splice(self, directory: _Dir, previous: _Previous) -> bytes | None:
        """:meth:`_merge` when the entries sent only replace entries found in the parent's
        tree bytes (no name added or gone): those documents replaced in the bytes, the
        others neither decoded nor encoded again. None: the whole merge decides."""
        if directory.removed or previous.data is None:
            return None
        replacements = []
        for node in directory.nodes:
            span = previous.spans.get(node.name)
            if not node.type or span is None:
                return None
            doc = jsonfast.dumps(node.to_dict())
            if previous.data[span[0] : span[1]] != doc:
                replacements.append((span[0], span[1], doc))
        if not replacements:
            return directory.previous_tree
        return self.pool.save_tree_data(replace_docs(previous.data, replacements))

    # --- helpers -----------------------------------------------------------------------

    def _fingerprint(self, path: str, node: Node) -> None:
        raw = path.encode("utf-8", "surrogateescape")
        size = node.size if node.type == FILE else 0
        self.fingerprints += fingerprint(
            self.key, raw, size, node.mtime_ns, node.ctime_ns, node.inode
        )

    def _dir_hash(self, path: str, names: list[bytes]) -> bytes:
        """costor/remote/helper.py ``dir_hash``: of the path and the sorted names."""
        data = path.encode("utf-8", "surrogateescape") + b"\0" + b"\0".join(sorted(names))
        return hashlib.blake2b(data, key=self.key, digest_size=8, person=DIR_PERSON).digest()

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
        if len(seen) != len(fingerprints) // 12 or len(dirs_seen) != len(dir_hashes) // 8:
            raise BackupError(client=self.client, reason="the producer's MATCHED does not fit")
        self.fingerprints += b"".join(
            itertools.compress(
                (fingerprints[i : i + 12] for i in range(0, len(fingerprints), 12)), seen
            )
        )
        self._carried_dirs = [dir_hashes[8 * i : 8 * i + 8] for i, f in enumerate(dirs_seen) if f]

    def _inside_paths(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths)

    def _reusable(self, previous: Node) -> bool:
        return previous.type == FILE and all(blob in self.pool.index for blob in previous.content)

    def _node(self, item: list[Any], name: bytes) -> Node:
        (_p, kind, mode, uid, gid, user, group, size, mtime, ctime, ino, dev, nlink, rdev) = item[
            :14
        ]
        target, xattrs = item[14], item[15]
        return Node(
            name=name,
            type=KINDS[kind],
            mode=int(mode),
            uid=int(uid),
            gid=int(gid),
            user=str(user),
            group=str(group),
            mtime_ns=int(mtime),
            ctime_ns=int(ctime),
            size=int(size),
            inode=int(ino),
            device=int(dev),
            links=int(nlink),
            target=os.fsencode(target) if target is not None and kind == "l" else None,
            rdev=int(rdev),
            xattrs={k: base64.b64decode(v) for k, v in (xattrs or {}).items()},
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

    def _fail(self, path: str, message: str, *, count: bool = True) -> None:
        self.errors.append({"path": path, "error": message})
        if count:
            self.counters["files_failed"] += 1
        self.progress.warning(path, message)


class ContentSink:
    """Bytes of one file as they arrive (whole, or changed blocks over a base), cut and
    stored as they come; :meth:`finish` checks them against the producer's digest.

    A large file whose changed 1 MiB blocks are known (``reuse``) is not rebuilt whole:
    the parent's chunks between changes are taken as they are, unread. Around each
    change the base is cut again from the parent chunk boundary before the changed
    block until a new boundary falls on a parent one; from there on FastCDC cuts the
    same bytes the same way (each chunk depends only on the bytes from its start), so
    the chunks are those a full pass would give. The proof is the block hashes: changed
    blocks hashed here, the others the parent's, and the host's digest of them all."""

    def __init__(
        self,
        ingest: Ingest,
        path: str,
        *,
        base: list[bytes] | None,
        large: bool = False,
        reuse: _Reuse | None = None,
    ) -> None:
        self.ingest = ingest
        self.path = path
        self.buffer = bytearray()
        self.content: list[bytes] = []
        self.size = 0
        self.digest = ContentDigest(ingest.key, large=large)
        self.compress: bool | None = None
        self.base = _BaseReader(ingest.pool, base) if base is not None else None
        self.cursor = 0  # bytes of the new file produced so far
        self.reuse = reuse
        self.changed_end = 0  # the end of the last changed block fed

    def write(self, data: bytes) -> None:
        """The next bytes of the file (whole-content mode)."""
        self._feed(data)

    def block(self, offset: int, data: bytes) -> None:
        """A changed block at ``offset``: the base's bytes before it, then the block."""
        assert self.base is not None
        if offset < self.cursor:
            raise BackupError(client=self.ingest.client, reason=f"{self.path}: blocks out of order")
        if self.reuse is not None:
            self._reuse_until(offset - offset % BLOCK_SIZE)
        self._feed_base(offset - self.cursor)
        self._feed(data)
        self.base.skip(len(data))
        end = offset + len(data)
        self.changed_end = max(self.changed_end, end + (-end % BLOCK_SIZE))

    def finish(self, end: dict[str, Any]) -> None:
        ingest = self.ingest
        if end.get("error"):
            ingest._fail(self.path, str(end["error"]))
            ingest._resolve(self.path, None, 0)
            return
        size = int(end["size"])
        if self.reuse is not None and size:
            if size == self.reuse.old_size:
                self._reuse_until(size, to_the_end=True)
            else:  # its last block is a changed one: hashed here, so cut from its start
                self._reuse_until((size - 1) // BLOCK_SIZE * BLOCK_SIZE)
        if self.base is not None and size > self.cursor:
            self._feed_base(size - self.cursor)
        self._cut(final=True)
        self.digest.close()
        verified = self._verify(size, end)
        if verified is None:
            if self.base is not None:
                # A delta that does not rebuild the host's file (it changed meanwhile):
                # fetch it whole instead.
                ingest._waiting[self.path].base = None
                ingest.retry.append(self.path)
                return
            ingest._fail(self.path, "content did not match the host's digest; not stored")
            ingest._resolve(self.path, None, 0)
            return
        digest, blocks = verified
        ingest.index.record(digest, self.content, size, blocks)
        if blocks:
            ingest.large_blocks[self.path] = blocks
        ingest.counters["bytes_read"] += size
        ingest._check_workers()
        ingest._resolve(self.path, self.content, size)
        ingest.progress.advance(files=1)

    # --- internals ---------------------------------------------------------------------

    def _verify(self, size: int, end: dict[str, Any]) -> tuple[bytes, bytes | None] | None:
        """The digest (and block hashes) of what was rebuilt, if it is the host's file."""
        if self.size != size:
            return None
        if not self.digest.large:
            return (
                (bytes.fromhex(self.digest.hexdigest()), None)
                if self.digest.hexdigest() == end.get("digest") and not end.get("blocks")
                else None
            )
        theirs = base64.b64decode(end["blocks"]) if end.get("blocks") else b""
        count = -(-size // BLOCK_SIZE)
        ours = []
        for index in range(count):
            known = self.digest.blocks.get(index)
            if known is None and self.reuse is not None:
                known = self.reuse.unchanged_block(index)
            if known is None:
                return None  # neither hashed here nor known unchanged: not proven
            ours.append(known)
        blocks = b"".join(ours)
        digest = blocks_digest(self.ingest.key, blocks)
        if blocks != theirs or digest.hex() != end.get("digest"):
            return None
        return digest, blocks

    def _reuse_until(self, limit: int, *, to_the_end: bool = False) -> None:
        """Take the parent's chunks, unread, from here to the last parent boundary at or
        before ``limit`` (the start of the next changed block; with ``to_the_end``, the
        end of the file), once the cutting here has fallen back on parent boundaries."""
        reuse = self.reuse
        assert reuse is not None and self.base is not None
        if self.cursor >= limit:
            return
        while not (self.buffer == b"" and self.cursor in reuse.starts):
            # Cut the base on, a parent chunk at a time, until a boundary of ours is a
            # parent boundary past the changed blocks fed.
            step = reuse.next_start(self.cursor)
            if step is None or step > limit:
                return  # no parent boundary before the next change: cut it all
            before = self.cursor
            self._feed_base(step - self.cursor)
            if self.cursor == before:
                return  # the parent ended early: nothing more to take from it
            if self.cursor >= self.changed_end and self._fall_back_on_a_parent_boundary():
                break
        target = reuse.old_size if to_the_end else reuse.start_at_or_before(limit)
        if target <= self.cursor:
            return
        self.content += reuse.blobs_between(self.cursor, target)
        self.size += target - self.cursor
        self.cursor = target
        self.digest.jump(target)
        self.base.seek(reuse.blobs_before(target))

    def _fall_back_on_a_parent_boundary(self) -> bool:
        """Store the chunks the buffer holds up to its first boundary that is a parent's
        (past the changed blocks): then stand on it with an empty buffer, the base read
        from there. False, storing only the chunks that are final, if there is none."""
        reuse = self.reuse
        assert reuse is not None and self.base is not None
        if not self.buffer:
            return False
        ingest = self.ingest
        start = self.cursor - len(self.buffer)
        view = memoryview(self.buffer)
        chunks = list(ingest._chunker.cut_buf(view))
        meet = next(
            (
                chunk.offset
                for chunk in chunks
                if start + chunk.offset >= self.changed_end and start + chunk.offset in reuse.starts
            ),
            None,
        )
        keep = chunks[-1].offset if meet is None else meet
        self._store_chunks(view, chunks, keep)
        rest = bytes(view[keep:]) if meet is None else b""
        view.release()
        self.buffer = bytearray(rest)
        if meet is None:
            return False
        position = start + meet  # the bytes after it were the parent's: read them again
        self.size -= self.cursor - position
        self.cursor = position
        self.digest.jump(position)
        self.base.seek(reuse.blobs_before(position))
        return True

    def _feed_base(self, count: int) -> None:
        assert self.base is not None
        while count > 0:
            data = self.base.read(min(count, CUT_WINDOW))
            if not data:
                break  # the new file is longer: the rest arrived as blocks
            self._feed(data)
            count -= len(data)

    def _feed(self, data: bytes) -> None:
        if self.compress is None and data:
            self.compress = worth_compressing(os.fsencode(os.path.basename(self.path)), data)
        self.digest.update(data)
        self.buffer += data
        self.size += len(data)
        self.cursor += len(data)
        self.ingest.progress.advance(size=len(data))
        if len(self.buffer) >= CUT_WINDOW:
            self._cut(final=False)

    def _cut(self, *, final: bool) -> None:
        """Cut the buffer; keep its last chunk unless this is the end of the file (the
        next bytes may move that chunk's end)."""
        if not self.buffer:
            return
        ingest = self.ingest
        pool = ingest.pool
        view = memoryview(self.buffer)
        if final and len(view) <= int(pool.identity.chunker["min_size"]):
            self.content.append(ingest._store(view, bool(self.compress)))
            view.release()
            self.buffer = bytearray()
            return
        chunks = list(ingest._chunker.cut_buf(view))
        keep_from = len(view) if final else chunks[-1].offset
        self._store_chunks(view, chunks, keep_from)
        rest = bytes(view[keep_from:])
        view.release()
        self.buffer = bytearray(rest)

    def _store_chunks(self, view: memoryview, chunks: list[Any], keep_from: int) -> None:
        """Store the buffer's chunks that start before ``keep_from``, in order."""
        for chunk in chunks:
            if chunk.offset >= keep_from:
                break
            piece = view[chunk.offset : chunk.offset + chunk.length]
            self.content.append(self.ingest._store(piece, bool(self.compress)))


class _Reuse:
    """The parent version of a large file as chunks at known offsets, its block hashes,
    and which blocks the producer found changed."""

    def __init__(self, pool: Pool, base: Node, blocks: bytes, changed: list[int]) -> None:
        self.blobs = list(base.content)
        self.offsets = [0]
        for blob in self.blobs:
            self.offsets.append(self.offsets[-1] + pool.locate(blob).raw_length)
        self.old_size = self.offsets[-1]
        self.starts = set(self.offsets[:-1])
        self.block_hashes = blocks
        self.changed = set(changed)

    def next_start(self, position: int) -> int | None:
        """The first parent boundary after ``position`` (the end of the file counts)."""
        index = bisect.bisect_right(self.offsets, position)
        return self.offsets[index] if index < len(self.offsets) else None

    def start_at_or_before(self, position: int) -> int:
        starts = len(self.offsets) - 1  # the last offset is the end, not a start
        return self.offsets[max(0, bisect.bisect_right(self.offsets, position, 0, starts) - 1)]

    def blobs_before(self, position: int) -> int:
        """How many parent chunks end at or before ``position`` (a parent boundary)."""
        return bisect.bisect_left(self.offsets, position)

    def blobs_between(self, start: int, end: int) -> list[bytes]:
        return self.blobs[self.blobs_before(start) : self.blobs_before(end)]

    def unchanged_block(self, index: int) -> bytes | None:
        """The parent's hash of block ``index``, if the producer found it unchanged."""
        if index in self.changed or 16 * index + 16 > len(self.block_hashes):
            return None
        return self.block_hashes[16 * index : 16 * index + 16]


class _BaseReader:
    """The parent version of a file, read back from the pool in order."""

    def __init__(self, pool: Pool, content: list[bytes]) -> None:
        self.pool = pool
        self.content = content
        self.next = 0  # the next chunk to read
        self.current = b""

    def _fill(self) -> bool:
        while not self.current:
            if self.next >= len(self.content):
                return False
            self.current = self.pool.read_blob(self.content[self.next])
            self.next += 1
        return True

    def preload(self, data: bytes) -> None:
        """The whole base, already read (:meth:`Ingest.delta_request`)."""
        self.current, self.next = data, len(self.content)

    def seek(self, chunk: int) -> None:
        """To the start of parent chunk number ``chunk``."""
        self.next, self.current = chunk, b""

    def read(self, count: int) -> bytes:
        parts = []
        while count and self._fill():
            piece, self.current = self.current[:count], self.current[count:]
            parts.append(piece)
            count -= len(piece)
        return b"".join(parts)

    def skip(self, count: int) -> None:
        while count and self._fill():
            step = min(count, len(self.current))
            self.current = self.current[step:]
            count -= step


def fingerprint(
    key: bytes, path: bytes, size: int, mtime_ns: int, ctime_ns: int, inode: int
) -> bytes:
    """The producer's view of an entry (costor/remote/helper.py ``_stat_key``): a 4-byte
    keyed hash of its path and an 8-byte one of path and stat data."""
    keyed = _keyed8(key)
    by_path, by_stat = keyed.copy(), keyed.copy()  # a copy costs half a keyed start
    by_path.update(path)
    by_stat.update(path + b"\0" + _STAT.pack(size, mtime_ns, ctime_ns, inode))
    return by_path.digest()[:4] + by_stat.digest()


_STAT = struct.Struct(">QQQQ")


@functools.lru_cache(maxsize=8)
def _keyed8(key: bytes) -> Any:
    return hashlib.blake2b(key=key, digest_size=8)


class RandomReader:
    """Bytes at any offset of content stored as blobs (their sizes from the index)."""

    def __init__(self, pool: Pool, content: list[bytes]) -> None:
        self.pool = pool
        self.content = content
        self.starts: list[int] = []
        position = 0
        for blob in content:
            self.starts.append(position)
            position += pool.locate(blob).raw_length
        self.size = position
        self.window = position >= READ_WINDOW  # else each blob alone (Pool.read_blob)

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        end = min(offset + length, self.size)
        index = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        while offset < end and index < len(self.content):
            data = self.pool.read_blob(self.content[index], window=self.window)
            start = self.starts[index]
            parts.append(data[max(offset - start, 0) : end - start])
            offset = start + len(data)
            index += 1
        return b"".join(parts)


def _rfc3339_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
