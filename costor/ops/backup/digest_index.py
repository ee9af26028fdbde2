"""The digest index of one pool: whole-file digests of content that came over SSH
(the ``content_digests`` table), so one host's file already in the pool is not sent
again by another, with a Bloom filter the host checks first (kept beside the state)."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

from costor.db import digests as db_digests
from costor.db.session import session_scope
from costor.ops.context import Context
from costor.protocol import Bloom, bloom_add, bloom_filter


class StateDigestIndex:
    """:class:`costor.store.backup.stream.DigestIndex` over the ``content_digests`` table of one
    pool. New digests are kept in memory and written by :meth:`save`, after the
    snapshot: a backup that fails records nothing it did not finish."""

    def __init__(self, ctx: Context, pool_uuid: str) -> None:
        self.ctx = ctx
        self.pool_uuid = pool_uuid
        self.new: dict[str, tuple[list[bytes], int, bytes | None]] = {}
        # The pool's digests, once :meth:`digests` has read them, or the Bloom filter of
        # them :meth:`bloom` gave: a digest not among them is answered without a query (a
        # changed file's new digest usually is not; a query per file cost ~1 ms each).
        self._known: set[str] | None = None
        self._bloom: Bloom | None = None

    def bloom(self) -> bytes:
        """The Bloom filter of the pool's digests (:func:`bloom_filter`), for the helper.
        Kept in the state directory (``cache/POOL_UUID/bloom``) with the number of rows it
        was made for, and made again when that number changed: reading and hashing every
        digest cost ~60 ms for 20,000 of them, counting them ~2 ms. A filter that missed a
        digest (rows replaced, a count that came out the same) costs only that content
        being sent again; one with digests no longer in the table, a query that says so."""
        count = self._count()
        cached = _read_bloom(self._bloom_path())
        if cached is not None and cached[0] == count:
            payload = cached[2]
        else:
            payload = bloom_filter(self.digests())
            _write_bloom(self._bloom_path(), count, count, payload)
        self._bloom = Bloom(payload)
        return payload

    def _bloom_path(self) -> Path:
        return Path(self.ctx.inventory.costor.state_dir) / "cache" / self.pool_uuid / "bloom"

    def _count(self) -> int:
        with session_scope(self.ctx.engine, write=False) as session:
            return db_digests.count_digests(session, self.pool_uuid)

    def digests(self) -> list[bytes]:
        with session_scope(self.ctx.engine, write=False) as session:
            known = db_digests.pool_digests(session, self.pool_uuid)
        self._known = set(known)
        return [bytes.fromhex(digest) for digest in known]

    def lookup(self, digest: bytes) -> tuple[list[bytes], int] | None:
        if digest.hex() in self.new:
            content, size, _blocks = self.new[digest.hex()]
            return content, size
        if self._known is not None and digest.hex() not in self._known:
            return None
        if self._known is None and self._bloom is not None and not self._bloom.may_contain(digest):
            return None
        with session_scope(self.ctx.engine, write=False) as session:
            row = db_digests.digest_row(session, self.pool_uuid, digest.hex())
            if row is None:
                return None
            return _split(row.content), row.size

    def blocks(self, content: list[bytes]) -> bytes | None:
        key = content_key(content)
        with session_scope(self.ctx.engine, write=False) as session:
            blocks = db_digests.content_blocks(session, self.pool_uuid, key)
        return base64.b64decode(blocks) if blocks else None

    def record(self, digest: bytes, content: list[bytes], size: int, blocks: bytes | None) -> None:
        self.new[digest.hex()] = (content, size, blocks)

    def save(self) -> None:
        if not self.new:
            return
        rows = [
            {
                "pool_uuid": self.pool_uuid,
                "digest": digest,
                "size": size,
                "content": "".join(blob.hex() for blob in content),
                "content_key": content_key(content),
                "blocks": base64.b64encode(blocks).decode() if blocks else None,
            }
            for digest, (content, size, blocks) in self.new.items()
        ]
        with session_scope(self.ctx.engine) as session:
            db_digests.replace_digests(session, self.pool_uuid, list(self.new), rows)
        self._update_bloom([bytes.fromhex(digest) for digest in self.new])
        self.new.clear()

    def _update_bloom(self, added: list[bytes]) -> None:
        """Add this backup's digests to the kept filter, if it was current before them
        (else, or once it holds twice the digests it was sized for, the next backup makes
        it again)."""
        path = self._bloom_path()
        cached = _read_bloom(path)
        if cached is None:
            return
        count, sized_for, payload = cached
        now = self._count()
        if now > 2 * sized_for or now - count > len(added) or now < count:
            path.unlink(missing_ok=True)  # another backup added some too: made anew
            return
        _write_bloom(path, now, sized_for, bloom_add(payload, added))


def content_key(content: list[bytes]) -> str:
    return hashlib.sha256(b"".join(content)).hexdigest()


def _split(text: str) -> list[bytes]:
    return [bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64)]


def _read_bloom(path: Path) -> tuple[int, int, bytes] | None:
    """A kept Bloom filter: (rows it holds, rows it was sized for, filter); a cache, so
    any doubt is None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < 20:
        return None
    count, sized_for = struct.unpack(">QQ", data[:16])
    return count, sized_for, data[16:]


def _write_bloom(path: Path, count: int, sized_for: int, payload: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".bloom.{os.getpid()}.tmp")
        temporary.write_bytes(struct.pack(">QQ", count, sized_for) + payload)
        temporary.replace(path)
    except OSError:
        pass  # a cache: the next backup reads the digests again
