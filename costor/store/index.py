"""The blob index: where each blob lives (pack, offset, length).

In the pool, the index is a set of immutable **segments** (``index/<hash>``), each
written by one backup session after its packs, listing those packs' blobs. A segment is
``seal(zstd(records))`` where a record is ``pack_id (32) ‖ count (u32)`` followed by
``count`` pack entries in the trailer format. Segments may overlap (a pack adopted after
a crash can be listed twice); the union is the index. ``costor pool reindex`` replaces
all segments with new ones rebuilt from the pack trailers. A segment lists at most
:data:`SEGMENT_BLOBS` blobs, so that reading one never needs more than a few tens of MiB.

**In memory** the index is compact (see docs/format.md "The index in memory"): rows in
columns of numpy arrays, 1 Mi rows per chunk — the blob id (32 bytes), the type (1),
offset, stored and raw length (4 each) and a pack number (4) into a table of pack ids:
49 bytes a row. A lookup goes through a bucket table keyed by the id's leading bits
(``starts``: where each bucket's rows begin in ``order``, the row numbers sorted by
bucket), four to eight rows a bucket: 4 more bytes a row for ``order``, ~1 for
``starts``. A dict of tuples, what this was before, cost ~230 bytes a blob (10 million
blobs, 2.2 GB); a blob here costs ~56 (bench/index.py). The structure is Borg's and Kopia's idea (a
fixed-size table over sorted fixed-width records) with the hashing left to the ids,
which are already uniform; numpy builds and sorts it without a Python loop per blob.

Blobs added after the table was built (packs written by this process, packs adopted)
go to a small **overlay** of dicts, merged into the table when it grows past a
fraction of it (new chunks appended: existing chunks are never written again, so
copies of an index share them). A blob stored in more than one pack (two backups
storing the same new chunk at once; a good copy stored after a damaged one, damage.py)
is found at its first copy; a copy found damaged is dropped (:meth:`Index.drop`) and the
next copy is found from then on.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import zstandard

from costor.store.pack import ENTRY, BlobType, PackEntry

PACK_RECORD = struct.Struct("<32sI")
_LEAD = struct.Struct(">I").unpack_from  # an id's first 32 bits
SEGMENT_AD = b"costor-index-segment"
SEGMENT_BLOBS = 1 << 20  # at most so many blobs per written segment (~49 MiB raw)

CHUNK_BITS = 20
CHUNK_ROWS = 1 << CHUNK_BITS  # rows per column chunk; a row number is chunk << 20 | row
_ROW_MASK = CHUNK_ROWS - 1
_READ_BLOCK = 1 << 22  # bytes of a segment decompressed at a time
_SORT_ROWS = 1 << 18  # rows sorted at a time while the lookup is built (at most 2**18)
_SLICE_BITS = np.uint64(18)
_SLICE_MASK = np.uint64((1 << 18) - 1)
_MAX_RECORD = 1 << 31  # a pack record larger than this is damage, not data
_MERGE_MIN = 1 << 18  # the overlay is merged into the table past max(this, rows / 16)

# One trailer entry (``ENTRY``), as numpy reads it from a segment's bytes.
_ENTRY_DTYPE = np.dtype(
    {
        "names": ["type", "offset", "length", "raw"],
        "formats": ["u1", "<u4", "<u4", "<u4"],
        "offsets": [32, 33, 37, 41],
        "itemsize": ENTRY.size,
    }
)

Row = tuple[str, int, int, int, int]  # pack id, type, offset, length, raw length
_TYPES = tuple(BlobType)  # a stored type number -> BlobType, faster than BlobType(n)


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: str
    type: BlobType
    offset: int
    length: int
    raw_length: int


class _Chunk:
    """Up to :data:`CHUNK_ROWS` rows in columns. Filled while pending, then never
    written again (copies of an index share it). The ids live in a ``bytearray``
    (numpy writes into it through a view): ``bytearray.startswith(key, offset)`` compares
    an id without making a slice — the lookup's inner step — and sealing trims it in
    place instead of copying it."""

    __slots__ = ("ids", "id_bytes", "types", "offsets", "lengths", "raws", "packs", "n", "views")

    def __init__(self, capacity: int) -> None:
        self.id_bytes = bytearray(capacity * 32)
        self.ids = self._id_array(capacity)
        self.types = np.empty(capacity, np.uint8)
        self.offsets = np.empty(capacity, np.uint32)
        self.lengths = np.empty(capacity, np.uint32)
        self.raws = np.empty(capacity, np.uint32)
        self.packs = np.empty(capacity, np.uint32)  # pending: record no.; then pack no.
        self.n = 0
        self.views: tuple[memoryview, ...] = ()

    def _id_array(self, rows: int) -> np.ndarray:
        return np.frombuffer(self.id_bytes, np.uint8).reshape(rows, 32)

    @property
    def capacity(self) -> int:
        return len(self.types)

    def grow(self, capacity: int) -> None:
        """To ``capacity`` rows (more, or fewer down to the rows held)."""
        for name in ("types", "offsets", "lengths", "raws", "packs"):
            old = getattr(self, name)
            new = np.empty(capacity, old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)
        self.ids = np.empty((0, 32), np.uint8)  # no view of the bytes while they resize
        if capacity * 32 > len(self.id_bytes):
            self.id_bytes += bytes(capacity * 32 - len(self.id_bytes))
        else:  # a copy: a bytearray cut by less than half keeps its whole allocation
            self.id_bytes = bytearray(memoryview(self.id_bytes)[: capacity * 32])
        self.ids = self._id_array(capacity)

    def seal(self) -> None:
        """Trim to the rows held; memoryviews for reading one row without numpy's
        per-element cost (an int from a memoryview is ~40 ns, from numpy ~100)."""
        if self.n < self.capacity:
            self.grow(self.n)
        self.views = (
            memoryview(self.id_bytes),  # held: the bytes cannot be resized any more
            self.types.data,
            self.offsets.data,
            self.lengths.data,
            self.raws.data,
            self.packs.data,
        )


class _Pending:
    """Rows being loaded for one index, before they join its table."""

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        self.chunks: list[_Chunk] = []
        # Per pack record (a pack may be listed twice): its id, 32 bytes each, and the
        # end of its last blob; flat, not a Python object per record.
        self.pack_raws = bytearray()
        self.pack_ends = array("Q")
        self.rows = 0

    def mark(self) -> tuple[int, int, int]:
        last = self.chunks[-1].n if self.chunks else 0
        return len(self.chunks), last, len(self.pack_ends)

    def rollback(self, mark: tuple[int, int, int]) -> None:
        chunks, last, records = mark
        del self.chunks[chunks:]
        if self.chunks:
            self.chunks[-1].n = last
        del self.pack_raws[records * 32 :], self.pack_ends[records:]
        self.rows = sum(c.n for c in self.chunks)

    def add(self, records: list[tuple[bytes, memoryview, int]]) -> None:
        """Records of a segment block: ``(pack id, entries, count)``; entries in the
        trailer format."""
        if not records:
            return
        first = len(self.pack_ends)
        counts = np.fromiter((count for _, _, count in records), np.int64, len(records))
        data = b"".join(entries for _, entries, _ in records)
        total = int(counts.sum())
        if total == 0:
            for raw, _, _ in records:
                self.pack_raws += raw
            self.pack_ends.extend(0 for _ in records)
            return
        table = np.frombuffer(data, _ENTRY_DTYPE, total)
        if int(table["type"].max()) >= len(_TYPES):
            raise ValueError("index segment: a blob of an unknown type")
        flat = np.frombuffer(data, np.uint8, total * ENTRY.size).reshape(total, ENTRY.size)
        record_no = np.repeat(np.arange(first, first + len(records), dtype=np.uint32), counts)
        ends = table["offset"].astype(np.uint64) + table["length"]
        nonempty = counts > 0
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[nonempty]
        record_ends = np.zeros(len(records), np.uint64)
        record_ends[nonempty] = np.maximum.reduceat(ends, starts)
        for raw, _, _ in records:
            self.pack_raws += raw
        self.pack_ends.extend(record_ends.tolist())
        done = 0
        while done < total:
            chunk = self._room()
            take = min(total - done, chunk.capacity - chunk.n)
            at, upto = chunk.n, chunk.n + take
            part = slice(done, done + take)
            chunk.ids[at:upto] = flat[part, :32]
            chunk.types[at:upto] = table["type"][part]
            chunk.offsets[at:upto] = table["offset"][part]
            chunk.lengths[at:upto] = table["length"][part]
            chunk.raws[at:upto] = table["raw"][part]
            chunk.packs[at:upto] = record_no[part]
            chunk.n = upto
            done += take
        self.rows += total

    def add_rows(self, pack_id: str, rows: Iterable[tuple[bytes, int, int, int, int]]) -> None:
        """One pack's rows as tuples (the overlay's, a few at a time)."""
        items = list(rows)
        packed = b"".join(ENTRY.pack(*row) for row in items)
        self.add([(bytes.fromhex(pack_id), memoryview(packed), len(items))])

    def _room(self) -> _Chunk:
        if self.chunks and self.chunks[-1].n < CHUNK_ROWS:
            chunk = self.chunks[-1]
            if chunk.n == chunk.capacity:
                chunk.grow(min(CHUNK_ROWS, chunk.capacity * 4))
            return chunk
        left = self.expected - self.rows
        chunk = _Chunk(min(CHUNK_ROWS, max(1024, left)))
        self.chunks.append(chunk)
        return chunk


class _Table:
    """Immutable compact rows and their lookup structure (shared by copies)."""

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.id_bytes: list[bytearray] = []  # each chunk's ids
        self.rows = 0  # rows held, every copy of every blob
        self.pack_raw = np.empty((0, 32), np.uint8)  # pack no. -> pack id
        self.pack_end = np.empty(0, np.uint64)  # pack no. -> end of its last blob
        self.pack_key = np.empty(0, np.uint64)  # first 8 bytes of the ids, sorted
        self.pack_key_no = np.empty(0, np.uint32)  # ... and their pack numbers
        self.pack_hex: list[str | None] = []  # pack no. -> id, as asked for
        self.order = np.empty(0, np.uint32)
        self.order_view = self.order.data
        self.starts_view = np.zeros(2, np.uint32).data
        self.shift = 31  # bucket = the id's first 32 bits >> shift
        self.groups: dict[bytes, list[int]] = {}  # ids held in several rows -> rows
        self.hidden: frozenset[int] = frozenset()  # a copy listed twice for one pack

    # --- reading -----------------------------------------------------------------

    def find(self, key: bytes) -> Iterator[int]:
        """The rows holding ``key``, first copy first."""
        if self.rows == 0 or len(key) != 32:
            return
        key = bytes(key)
        bucket = _LEAD(key)[0] >> self.shift
        starts, order, ids = self.starts_view, self.order_view, self.id_bytes
        for position in range(starts[bucket], starts[bucket + 1]):
            row = order[position]
            if ids[row >> CHUNK_BITS].startswith(key, (row & _ROW_MASK) << 5):
                yield row

    def row(self, row: int) -> Row:
        _ids, types, offsets, lengths, raws, packs = self.chunks[row >> CHUNK_BITS].views
        at = row & _ROW_MASK
        return self.pack_id(packs[at]), types[at], offsets[at], lengths[at], raws[at]

    def row_pack(self, row: int) -> int:
        return int(self.chunks[row >> CHUNK_BITS].views[5][row & _ROW_MASK])

    def row_id(self, row: int) -> bytes:
        offset = (row & _ROW_MASK) << 5
        return bytes(self.chunks[row >> CHUNK_BITS].views[0][offset : offset + 32])

    def pack_id(self, number: int) -> str:
        found = self.pack_hex[number]
        if found is None:  # hex made once per pack, when first asked for
            found = self.pack_hex[number] = self.pack_raw[number].tobytes().hex()
        return found

    def pack_number(self, pack_id: str) -> int | None:
        try:
            raw = bytes.fromhex(pack_id)
        except ValueError:
            return None
        return self.pack_number_raw(raw)

    def pack_number_raw(self, raw: bytes) -> int | None:
        if len(raw) != 32 or not len(self.pack_key):
            return None
        key = np.uint64(int.from_bytes(raw[:8], "big"))
        position = int(np.searchsorted(self.pack_key, key))
        while position < len(self.pack_key) and self.pack_key[position] == key:
            number = int(self.pack_key_no[position])
            if self.pack_raw[number].tobytes() == raw:
                return number
            position += 1
        return None

    def all_rows(self) -> Iterator[tuple[int, bytes, Row]]:
        """Every row in row order, chunk by chunk."""
        for number, chunk in enumerate(self.chunks):
            base = number << CHUNK_BITS
            ids, types, offsets, lengths, raws, packs = chunk.views
            for at in range(chunk.n):
                yield (
                    base | at,
                    bytes(ids[at << 5 : (at << 5) + 32]),
                    (self.pack_id(packs[at]), types[at], offsets[at], lengths[at], raws[at]),
                )

    # --- building ------------------------------------------------------------------

    def extended(self, pending: _Pending, dropped: set[int]) -> _Table:
        """A new table: this one's rows and packs and ``pending``'s (its chunks are
        taken, their record numbers made pack numbers). ``dropped``: the index's dropped
        rows (a row that repeats a live copy of its pack is hidden; one that repeats a
        dropped copy is not: the pack was listed again after its copy was dropped)."""
        table = _Table()
        table.chunks = list(self.chunks)
        table.id_bytes = list(self.id_bytes)
        known = len(self.pack_raw)
        new_packs: dict[bytes, int] = {}
        remap = np.empty(len(pending.pack_ends), np.uint32)
        raws = memoryview(pending.pack_raws)
        for record in range(len(pending.pack_ends)):
            raw = bytes(raws[record * 32 : record * 32 + 32])
            number = new_packs.get(raw)
            if number is None:
                number = self.pack_number_raw(raw)
                if number is None:
                    number = new_packs[raw] = known + len(new_packs)
            remap[record] = number
        del raws
        pack_raw = np.frombuffer(b"".join(new_packs), np.uint8).reshape(-1, 32)
        del new_packs
        table.pack_raw = np.concatenate((self.pack_raw, pack_raw))
        table.pack_end = np.concatenate((self.pack_end, np.zeros(len(pack_raw), np.uint64)))
        np.maximum.at(table.pack_end, remap, np.frombuffer(pending.pack_ends, np.uint64))
        pending.pack_raws, pending.pack_ends = bytearray(), array("Q")  # not held any more
        table.pack_hex = [*self.pack_hex, *([None] * len(pack_raw))]
        keys = table.pack_raw[:, :8].copy().view(">u8").reshape(-1).astype(np.uint64)
        table.pack_key_no = np.argsort(keys, kind="stable").astype(np.uint32)
        table.pack_key = keys[table.pack_key_no]
        for chunk in pending.chunks:
            if chunk.n:
                chunk.packs[: chunk.n] = remap[chunk.packs[: chunk.n]]
                chunk.seal()
                if len(table.chunks) >= 1 << (32 - CHUNK_BITS):
                    raise ValueError("the index holds more rows than it can number")
                table.chunks.append(chunk)
                table.id_bytes.append(chunk.id_bytes)
        table.rows = self.rows + pending.rows
        table._build_lookup(self.hidden, dropped)
        return table

    def _build_lookup(self, hidden: frozenset[int], dropped: set[int]) -> None:
        """``order``, ``starts``, ``groups`` over every row, by a counting sort of the
        rows on their bucket, chunk by chunk: besides ``order`` itself, a bucket counter
        and one chunk's temporaries (a global argsort would hold 8 bytes a row more,
        the largest cost of opening a big index). Within a bucket rows stay in row
        order, so the first copy of an id is found first."""
        bits = max(1, min(32, self.rows.bit_length() - 3))  # ~4 to 8 rows a bucket
        self.shift = 32 - bits
        shift = np.uint32(self.shift)
        fill = np.zeros(1 << bits, np.uint32)  # first, each bucket's count
        for chunk in self.chunks:
            for low in range(0, chunk.n, _SORT_ROWS):  # np.add.at: 5 s for 10 M rows
                counts = np.bincount(
                    _leads(chunk, low, low + _SORT_ROWS) >> shift, minlength=1 << bits
                )
                np.add(fill, counts, out=fill, casting="unsafe")  # < 2**32 rows: exact
                del counts
        starts = np.zeros((1 << bits) + 1, np.uint32)
        np.cumsum(fill, dtype=np.uint32, out=starts[1:])
        fill[:] = starts[:-1]  # now where each bucket's next row goes
        order = np.empty(self.rows, np.uint32)
        for number, chunk in enumerate(self.chunks):
            for low in range(0, chunk.n, _SORT_ROWS):  # a slice at a time: small temporaries
                high = min(chunk.n, low + _SORT_ROWS)
                # (bucket, row in the slice) as one number: a plain sort of distinct
                # numbers is stable, and much faster than a stable argsort.
                keys = (_leads(chunk, low, high) >> shift).astype(np.uint64) << _SLICE_BITS
                keys |= np.arange(high - low, dtype=np.uint64)
                keys.sort()
                sort = (keys & _SLICE_MASK).astype(np.int64)
                buckets = (keys >> _SLICE_BITS).astype(np.uint32)
                del keys
                firsts = np.flatnonzero(np.concatenate(([True], buckets[1:] != buckets[:-1])))
                runs = np.diff(np.append(firsts, len(buckets)))
                rank = np.arange(len(buckets)) - np.repeat(firsts, runs)
                rows = sort + ((number << CHUNK_BITS) + low)
                order[fill[buckets].astype(np.int64) + rank] = rows
                fill[buckets[firsts]] += runs.astype(np.uint32)
        del fill
        self.starts_view = starts.data
        self.order = order
        self.order_view = order.data
        self.groups, self.hidden = self._find_groups(hidden, dropped)

    def _find_groups(
        self, hidden: frozenset[int], dropped: set[int]
    ) -> tuple[dict[bytes, list[int]], frozenset[int]]:
        """Ids held in several rows. Candidates share their first 32 bits (~n²/2³³
        pairs, found by sorting those bits a range of buckets at a time: equal bits are
        in one bucket); each one's rows are then found in full."""
        hide = set(hidden)
        groups: dict[bytes, list[int]] = {}
        if self.rows < 2:
            return groups, frozenset(hide)
        starts, order = self.starts_view, self.order_view
        order_array = np.frombuffer(order, np.uint32)
        bounds = np.frombuffer(starts, np.uint32)
        candidates: set[bytes] = set()
        step = max(1, len(bounds) >> 4)  # ~1/16 of the rows at a time, whole buckets
        for first in range(0, len(bounds) - 1, step):
            low, high = int(bounds[first]), int(bounds[min(first + step, len(bounds) - 1)])
            if high - low < 2:
                continue
            # Which leads repeat, not where: the block's rows sorted are chunk by chunk.
            block = np.sort(order_array[low:high])
            edges = np.searchsorted(block, np.arange(len(self.chunks) + 1) << CHUNK_BITS)
            parts = [
                np.take(
                    chunk.ids.view(">u4")[:, 0],
                    (block[edges[n] : edges[n + 1]] & _ROW_MASK).astype(np.intp),
                )
                for n, chunk in enumerate(self.chunks)
                if edges[n] < edges[n + 1]
            ]
            leads = np.concatenate(parts).astype(np.uint32)
            del parts, block
            leads.sort()
            for lead in np.unique(leads[1:][leads[1:] == leads[:-1]]).tolist():
                bucket = lead >> self.shift
                for position in range(starts[bucket], starts[bucket + 1]):
                    blob = self.row_id(order[position])
                    if _LEAD(blob)[0] == lead:
                        candidates.add(blob)
        for blob in candidates:  # every row of an id is in its bucket, in row order
            rows = list(self.find(blob))
            if len(rows) < 2:
                continue
            groups[blob] = rows
            seen: set[int] = set()
            for row in rows:
                if row in hide or row in dropped:
                    continue
                pack = self.row_pack(row)
                if pack in seen:
                    hide.add(row)  # the same pack listed in two segments: one copy
                seen.add(pack)
        return groups, frozenset(hide)


def _leads(chunk: _Chunk, low: int = 0, high: int | None = None) -> np.ndarray:
    """The first 32 bits of (some of) a chunk's ids, as numbers."""
    return chunk.ids[low : chunk.n if high is None else high].view(">u4")[:, 0].astype(np.uint32)


class Index:
    """Thread-safe in-memory union of index segments (see the module's docstring).

    Where a blob is found, first copy first: live table rows in row order, then the
    overlay's ``_blobs`` (ids with no live table row when they were added), then its
    ``_extra`` (further copies). Table rows never come back to life once dropped, so
    an id in ``_blobs`` never has a live table row."""

    def __init__(self) -> None:
        self._table = _Table()
        self._dropped: set[int] = set()  # table rows dropped (a damaged copy)
        self._blobs: dict[bytes, Row] = {}  # overlay: ids with no live table row
        self._extra: dict[bytes, list[Row]] = {}  # overlay: further copies
        self._packs: set[str] = set()  # overlay's packs
        self._data_ends: dict[str, int] = {}  # overlay's packs -> end of last blob
        self._lock = threading.Lock()

    # --- adding ----------------------------------------------------------------------

    def add_pack(self, pack_id: str, entries: Iterable[PackEntry]) -> None:
        self.add_records(
            pack_id, ((e.blob_id, int(e.type), e.offset, e.length, e.raw_length) for e in entries)
        )

    def add_records(
        self, pack_id: str, records: Iterable[tuple[bytes, int, int, int, int]]
    ) -> None:
        """A pack's blobs as ``(blob id, type, offset, length, raw length)`` tuples (a
        pack written or adopted: to the overlay, merged into the table when it grows)."""
        with self._lock:
            data_end = 0
            for blob_identity, blob_type, offset, length, raw_length in records:
                row = (pack_id, blob_type, offset, length, raw_length)
                if offset + length > data_end:
                    data_end = offset + length
                copies = self._locked_rows(blob_identity)
                if not copies:
                    self._blobs[blob_identity] = row
                elif all(copy[0] != pack_id for copy in copies):  # a pack listed twice is one
                    self._extra.setdefault(blob_identity, []).append(row)
            self._packs.add(pack_id)
            self._data_ends[pack_id] = max(data_end, self._data_ends.get(pack_id, 0))
            overlay = len(self._blobs) + len(self._extra)
            if overlay > max(_MERGE_MIN, self._table.rows >> 4):
                self._merge_overlay()

    def _absorb(self, pending: _Pending) -> None:
        """Rows loaded in bulk (:class:`SegmentLoader`) join the table."""
        with self._lock:
            if pending.rows or pending.pack_ends:
                if self._blobs or self._extra or self._packs:
                    self._merge_overlay()  # added before these: found before them
                self._table = self._table.extended(pending, self._dropped)

    def _merge_overlay(self) -> None:
        """The overlay's rows become table rows (lock held): first copies, then the
        further ones, so the order in which copies are found stays."""
        pending = _Pending(len(self._blobs) + sum(len(v) for v in self._extra.values()))
        # An id's copies keep their order: first copies, then each id's second, third...
        # (within one rank the order of different ids does not matter: grouped by pack).
        ranks: list[list[tuple[bytes, Row]]] = [list(self._blobs.items())]
        for blob, copies in self._extra.items():
            for rank, row in enumerate(copies, start=1):
                if rank == len(ranks):
                    ranks.append([])
                ranks[rank].append((blob, row))
        for rank_rows in ranks:
            by_pack: dict[str, list[tuple[bytes, int, int, int, int]]] = {}
            for blob, (pack, blob_type, offset, length, raw_length) in rank_rows:
                by_pack.setdefault(pack, []).append((blob, blob_type, offset, length, raw_length))
            for pack, pack_rows in by_pack.items():
                pending.add_rows(pack, pack_rows)
        for pack in self._packs:  # every pack, even one whose blobs were all known
            pending.pack_raws += bytes.fromhex(pack)
            pending.pack_ends.append(self._data_ends.get(pack, 0))
        self._table = self._table.extended(pending, self._dropped)
        self._blobs, self._extra, self._packs, self._data_ends = {}, {}, set(), {}

    def copy(self) -> Index:
        copied = Index()
        with self._lock:
            copied._table = self._table  # never written again: shared
            copied._dropped = set(self._dropped)
            copied._blobs = dict(self._blobs)
            copied._extra = {blob: list(rows) for blob, rows in self._extra.items()}
            copied._packs = set(self._packs)
            copied._data_ends = dict(self._data_ends)
        return copied

    # --- reading ---------------------------------------------------------------------

    def _first_live(self, table: _Table, key: bytes) -> int:
        """The first live table row holding ``key``, or -1 (the hot path of every
        lookup: no generator, no slice, no numpy call; ~1 µs)."""
        if not table.rows or len(key) != 32:
            return -1
        if type(key) is not bytes:
            key = bytes(key)
        bucket = _LEAD(key)[0] >> table.shift
        starts = table.starts_view
        end = starts[bucket + 1]
        position = starts[bucket]
        if position == end:
            return -1
        order, ids = table.order_view, table.id_bytes
        dropped, hidden = self._dropped, table.hidden
        while position < end:
            row = order[position]
            if (
                ids[row >> CHUNK_BITS].startswith(key, (row & _ROW_MASK) << 5)
                and row not in dropped
                and row not in hidden
            ):
                return row
            position += 1
        return -1

    def _live_rows(self, table: _Table, key: bytes) -> list[int]:
        dropped, hidden = self._dropped, table.hidden
        return [row for row in table.find(key) if row not in dropped and row not in hidden]

    def _locked_rows(self, blob_identity: bytes) -> list[Row]:
        """Every live copy, first copy first."""
        table = self._table
        rows = [table.row(row) for row in self._live_rows(table, blob_identity)]
        found = self._blobs.get(blob_identity)
        if found is not None:
            rows.append(found)
        rows.extend(self._extra.get(blob_identity, ()))
        return rows

    def data_end(self, pack_id: str) -> int:
        """Where the pack's blobs end (its trailer follows): reads may extend to here."""
        ends = self._data_ends  # before the table: see lookup
        table = self._table
        number = table.pack_number(pack_id)
        end = int(table.pack_end[number]) if number is not None else 0
        return max(end, ends.get(pack_id, 0))

    def lookup(self, blob_identity: bytes) -> BlobLocation | None:
        # The overlay first, then the table: a merge sets the new table before it
        # empties the overlay, so a row is always in one of what this reads.
        blobs, extra = self._blobs, self._extra
        table = self._table
        row = self._first_live(table, blob_identity)
        if row >= 0:
            found = table.row(row)
        else:
            first = blobs.get(blob_identity)
            if first is None:
                if not extra.get(blob_identity):
                    return None
                with self._lock:  # a further copy, perhaps being dropped
                    copies = self._extra.get(blob_identity)
                    if not copies:
                        return None
                    first = copies[0]
            found = first
        pack_id, blob_type, offset, length, raw_length = found
        return BlobLocation(pack_id, _TYPES[blob_type], offset, length, raw_length)

    def locations(self, blob_identity: bytes) -> list[BlobLocation]:
        """Every copy of the blob the index knows, the one :meth:`lookup` gives first."""
        with self._lock:
            rows = self._locked_rows(blob_identity)
        return [BlobLocation(p, _TYPES[t], o, n, r) for p, t, o, n, r in rows]

    def drop(self, blob_identity: bytes, pack_id: str) -> BlobLocation | None:
        """Forget the blob's copy in ``pack_id`` (found damaged); its next copy, if any,
        is the one found from now on. Returns the location dropped."""
        with self._lock:
            table = self._table
            dropped: Row | None = None
            for row in self._live_rows(table, blob_identity):
                found = table.row(row)
                if found[0] == pack_id:
                    self._dropped.add(row)
                    dropped = found
                    break
            if dropped is None:
                first = self._blobs.get(blob_identity)
                if first is not None and first[0] == pack_id:
                    dropped = self._blobs.pop(blob_identity)
                else:
                    extra = self._extra.get(blob_identity, [])
                    match = next((row for row in extra if row[0] == pack_id), None)
                    if match is None:
                        return None
                    extra.remove(match)
                    if not extra:
                        del self._extra[blob_identity]
                    dropped = match
        pack, blob_type, offset, length, raw_length = dropped
        return BlobLocation(pack, _TYPES[blob_type], offset, length, raw_length)

    def __contains__(self, blob_identity: bytes) -> bool:
        blobs, extra = self._blobs, self._extra  # before the table: see lookup
        if self._first_live(self._table, blob_identity) >= 0:
            return True
        return blob_identity in blobs or bool(extra.get(blob_identity))

    def __len__(self) -> int:
        """Blobs with at least one live copy."""
        with self._lock:
            table = self._table
            count = table.rows - sum(len(rows) - 1 for rows in table.groups.values())
            dead_ids = {table.row_id(row) for row in self._dropped | table.hidden}
            gone = {blob for blob in dead_ids if self._first_live(table, blob) < 0}
            count -= len(gone)  # ids whose every table row is dead
            count += len(self._blobs)
            count += sum(
                1
                for blob, rows in self._extra.items()
                if rows and blob not in self._blobs and self._first_live(table, blob) < 0
            )
            return count

    @property
    def pack_ids(self) -> set[str]:
        with self._lock:
            table = self._table
            return {table.pack_id(number) for number in range(len(table.pack_raw))} | self._packs

    def items(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """Each blob once, at the copy :meth:`lookup` gives."""
        for blob_identity, location, first in self._all_copies():
            if first:
                yield blob_identity, location

    def copies(self) -> Iterator[tuple[bytes, BlobLocation]]:
        """:meth:`items`, and every other copy of a blob stored more than once."""
        for blob_identity, location, _first in self._all_copies():
            yield blob_identity, location

    def _all_copies(self) -> Iterator[tuple[bytes, BlobLocation, bool]]:
        """Every live copy, with whether it is the one :meth:`lookup` gives. The table
        is read chunk by chunk (no list of every blob); the overlay is copied first."""
        with self._lock:
            table = self._table
            skip = self._dropped | table.hidden
            later = {
                row
                for rows in table.groups.values()
                for row in [r for r in rows if r not in skip][1:]
            }
            overlay = list(self._blobs.items())
            extra = [
                (blob, list(rows), blob not in self._blobs and self._first_live(table, blob) < 0)
                for blob, rows in self._extra.items()
            ]
        for row, blob_identity, (p, t, o, n, r) in table.all_rows():
            if row not in skip:
                yield blob_identity, BlobLocation(p, _TYPES[t], o, n, r), row not in later
        for blob_identity, (p, t, o, n, r) in overlay:
            yield blob_identity, BlobLocation(p, _TYPES[t], o, n, r), True
        for blob_identity, rows, first in extra:
            for p, t, o, n, r in rows:
                yield blob_identity, BlobLocation(p, _TYPES[t], o, n, r), first
                first = False


class SegmentLoader:
    """Loads index segments in bulk into an index and its fallback (packs a prune
    condemned): rows go straight into column chunks, no Python object per blob, and
    join the indexes' tables at :meth:`finish`."""

    def __init__(self, index: Index, fallback: Index, condemned: Iterable[str] = ()) -> None:
        self._index, self._fallback = index, fallback
        self._condemned = {bytes.fromhex(pack) for pack in condemned}
        self._main, self._other = _Pending(), _Pending()

    def add_segment(self, data: bytes) -> None:
        """One segment's plaintext (still zstd-compressed). A damaged one adds nothing
        (ValueError or zstandard.ZstdError)."""
        expected = _content_size(data)
        if expected:
            self._main.expected = self._main.rows + expected // ENTRY.size
        marks = self._main.mark(), self._other.mark()
        try:
            for records in _segment_blocks(data):
                if self._condemned:
                    self._main.add([r for r in records if r[0] not in self._condemned])
                    self._other.add([r for r in records if r[0] in self._condemned])
                else:
                    self._main.add(records)
        except BaseException:
            self._main.rollback(marks[0])
            self._other.rollback(marks[1])
            raise

    def finish(self) -> None:
        _give_back_freed_memory()  # before the lookup is built: its peak is the open's
        self._index._absorb(self._main)
        self._fallback._absorb(self._other)
        self._main, self._other = _Pending(), _Pending()
        _give_back_freed_memory()


def _give_back_freed_memory() -> None:
    """Loading frees many buffers of a few MiB (decompressed blocks, grown chunks) that
    glibc keeps in its heap once its mmap threshold has risen (it rises whenever such a
    buffer is freed): ~10 % of a 10-million-blob index's RSS stayed held for nothing.
    ``malloc_trim`` returns it (a few ms); elsewhere than glibc, nothing to do."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return  # not glibc: its allocator gives memory back its own way
    trim(0)


class IndexCache:
    """The index segments a long-lived process (a ``costor serve`` daemon and the jobs
    it forks, the benchmark's server process) loaded for one pool, kept between
    backups: the next :meth:`Pool.load_index` reads only the segments written since
    and copies the rest (the table is shared, the overlay copied). Reused only while
    every segment it holds is still listed and the condemned packs are the same; else
    loaded again whole."""

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


def _content_size(data: bytes) -> int:
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        return 0
    return max(0, size)


def _segment_blocks(data: bytes) -> Iterator[list[tuple[bytes, memoryview, int]]]:
    """A segment's pack records, a block of decompressed bytes at a time:
    ``(pack id, its entries' bytes, count)``."""
    reader = zstandard.ZstdDecompressor().stream_reader(data)
    carry = b""
    while True:
        chunk = reader.read(_READ_BLOCK)
        if not chunk:
            break
        buffer = carry + chunk if carry else chunk
        view = memoryview(buffer)
        records: list[tuple[bytes, memoryview, int]] = []
        position = 0
        while position + PACK_RECORD.size <= len(buffer):
            pack_raw, count = PACK_RECORD.unpack_from(buffer, position)
            end = position + PACK_RECORD.size + count * ENTRY.size
            if end - position > _MAX_RECORD:
                raise ValueError("index segment: a pack record is too large")
            if end > len(buffer):
                break
            records.append((pack_raw, view[position + PACK_RECORD.size : end], count))
            position = end
        yield records
        carry = bytes(view[position:])
        del records, view
    if carry:
        raise ValueError("index segment truncated")


def encode_segment(packs: dict[str, list[PackEntry]]) -> bytes:
    parts = []
    for pack_id, entries in packs.items():
        parts.append(PACK_RECORD.pack(bytes.fromhex(pack_id), len(entries)))
        parts.extend(
            ENTRY.pack(e.blob_id, e.type, e.offset, e.length, e.raw_length) for e in entries
        )
    return zstandard.ZstdCompressor(level=3).compress(b"".join(parts))


def split_segments(packs: dict[str, list[PackEntry]]) -> Iterator[dict[str, list[PackEntry]]]:
    """``packs`` in parts of at most :data:`SEGMENT_BLOBS` blobs (a pack is never split;
    one larger than that is a part alone)."""
    part: dict[str, list[PackEntry]] = {}
    blobs = 0
    for pack_id, entries in packs.items():
        if part and entries and blobs + len(entries) > SEGMENT_BLOBS:
            yield part
            part, blobs = {}, 0
        part[pack_id] = entries
        blobs += len(entries)
    if part or not packs:
        yield part


def decode_segment(data: bytes) -> dict[str, list[PackEntry]]:
    types = {int(t): t for t in BlobType}
    packs: dict[str, list[PackEntry]] = {}
    for records in _segment_blocks(data):
        for pack_raw, entries, _count in records:
            packs.setdefault(pack_raw.hex(), []).extend(
                PackEntry(b, types[t], o, n, r) for b, t, o, n, r in ENTRY.iter_unpack(entries)
            )
    return packs
