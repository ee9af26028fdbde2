"""Damage records and reading past a damaged copy (costor/store/damage.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fixtures import make_pool, open_pool

from costor.errors import DataCorruption
from costor.store.damage import keep_damage, new_copy, read_damage, write_damage
from costor.store.index import Index
from costor.store.pack import BlobType, PackEntry, pack_name


def _two_copies(tmp_path: Path) -> tuple[Path, bytes, bytes, list[str]]:
    """A pool holding one blob in two packs (two writers that did not see each other's
    pack), the first pack written first."""
    make_pool(tmp_path / "pool")
    data = os.urandom(50_000)
    packs: list[str] = []
    for _writer in range(2):
        pool = open_pool(tmp_path / "pool")
        pool.index = Index()  # as if the other writer's pack were not indexed yet
        blob = pool.blob_id(data)
        assert pool.reserve(blob)
        pool.store_blob(BlobType.DATA, blob, data)
        pool.flush()
        packs += sorted(set(pool.list_packs()) - set(packs))
    return tmp_path / "pool", blob, data, packs


def test_the_index_keeps_every_copy_and_drops_one() -> None:
    index = Index()
    blob = b"b" * 32
    index.add_pack("p1", [PackEntry(blob, BlobType.DATA, 0, 10, 8)])
    index.add_pack("p2", [PackEntry(blob, BlobType.DATA, 5, 10, 8)])
    index.add_pack("p2", [PackEntry(blob, BlobType.DATA, 5, 10, 8)])  # listed twice: one copy
    assert [loc.pack_id for loc in index.locations(blob)] == ["p1", "p2"]
    assert index.copy().locations(blob) == index.locations(blob)
    dropped = index.drop(blob, "p1")
    assert dropped is not None and dropped.pack_id == "p1"
    found = index.lookup(blob)
    assert found is not None and found.pack_id == "p2" and found.offset == 5
    assert index.drop(blob, "p1") is None
    index.drop(blob, "p2")
    assert blob not in index and index.locations(blob) == []


def test_a_read_goes_past_a_damaged_copy_and_records_it(tmp_path: Path) -> None:
    path, blob, data, packs = _two_copies(tmp_path)
    assert len(packs) == 2
    pool = open_pool(path)
    first = pool.index.lookup(blob)
    assert first is not None
    damaged = path / pack_name(first.pack_id)
    raw = bytearray(damaged.read_bytes())
    raw[first.offset + 20] ^= 0xFF
    damaged.write_bytes(bytes(raw))

    assert pool.read_blob(blob) == data
    assert pool.save_damage() == 1
    recorded = read_damage(pool)
    assert list(recorded) == [(blob, first.pack_id)]
    # A new process reads the sound copy first, and a backup of the same content
    # deduplicates against it (it is in the index).
    again = open_pool(path)
    location = again.index.lookup(blob)
    assert location is not None and location.pack_id != first.pack_id
    assert not again.reserve(blob)


def test_a_blob_whose_only_copy_is_damaged_is_stored_again(tmp_path: Path) -> None:
    make_pool(tmp_path / "pool")
    pool = open_pool(tmp_path / "pool")
    data = os.urandom(50_000)
    blob = pool.put_blob(BlobType.DATA, data)
    pool.flush()
    location = pool.index.lookup(blob)
    assert location is not None
    pack = tmp_path / "pool" / pack_name(location.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[location.offset + 20] ^= 0xFF
    pack.write_bytes(bytes(raw))

    reader = open_pool(tmp_path / "pool")
    with pytest.raises(DataCorruption):
        reader.read_blob(blob)
    reader.save_damage()
    writer = open_pool(tmp_path / "pool")
    assert writer.reserve(blob), "the damaged copy is not deduplicated against"
    with pytest.raises(DataCorruption, match="every copy of it is damaged"):
        writer.read_blob(blob)
    writer.store_blob(BlobType.DATA, blob, data)
    writer.flush()
    assert open_pool(tmp_path / "pool").read_blob(blob) == data


def test_records_merge_and_keep_drops_deleted_packs(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    a, b = b"a" * 32, b"b" * 32
    write_damage(pool, [new_copy(a, "p1", "x")])
    write_damage(pool, [new_copy(b, "p2", "y" * 1000), new_copy(a, "p1", "again")])
    merged = read_damage(pool)
    assert set(merged) == {(a, "p1"), (b, "p2")}
    assert len(merged[(b, "p2")].reason) <= 300
    assert keep_damage(pool, {"p2"}) == 1
    assert set(read_damage(pool)) == {(b, "p2")}
    assert len(list(pool.backend.list("damaged/"))) == 1
    assert keep_damage(pool, {"p2"}) == 0  # one record, nothing to drop: unchanged
