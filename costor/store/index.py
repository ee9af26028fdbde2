"""The blob index: where each blob lives (pack, offset, length).

In the pool, the index is a set of immutable **segments** (``index/<hash>``), each
written by one backup session after its packs, listing those packs' blobs. A segment is
``seal(zstd(records))`` where a record is ``pack_id (32) ‖ count (u32)`` followed by
``count`` pack entries in the trailer format. Segments may overlap (a pack adopted after
a crash can be listed twice); the union is the index. ``costor pool reindex`` replaces
all segments with one rebuilt from the pack trailers.

In memory the index is a dict keyed by the 32-byte blob id; pack ids are interned so
each entry costs one tuple (about 120 bytes with the dict slot). A blob stored in more
than one pack (two backups storing the same new chunk at once; a good copy stored after
a damaged one, damage.py) is found at its first copy; the others are kept aside, so a
copy found damaged can be dropped for the next one (:meth:`Index.drop`).
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import zstandard

from costor.store.pack import ENTRY, BlobType, PackEntry

PACK_RECORD = struct.Struct("<32sI")
SEGMENT_AD = b"costor-index-segment"


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: str
    type: BlobType
    offset: int
    length: int
    raw_length: int


class Index:
    """Thread-safe in-memory union of index segments."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, tuple[str, int, int, int, int]] = {}
        self._others: dict[bytes, list[tuple[str, int, int, int, int]]] = {}  # more copies
        self._packs: dict[str, int] = {}  # pack id -> blob count
        self._data_ends: dict[str, int] = {}  # pack id -> end of its last blob
        self._lock = threading.Lock()

    def add_pack(self, pack_id: str, entries: Iterable[PackEntry]) -> None:
        self.add_records(
            pack_id, ((e.blob_id, int(e.type), e.offset, e.length, e.raw_length) for e in entries)
        )

    def add_records(
        self, pack_id: str, records: Iterable[tuple[bytes, int, int, int, int]]
    ) -> None:
        """A pack's blobs as ``(blob id, type, offset, length, raw length)`` tuples, as
        :func:`segment_records` reads them (a backup loads every segment first: no
        :class:`PackEntry` per blob on that path, 3x faster)."""
        with self._lock:
            pack_id = sys.intern(pack_id)
            blobs = self._blobs
            count = data_end = 0
            for blob_identity, blob_type, offset, length, raw_length in records:
                found = blobs.get(blob_identity)
                if found is None:
                    blobs[blob_identity] = (pack_id, blob_type, offset, length, raw_length)
                elif found[0] != pack_id:  # another copy (a pack listed twice is one)
                    others = self._others.setdefault(blob_identity, [])
                    if all(other[0] != pack_id for other in others):
                        others.append((pack_id, blob_type, offset, length, raw_length))
                count += 1
                if offset + length > data_end:
                    data_end = offset + length
            self._packs[pack_id] = count
            self._data_ends[pack_id] = max(data_end, self._data_ends.get(pack_id, 0))

    def copy(self) -> Index:
        copied = Index()
        with self._lock:
            copied._blobs = dict(self._blobs)
            copied._others = {blob: list(others) for blob, others in self._others.items()}
            copied._packs = dict(self._packs)
            copied._data_ends = dict(self._data_ends)
        return copied

    def data_end(self, pack_id: str) -> int:
        """Where the pack's blobs end (its trailer follows): reads may extend to here."""
        return self._data_ends.get(pack_id, 0)

    def lookup(self, blob_identity: bytes) -> BlobLocation | None:
        found = self._blobs.get(blob_identity)
        if found is None:
            return None
        pack_id, blob_type, offset, length, raw_length = found
        return BlobLocation(pack_id, BlobType(blob_type), offset, length, raw_length)

    def locations(self, blob_identity: bytes) -> list[BlobLocation]:
        """Every copy of the blob the index knows, the one :meth:`lookup` gives first."""
        with self._lock:
            found = self._blobs.get(blob_identity)
            rows = [] if found is None else [found, *self._others.get(blob_identity, ())]
        return [BlobLocation(p, BlobType(t), o, n, r) for p, t, o, n, r in rows]

    def drop(self, blob_identity: bytes, pack_id: str) -> BlobLocation | None:
        """Forget the blob's copy in ``pack_id`` (found damaged); its next copy, if any,
        is the one found from now on. Returns the location dropped."""
        with self._lock:
            found = self._blobs.get(blob_identity)
            if found is None:
                return None
            others = self._others.get(blob_identity, [])
            if found[0] == pack_id:
                if others:
                    self._blobs[blob_identity] = others.pop(0)
                else:
                    del self._blobs[blob_identity]
                dropped = found
            else:
                match = next((o for o in others if o[0] == pack_id), None)
                if match is None:
                    return None
                others.remove(match)
                dropped = match
            if not others:
                self._others.pop(blob_identity, None)
        pack, blob_type, offset, length, raw_length = dropped
        return BlobLocation(pack, BlobType(blob_type), offset, length, raw_length)

    def __contains__(self, blob_identity: bytes) -> bool:
        return blob_identity in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    @property
    def pack_ids(self) -> set[str]:
        with self._lock:
            return set(self._packs)

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        with self._lock:
            snapshot = list(self._blobs.items())
        for blob_identity, (pack_id, blob_type, offset, length, raw_length) in snapshot:
            yield (
                blob_identity,
                BlobLocation(pack_id, BlobType(blob_type), offset, length, raw_length),
            )

    def copies(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """:meth:`items`, and every other copy of a blob stored more than once."""
        yield from self.items()
        with self._lock:
            others = [(blob, row) for blob, rows in self._others.items() for row in rows]
        for blob_identity, (pack_id, blob_type, offset, length, raw_length) in others:
            yield (
                blob_identity,
                BlobLocation(pack_id, BlobType(blob_type), offset, length, raw_length),
            )


class IndexCache:
    """The index segments a long-lived process (a ``costor serve`` daemon and the jobs
    it forks, the benchmark's server process) loaded for one pool, kept between
    backups: the next :meth:`Pool.load_index` reads only the segments written since
    and copies the rest (a dict copy: loading 20,000 blobs' segments again cost ~50 ms
    of every incremental pull). Reused only while every segment it holds is still
    listed and the condemned packs are the same; else loaded again whole. One copy of
    the index more in memory (its tuples are shared)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uuid = ""
        self.segments: set[str] = set()
        self.condemned: frozenset[str] = frozenset()
        self.index = Index()
        self.fallback = Index()

    def reset(self, uuid: str, condemned: frozenset[str]) -> None:
        self.uuid, self.condemned = uuid, condemned
        self.segments = set()
        self.index, self.fallback = Index(), Index()


def encode_segment(packs: dict[str, list[PackEntry]]) -> bytes:
    parts = []
    for pack_id, entries in packs.items():
        parts.append(PACK_RECORD.pack(bytes.fromhex(pack_id), len(entries)))
        parts.extend(
            ENTRY.pack(e.blob_id, e.type, e.offset, e.length, e.raw_length) for e in entries
        )
    return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))


def segment_records(data: bytes) -> Iterator[tuple[str, list[tuple[bytes, int, int, int, int]]]]:
    """A segment's packs, each with its blobs as plain tuples (see :meth:`Index.add_records`)."""
    raw = memoryview(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31))
    position = 0
    while position < len(raw):
        pack_raw, count = PACK_RECORD.unpack_from(raw, position)
        position += PACK_RECORD.size
        end = position + count * ENTRY.size
        if end > len(raw):
            raise ValueError("index segment truncated")
        yield pack_raw.hex(), list(ENTRY.iter_unpack(raw[position:end]))
        position = end


def decode_segment(data: bytes) -> dict[str, list[PackEntry]]:
    types = {int(t): t for t in BlobType}
    return {
        pack_id: [PackEntry(b, types[t], o, n, r) for b, t, o, n, r in records]
        for pack_id, records in segment_records(data)
    }
