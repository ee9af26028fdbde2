"""copy_pool(verify_existing=True) against faulty destinations (tests/support/faults.py)."""

from __future__ import annotations

import os
from pathlib import Path

from support.faults import FaultyBackend, content_addressed, first_put_of_each
from support.fixtures import make_pool

from costor.store.backends import LocalBackend
from costor.store.copy import copy_pool
from costor.store.pack import BlobType


def _pool_with_data(path: Path) -> LocalBackend:
    pool = make_pool(path)
    for _ in range(3):
        pool.put_blob(BlobType.DATA, os.urandom(50_000))
    pool.flush()
    return LocalBackend(path)


def _damage(root: Path, name: str) -> None:
    data = bytearray((root / name).read_bytes())
    data[len(data) // 2] ^= 1
    (root / name).write_bytes(bytes(data))


def test_a_backend_that_keeps_the_old_object_is_healed_by_delete_and_put(
    tmp_path: Path,
) -> None:
    source = _pool_with_data(tmp_path / "a")
    copy_pool(source, LocalBackend(tmp_path / "b"))
    [pack] = [info.name for info in source.list("packs/")]
    _damage(tmp_path / "b", pack)
    # The first put of each name "succeeds" and stores nothing: the damaged bytes stay,
    # as on a backend that keeps an existing object.
    faulty = FaultyBackend(
        LocalBackend(tmp_path / "b"), lose_puts=first_put_of_each(content_addressed)
    )
    report = copy_pool(source, faulty, verify_existing=True)
    assert faulty.lost_puts == 1
    assert report.replaced_objects == [pack] and report.replaced == 1
    assert (tmp_path / "b" / pack).read_bytes() == source.get(pack)
    assert copy_pool(source, LocalBackend(tmp_path / "b"), verify_existing=True).replaced == 0


def test_a_read_corrupted_in_transit_is_not_damage(tmp_path: Path) -> None:
    source = _pool_with_data(tmp_path / "a")
    copy_pool(source, LocalBackend(tmp_path / "b"))
    faulty = FaultyBackend(LocalBackend(tmp_path / "b"), corrupt_reads=content_addressed)
    report = copy_pool(source, faulty, verify_existing=True)
    hash_named = [info.name for info in source.list("") if content_addressed(info.name)]
    assert faulty.corrupted_reads == len(hash_named) == 2
    assert report.replaced == 0
    assert report.verified == len(list(source.list(""))) - 1  # all but the identity


def test_key_slots_the_source_no_longer_has_are_reported(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "a")
    extra = pool.add_key_slot("leaked passphrase")
    copy_pool(pool.backend, LocalBackend(tmp_path / "b"))
    pool.backend.delete(extra)  # rotated away in the source
    report = copy_pool(pool.backend, LocalBackend(tmp_path / "b"))
    assert report.extra_key_slots == [extra]
    assert report.to_json()["extra_key_slots"] == [extra]
