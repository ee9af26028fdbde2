"""Content arriving from a host, cut with the pool's chunker exactly as the local walk
cuts it (:class:`ContentSink`), whole or as changed blocks over the parent's version
(read back with :class:`_BaseReader`, reused unread with :class:`_Reuse`)."""

from __future__ import annotations

import base64
import bisect
import os
from typing import TYPE_CHECKING, Any

from costor.errors import BackupError
from costor.protocol import BLOCK_SIZE, IMAGE_PIECE, LARGE_FILE, ContentDigest, blocks_digest
from costor.store.compressibility import worth_compressing
from costor.store.pool import READ_WINDOW, Pool
from costor.store.tree import Node

if TYPE_CHECKING:
    from costor.store.backup.stream import Ingest

# Content is cut when this much is buffered: more than FastCDC's largest chunk, so
# every chunk but the last in the buffer ends where it would in a stream.
CUT_WINDOW = 32 * 1024 * 1024


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
        block_size: int = BLOCK_SIZE,
        limit: int | None = None,
    ) -> None:
        self.ingest = ingest
        self.path = path
        self.limit = limit  # an image's size: its content is never longer
        self.buffer = bytearray()
        self.content: list[bytes] = []
        self.size = 0
        # The blocks its proof is made of: 1 MiB for a large file, an image's own.
        self.block_size = block_size
        self.digest = ContentDigest(ingest.key, large=large, block_size=block_size)
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
            self._reuse_until(offset - offset % self.block_size)
        self._feed_base(offset - self.cursor)
        self._feed(data)
        self.base.skip(len(data))
        end = offset + len(data)
        self.changed_end = max(self.changed_end, end + (-end % self.block_size))

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
                self._reuse_until((size - 1) // self.block_size * self.block_size)
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
        count = -(-size // self.block_size)
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
        self._last: tuple[int, bytes] = (-1, b"")  # the blob read last: the next range's too

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        end = min(offset + length, self.size)
        index = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        while offset < end and index < len(self.content):
            if self._last[0] == index:
                data = self._last[1]
            else:
                data = self.pool.read_blob(self.content[index], window=self.window)
                self._last = (index, data)
            start = self.starts[index]
            parts.append(data[max(offset - start, 0) : end - start])
            offset = start + len(data)
            index += 1
        return b"".join(parts)


def wanted_ranges(
    size: int, changed_blocks: list[int] | None, *, block_size: int | None = None
) -> list[tuple[int, int, int]]:
    """The ranges of a parent version of ``size`` bytes to ask a delta for, as ``(offset,
    length, block size)``. A large file whose changed 1 MiB blocks are known, or an image
    (``block_size``: its blocks): those blocks, in 4 KiB pieces. Otherwise the whole old
    file, in blocks of about the square root of its size (rsync's rule; powers of two
    from 512 B to 64 KiB, so that none spans the producer's 1 MiB reads)."""
    if changed_blocks is not None and (size >= LARGE_FILE or block_size is not None):
        block = block_size or BLOCK_SIZE
        piece = min(IMAGE_PIECE, block)
        return [
            (i * block, min(block, size - i * block), piece)
            for i in sorted(changed_blocks)
            if i * block < size
        ]
    block = 512
    while block * block < size and block < 65536:
        block *= 2
    return [(0, size, block)]
