"""The compact blob index (costor/store/index.py) against a plain model of what it must
answer: every copy of every blob in the order added, the first found first, dropped
copies gone. Segments are real (encoded, zstd), loaded through the same loader a pool
uses; ids are crafted to share leading bytes so buckets and duplicate groups are full."""

from __future__ import annotations

import random
import threading

import pytest
import zstandard

from costor.store import index as index_module
from costor.store.index import (
    PACK_RECORD,
    SEGMENT_BLOBS,
    BlobLocation,
    Index,
    SegmentLoader,
    decode_segment,
    encode_segment,
    split_segments,
)
from costor.store.pack import ENTRY, BlobType, PackEntry

Record = tuple[bytes, int, int, int, int]


class Model:
    """What the index answers, the obvious way."""

    def __init__(self) -> None:
        self.copies: dict[bytes, list[tuple[str, int, int, int, int]]] = {}
        self.packs: set[str] = set()
        self.ends: dict[str, int] = {}

    def add(self, pack: str, records: list[Record]) -> None:
        for blob, kind, offset, length, raw in records:
            rows = self.copies.setdefault(blob, [])
            if all(row[0] != pack for row in rows):
                rows.append((pack, kind, offset, length, raw))
            self.ends[pack] = max(self.ends.get(pack, 0), offset + length)
        self.ends.setdefault(pack, 0)
        self.packs.add(pack)

    def drop(self, blob: bytes, pack: str) -> BlobLocation | None:
        rows = self.copies.get(blob, [])
        for row in rows:
            if row[0] == pack:
                rows.remove(row)
                return location(row)
        return None

    def live(self) -> dict[bytes, list[tuple[str, int, int, int, int]]]:
        return {blob: rows for blob, rows in self.copies.items() if rows}


def location(row: tuple[str, int, int, int, int]) -> BlobLocation:
    pack, kind, offset, length, raw = row
    return BlobLocation(pack, BlobType(kind), offset, length, raw)


def agree(index: Index, model: Model, probes: list[bytes]) -> None:
    live = model.live()
    assert len(index) == len(live)
    for blob in probes:
        rows = live.get(blob, [])
        assert (blob in index) == bool(rows)
        assert index.lookup(blob) == (location(rows[0]) if rows else None)
        assert index.locations(blob) == [location(row) for row in rows]
    assert dict(index.items()) == {blob: location(rows[0]) for blob, rows in live.items()}
    assert sorted(index.copies(), key=repr) == sorted(
        ((blob, location(row)) for blob, rows in live.items() for row in rows), key=repr
    )
    assert index.pack_ids == model.packs
    for pack, end in model.ends.items():
        assert index.data_end(pack) == end
    assert index.data_end("ff" * 32) == 0 or "ff" * 32 in model.packs


def segment(packs: dict[str, list[Record]]) -> bytes:
    return encode_segment(
        {
            pack: [PackEntry(b, BlobType(t), o, n, r) for b, t, o, n, r in records]
            for pack, records in packs.items()
        }
    )


def make_ids(rng: random.Random, count: int) -> list[bytes]:
    """Ids whose first 4 bytes repeat often (one prefix for many ids)."""
    prefixes = [rng.randbytes(4) for _ in range(max(1, count // 6))]
    return [rng.choice(prefixes) + rng.randbytes(28) for _ in range(count)]


def make_pack(rng: random.Random, ids: list[bytes], size: int) -> tuple[str, list[Record]]:
    offset, records = 0, []
    for blob in rng.sample(ids, size):
        length = rng.randint(1, 5000)
        records.append((blob, rng.randint(0, 1), offset, length, length + rng.randint(0, 99)))
        offset += length
    return rng.randbytes(32).hex(), records


@pytest.mark.parametrize("seed", range(6))
def test_the_index_answers_like_the_model(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "_MERGE_MIN", 40)  # merge the overlay often
    rng = random.Random(seed)
    ids = make_ids(rng, 400)
    index, fallback, model = Index(), Index(), Model()
    packs: list[tuple[str, list[Record]]] = []

    # Bulk load: three segments, a pack listed twice, a pack listed in two segments.
    loader = SegmentLoader(index, fallback)
    for _ in range(3):
        part: dict[str, list[Record]] = {}
        for _ in range(rng.randint(1, 6)):
            pack, records = make_pack(rng, ids, rng.randint(0, 30))
            part[pack] = records
            packs.append((pack, records))
        if len(packs) > 2:
            again, records = rng.choice(packs)
            part[again] = records
        loader.add_segment(segment(part))
        for pack, records in part.items():
            model.add(pack, records)
    loader.finish()
    agree(index, model, ids)
    assert len(fallback) == 0

    copies = [index.copy()]
    for step in range(60):
        action = rng.random()
        if action < 0.45:
            if packs and rng.random() < 0.2:
                pack, records = rng.choice(packs)  # a pack adopted again
            else:
                pack, records = make_pack(rng, ids, rng.randint(0, 25))
                packs.append((pack, records))
            index.add_records(pack, records)
            model.add(pack, records)
        elif action < 0.85:
            blob = rng.choice(ids)
            rows = model.live().get(blob)
            pack = rng.choice(rows)[0] if rows and rng.random() < 0.9 else rng.choice(packs)[0]
            assert index.drop(blob, pack) == model.drop(blob, pack)
        else:
            loader = SegmentLoader(index, Index())  # more segments (a cache's refresh)
            pack, records = make_pack(rng, ids, rng.randint(1, 25))
            packs.append((pack, records))
            loader.add_segment(segment({pack: records}))
            loader.finish()
            model.add(pack, records)
        if step % 10 == 9:
            agree(index, model, rng.sample(ids, 60) + [rng.randbytes(32)])
    agree(index, model, ids)

    # A copy taken before all that still answers as it did (shared chunks untouched).
    first = copies[0]
    assert len(first) <= len(ids)
    for blob, found in first.items():
        assert first.lookup(blob) == found


def test_condemned_packs_go_to_the_fallback() -> None:
    rng = random.Random(7)
    ids = make_ids(rng, 50)
    kept, condemned = make_pack(rng, ids, 20), make_pack(rng, ids, 20)
    index, fallback = Index(), Index()
    loader = SegmentLoader(index, fallback, {condemned[0]})
    loader.add_segment(segment(dict([kept, condemned])))
    loader.finish()
    assert index.pack_ids == {kept[0]}
    assert fallback.pack_ids == {condemned[0]}
    assert {blob for blob, _ in fallback.items()} == {r[0] for r in condemned[1]}


def test_a_damaged_segment_adds_nothing() -> None:
    rng = random.Random(8)
    ids = make_ids(rng, 50)
    good, bad = make_pack(rng, ids, 10), make_pack(rng, ids, 10)
    raw = b"".join(
        [
            PACK_RECORD.pack(bytes.fromhex(bad[0]), 10),
            b"".join(ENTRY.pack(*record) for record in bad[1]),
            PACK_RECORD.pack(b"y" * 32, 99),
        ]
    )
    index = Index()
    loader = SegmentLoader(index, Index())
    loader.add_segment(segment(dict([good])))
    with pytest.raises(ValueError, match="truncated"):
        loader.add_segment(zstandard.ZstdCompressor().compress(raw))
    with pytest.raises(zstandard.ZstdError):
        loader.add_segment(b"not zstd at all")
    blob, _kind, offset, length, raw_length = bad[1][0]
    unknown = PACK_RECORD.pack(bytes.fromhex(bad[0]), 1) + ENTRY.pack(blob, 9, offset, length, 1)
    with pytest.raises(ValueError, match="unknown type"):
        loader.add_segment(zstandard.ZstdCompressor().compress(unknown))
    loader.finish()
    assert index.pack_ids == {good[0]}
    assert len(index) == len({r[0] for r in good[1]})


def test_segments_are_split_and_read_back() -> None:
    rng = random.Random(9)
    entries = {
        rng.randbytes(32).hex(): [
            PackEntry(rng.randbytes(32), BlobType.DATA, i, 1, 1) for i in range(count)
        ]
        for count in (SEGMENT_BLOBS // 2, SEGMENT_BLOBS // 2, 3, SEGMENT_BLOBS + 1, 0)
    }
    parts = list(split_segments(entries))
    assert [sum(map(len, part.values())) for part in parts] == [
        SEGMENT_BLOBS,
        3,
        SEGMENT_BLOBS + 1,
    ]
    assert {k: v for part in parts for k, v in part.items()} == entries
    small = dict(list(entries.items())[2:3])
    assert decode_segment(encode_segment(small)) == small
    assert list(split_segments({})) == [{}]


def test_a_large_index_spans_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows past one chunk (chunks made small here) and lookups through them, ids
    sharing leading bytes across chunks included."""
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 64)
    monkeypatch.setattr(index_module, "_SORT_ROWS", 16)  # several sorts a chunk
    rng = random.Random(10)
    ids = make_ids(rng, 1000)
    index, model = Index(), Model()
    loader = SegmentLoader(index, Index())
    packs = {}
    for start in range(0, 1000, 100):
        pack, records = make_pack(rng, ids[start : start + 100], 100)
        packs[pack] = records
        model.add(pack, records)
    loader.add_segment(segment(packs))
    again = dict([make_pack(rng, ids, 300), make_pack(rng, ids, 300), next(iter(packs.items()))])
    for pack, records in again.items():
        model.add(pack, records)
    loader.add_segment(segment(again))  # second copies, and a pack listed twice
    loader.finish()
    agree(index, model, ids + [rng.randbytes(32)])
    assert sum(len(rows) for rows in model.live().values()) > len(ids) + 400


def test_readers_always_find_what_was_added_while_the_overlay_merges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lookups from other threads while packs are added and the overlay is merged into
    the table again and again: a blob added is found from then on, never missed in the
    moment a merge moves it (lookup reads the overlay before the table)."""
    monkeypatch.setattr(index_module, "_MERGE_MIN", 30)
    rng = random.Random(11)
    index = Index()
    published: list[bytes] = []
    misses: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        local = random.Random()
        while not stop.is_set():
            for blob in local.sample(published, min(len(published), 50)):
                if index.lookup(blob) is None or blob not in index:
                    misses.append(blob)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(400):
            pack, records = make_pack(rng, [rng.randbytes(32) for _ in range(10)], 10)
            index.add_records(pack, records)
            published.extend(record[0] for record in records)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not misses
    assert len(index) == len(published) == 4000
