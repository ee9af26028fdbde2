"""The pool: keys, blobs, packs, index segments, orphan adoption and reindex."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.fixtures import PASSPHRASE, make_pool, open_pool

from costor.errors import (
    DataCorruption,
    LastKeySlot,
    PoolError,
    PoolExists,
    PoolMismatch,
    PoolNotFound,
    WrongPassphrase,
)
from costor.store import crypto
from costor.store.backends import LocalBackend
from costor.store.backends.memory import MemoryBackend
from costor.store.checker import check, reindex
from costor.store.pack import BlobType, pack_name, read_entries
from costor.store.pool import (
    IDENTITY_NAME,
    LOCAL_READ_WINDOW,
    Pool,
    ReadWindows,
    read_key_slots,
    remove_key_slot,
)


@pytest.mark.parametrize("encryption", ["aes-256-gcm", "chacha20-poly1305", "none"])
def test_blob_roundtrip_each_cipher(tmp_path: Path, encryption: str) -> None:
    pool = make_pool(tmp_path / "p", encryption=encryption)
    data = b"compressible " * 10_000
    blob = pool.put_blob(BlobType.DATA, data)
    noise = os.urandom(200_000)
    noise_id = pool.put_blob(BlobType.DATA, noise)
    pool.flush()
    reopened = open_pool(tmp_path / "p")
    assert reopened.read_blob(blob) == data
    assert reopened.read_blob(noise_id) == noise
    # zstd applied where it shrinks, skipped where it does not.
    assert reopened.locate(blob).length < len(data) // 10
    assert reopened.locate(noise_id).length >= len(noise)


def test_encrypted_pool_leaks_no_plaintext(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    pool.put_blob(BlobType.DATA, b"TOP-SECRET-MARKER" * 1000)
    pool.flush()
    for dirpath, _d, files in os.walk(tmp_path / "p"):
        for name in files:
            assert b"TOP-SECRET" not in Path(dirpath, name).read_bytes()


def test_blob_ids_are_keyed(tmp_path: Path) -> None:
    a = make_pool(tmp_path / "a")
    b = make_pool(tmp_path / "b")
    assert a.blob_id(b"same") != b.blob_id(b"same")


@pytest.mark.product_kdf  # both KDFs at the product's parameters (the suite's are cheap)
def test_wrong_passphrase_and_several_key_slots(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p", kdf="scrypt")
    pool.add_key_slot("second passphrase", "argon2id")
    backend = LocalBackend(tmp_path / "p")
    slots = [json.loads(data) for _name, data in read_key_slots(backend)]
    assert {slot["kdf"]: slot["params"] for slot in slots} == {
        "scrypt": {"n": 1 << 15, "r": 8, "p": 1},  # the documented parameters
        "argon2id": {"iterations": 3, "lanes": 4, "memory_cost_kib": 65536},
    }
    assert Pool.open(backend, PASSPHRASE).master == pool.master
    assert Pool.open(backend, "second passphrase").master == pool.master
    with pytest.raises(WrongPassphrase) as raised:
        Pool.open(backend, "nope")
    assert raised.value.exit_code == 1
    assert "Wrong passphrase" in str(raised.value)


def test_a_damaged_key_slot_does_not_lock_out_the_others(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    backend = LocalBackend(tmp_path / "p")
    backend.put("keys/" + "0" * 32, b"\x00 not a key slot")  # sorts first: tried first
    backend.put("keys/" + "1" * 32, b'{"kdf": "future-kdf", "params": {}, "salt": ""}')
    assert Pool.open(backend, PASSPHRASE).master == pool.master
    with pytest.raises(WrongPassphrase):
        Pool.open(backend, "nope")


def test_key_slot_labels_and_created(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    name = pool.add_key_slot("second", "scrypt", label="offsite safe")
    info = crypto.KeySlotInfo.parse(name, (tmp_path / "p" / name).read_bytes())
    assert (info.kdf, info.label, info.readable) == ("scrypt", "offsite safe", True)
    assert info.created is not None and info.id == name.removeprefix("keys/")
    with pytest.raises(PoolError):
        pool.add_key_slot("third", label="line\nbreak")
    # remove_key_slot deletes one object and never the last one.
    assert remove_key_slot(pool.backend, name) == 1
    [(last, _bytes)] = read_key_slots(pool.backend)
    with pytest.raises(LastKeySlot):
        remove_key_slot(pool.backend, last)
    assert Pool.open(pool.backend, PASSPHRASE).master == pool.master


def test_key_slot_is_bound_to_its_pool(tmp_path: Path) -> None:
    a = make_pool(tmp_path / "a")
    make_pool(tmp_path / "b")
    slot = next((tmp_path / "a" / "keys").iterdir())
    target = tmp_path / "b" / "keys" / "moved"
    target.write_bytes(slot.read_bytes())
    for other in (tmp_path / "b" / "keys").iterdir():
        if other != target:
            other.unlink()
    with pytest.raises(WrongPassphrase):
        Pool.open(LocalBackend(tmp_path / "b"), PASSPHRASE)
    assert a.uuid


def test_identity_file_is_plain_and_versioned(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    identity = json.loads((tmp_path / "p" / IDENTITY_NAME).read_text())
    assert (
        identity["version"] == 2
    )  # format version 2: parameters bound to the key (docs/format.md)
    assert identity["uuid"] == pool.uuid
    assert identity["chunker"]["algorithm"] == "fastcdc-2020"
    with pytest.raises(PoolExists):
        make_pool(tmp_path / "p")
    with pytest.raises(PoolNotFound):
        Pool.open(LocalBackend(tmp_path / "nothing"), PASSPHRASE)
    with pytest.raises(PoolMismatch):
        Pool.open(LocalBackend(tmp_path / "p"), PASSPHRASE, expected_uuid="another")


def test_packs_separate_types_and_are_named_by_hash(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    pool.put_blob(BlobType.DATA, b"d" * 1000)
    pool.put_blob(BlobType.TREE, b'{"nodes":[]}')
    pool.flush()
    packs = pool.list_packs()
    assert len(packs) == 2
    from costor.store.crypto import object_hash

    kinds = set()
    for pack_id in packs:
        data = (tmp_path / "p" / pack_name(pack_id)).read_bytes()
        assert object_hash(data) == pack_id
        entries = read_entries(pool.sealer, data)
        kinds.add(frozenset(e.type for e in entries))
    assert kinds == {frozenset({BlobType.DATA}), frozenset({BlobType.TREE})}


def test_pack_size_bounds_packs(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p", pack_size=4 * 1024 * 1024)
    for _ in range(12):
        pool.put_blob(BlobType.DATA, os.urandom(1024 * 1024))
    pool.flush()
    sizes = sorted(pool.list_packs().values())
    assert len(sizes) == 3
    assert all(size < 6 * 1024 * 1024 for size in sizes)


def test_orphan_packs_are_adopted(tmp_path: Path) -> None:
    """Packs written by a backup that has not listed them yet (still running, or died
    before its index segment: its lease says so) are reused."""
    pool = make_pool(tmp_path / "p")
    pool.lease("backup")  # held, never released: the writer is still at work
    blob = pool.put_blob(BlobType.DATA, os.urandom(1024 * 1024))
    pool._write_pack(pool._builders.pop(BlobType.DATA))  # pack stored, no segment yet
    assert not list(LocalBackend(tmp_path / "p").list("index/"))
    fresh = open_pool(tmp_path / "p")
    assert blob not in fresh.index
    assert fresh.adopt_orphan_packs() == 1
    assert blob in fresh.index
    assert not fresh.reserve(blob)
    fresh.flush()
    assert blob in open_pool(tmp_path / "p").index


def test_no_writer_lease_no_listing_of_packs(tmp_path: Path) -> None:
    """A backup lists the pool's packs only when a writer's lease says some may be
    unlisted; a pack left without one (no writer does that) is not looked for."""
    pool = make_pool(tmp_path / "p")
    pool.put_blob(BlobType.DATA, os.urandom(1024 * 1024))
    pool._write_pack(pool._builders.pop(BlobType.DATA))
    fresh = open_pool(tmp_path / "p")
    reader = fresh.lease("restore")  # a reader's lease leaves no pack
    other = open_pool(tmp_path / "p")
    assert other.adopt_orphan_packs() == 0
    assert len(other.index) == 0
    assert other.adopt_orphan_packs(record=False) == 1  # check, a missing blob: always
    reader.release()


def test_a_damaged_segments_packs_are_listed_again_by_the_next_backup(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    blob = pool.put_blob(BlobType.DATA, os.urandom(100_000))
    pool.flush()
    (segment,) = (tmp_path / "p" / "index").iterdir()
    segment.write_bytes(b"damaged" + segment.read_bytes()[7:])
    fresh = open_pool(tmp_path / "p")
    assert fresh.bad_segments and blob not in fresh.index
    assert fresh.adopt_orphan_packs() == 1  # no lease: the damaged segment says so
    assert blob in fresh.index


def test_a_failed_writer_lists_its_packs_when_it_drops_its_lease(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    with pytest.raises(RuntimeError), pool.lease("backup"):
        blob = pool.put_blob(BlobType.DATA, os.urandom(1024 * 1024))
        pool._write_pack(pool._builders.pop(BlobType.DATA))
        raise RuntimeError("the backup failed")
    assert not list(LocalBackend(tmp_path / "p").list("locks/"))
    assert blob in open_pool(tmp_path / "p").index


def test_a_killed_writers_packs_are_adopted_and_its_lease_removed(tmp_path: Path) -> None:
    make_pool(tmp_path / "p")
    script = (
        "import os, sys\n"
        "from costor.store.backends import LocalBackend\n"
        "from costor.store.pack import BlobType\n"
        "from costor.store.pool import Pool\n"
        "pool = Pool.open(LocalBackend(sys.argv[1]), sys.argv[2])\n"
        "pool.lease('backup')\n"
        "pool.put_blob(BlobType.DATA, os.urandom(100_000))\n"
        "pool._write_pack(pool._builders.pop(BlobType.DATA))\n"
        "os._exit(9)  # no release, no segment: killed\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p"), PASSPHRASE])
    assert done.returncode == 9
    assert len(list(LocalBackend(tmp_path / "p").list("locks/"))) == 1
    fresh = open_pool(tmp_path / "p")
    assert len(fresh.index) == 0
    assert fresh.adopt_orphan_packs() == 1
    fresh.flush()  # the adopted pack listed: the gone lease is removed
    assert not list(LocalBackend(tmp_path / "p").list("locks/"))
    assert len(open_pool(tmp_path / "p").index) == 1


def test_reindex_rebuilds_from_packs_alone(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    blobs = [pool.put_blob(BlobType.DATA, os.urandom(100_000)) for _ in range(5)]
    pool.flush()
    for segment in (tmp_path / "p" / "index").iterdir():
        segment.unlink()
    assert len(open_pool(tmp_path / "p").index) == 0
    report = reindex(Pool.open(LocalBackend(tmp_path / "p"), PASSPHRASE))
    assert report.blobs == 5
    rebuilt = open_pool(tmp_path / "p")
    assert all(rebuilt.read_blob(b) for b in blobs)


def test_corrupted_byte_is_detected_on_read(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    blob = pool.put_blob(BlobType.DATA, os.urandom(300_000))
    pool.flush()
    pack_id = pool.locate(blob).pack_id
    path = tmp_path / "p" / pack_name(pack_id)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorruption) as raised:
        open_pool(tmp_path / "p").read_blob(blob)
    assert pack_id in str(raised.value)
    assert raised.value.exit_code == 3
    report = check(Pool.open(LocalBackend(tmp_path / "p"), PASSPHRASE), read_data=True)
    assert not report.ok
    assert report.problems[0].object == pack_id


def test_memory_backend_pool(tmp_path: Path) -> None:
    backend = MemoryBackend()
    pool = Pool.init(backend, passphrase="x")
    blob = pool.put_blob(BlobType.DATA, b"in memory")
    pool.flush()
    again = Pool.open(backend, "x")
    again.load_index()
    assert again.read_blob(blob) == b"in memory"


def test_check_reports_a_missing_tree_pack(tmp_path: Path) -> None:
    from costor.store.backup.walk import Archiver

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    pool = make_pool(tmp_path / "p")
    Archiver(pool, client="c", paths=[str(src)]).run()
    tree_pack = next(
        pack
        for pack in pool.list_packs()
        if all(e.type == BlobType.TREE for e in pool.read_pack_entries(pack))
    )
    (tmp_path / "p" / pack_name(tree_pack)).unlink()
    report = check(Pool.open(LocalBackend(tmp_path / "p"), PASSPHRASE))
    kinds = {p.kind for p in report.problems}
    assert "missing_pack" in kinds and not report.ok


def test_blob_reads_share_pack_windows(tmp_path: Path) -> None:
    """On object storage many small blobs cost a few ranged reads (GETs), not one per
    blob; on a local disk each blob is one read of its own bytes (no window held)."""
    pool = make_pool(tmp_path / "p", compression_level=None)
    blobs = [pool.put_blob(BlobType.DATA, os.urandom(5000)) for _ in range(600)]
    pool.flush()
    remote = open_pool(tmp_path / "p")
    remote._windows = ReadWindows(remote.backend)  # what object storage gets
    assert all(len(remote.read_blob(blob)) == 5000 for blob in blobs)
    assert remote._windows.reads <= 2  # ~3 MiB of blobs: one or two 4 MiB windows
    local = open_pool(tmp_path / "p")
    assert local._windows.size == LOCAL_READ_WINDOW == 0
    assert all(len(local.read_blob(blob)) == 5000 for blob in blobs)
    assert local._windows.reads == len(blobs) and not local._windows._cache


def test_windowed_reads_fetch_each_byte_about_once(tmp_path: Path) -> None:
    """Blobs straddling a window's end extend it by the missing tail only: reading a
    pack's blobs in order downloads about the pack, not twice it."""
    import random

    from costor.store.backends.base import ForwardingBackend

    class Counting(ForwardingBackend):
        fetched = 0

        def get_range(self, name: str, offset: int, length: int) -> bytes:
            Counting.fetched += length
            return self.inner.get_range(name, offset, length)

    pool = make_pool(tmp_path / "p", compression_level=None, pack_size=32 * 1024 * 1024)
    rng = random.Random(3)
    blobs = [
        pool.put_blob(BlobType.DATA, rng.randbytes(rng.randint(1000, 900_000))) for _ in range(60)
    ]
    pool.flush()
    stored = sum(pool.list_packs().values())
    reader = Pool.open(Counting(LocalBackend(tmp_path / "p")), PASSPHRASE)
    reader._windows = ReadWindows(reader.backend)  # object storage's 4 MiB windows
    reader.load_index()
    for blob in blobs:
        reader.read_blob(blob)
    assert Counting.fetched <= stored * 1.1
