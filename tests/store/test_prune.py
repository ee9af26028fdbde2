"""Prune (two-phase GC) through the engine, on real local pools: what it reclaims, what
it never touches (packs a running backup needs), repacking, and a kill at every write."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.fixtures import PASSPHRASE, make_pool, open_pool, tree_digest

from costor.store.backends import LocalBackend
from costor.store.backends.base import ForwardingBackend
from costor.store.backup.walk import Archiver
from costor.store.checker import check, reindex
from costor.store.crypto import object_hash
from costor.store.gc.condemned import read_condemned
from costor.store.gc.leases import LeaseInfo, list_leases
from costor.store.gc.prune import PruneBusy, PruneOptions, PruneRefused, prune
from costor.store.index import IndexCache
from costor.store.pool import Pool
from costor.store.restore.directory import Restorer
from costor.store.snapshot import Snapshot
from costor.util.processes import host_id

NOW = PruneOptions(safety_window=0)


def backup(pool: Pool, paths: list[Path], client: str = "c") -> Snapshot:
    with pool.lease():
        pool.load_index()
        return Archiver(pool, client=client, paths=[str(p) for p in paths]).run(None)


def fresh(path: Path) -> Pool:
    return open_pool(path)


def tree(root: Path, seed: int, files: int = 6, size: int = 700_000) -> Path:
    root.mkdir(parents=True)
    rng = __import__("random").Random(seed)
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(rng.randbytes(size))
    return root


def restored(pool: Pool, snapshot: Snapshot, target: Path, source: Path) -> None:
    Restorer(pool).restore(snapshot, str(target), "/")
    inner = target / str(source).lstrip("/")
    assert tree_digest(inner) == tree_digest(source)


def clean(path: Path, *, read_data: bool = True) -> None:
    report = check(Pool.open(LocalBackend(path), PASSPHRASE), read_data=read_data)
    assert report.ok, report.to_json()


def pack_count(path: Path) -> int:
    return sum(1 for _ in (path / "packs").rglob("*") if _.is_file())


@pytest.fixture
def two_trees(tmp_path: Path) -> tuple[Path, Path, Path, Snapshot, Snapshot]:
    path = tmp_path / "pool"
    make_pool(path)
    a = tree(tmp_path / "a", 1)
    b = tree(tmp_path / "b", 2)
    pool = fresh(path)
    snap_a = backup(pool, [a])
    snap_b = backup(fresh(path), [b])
    return path, a, b, snap_a, snap_b


def test_nothing_to_prune_changes_nothing(two_trees, tmp_path: Path) -> None:
    path, _a, _b, _sa, _sb = two_trees
    before = sorted(str(p) for p in path.rglob("*") if "locks" not in p.parts)
    report = prune(fresh(path), NOW)
    assert report.packs_deleted == 0 and report.packs_condemned == 0
    assert report.bytes_reclaimed == 0 and report.blobs_unused == 0
    after = sorted(str(p) for p in path.rglob("*") if "locks" not in p.parts)
    assert [p for p in after if "/index/" not in p] == [p for p in before if "/index/" not in p]
    assert list(list_leases(fresh(path))) == []  # its own lease is gone
    clean(path)


def test_forgotten_data_is_reclaimed_and_the_rest_restores(two_trees, tmp_path: Path) -> None:
    path, _a, b, snap_a, snap_b = two_trees
    packs = pack_count(path)
    fresh(path).delete_snapshot(snap_a.id)
    dry = prune(fresh(path), PruneOptions(safety_window=0, dry_run=True))
    assert dry.packs_condemned > 0 and pack_count(path) == packs  # a dry run writes nothing
    assert not (path / "condemned").exists() or not any((path / "condemned").iterdir())
    report = prune(fresh(path), NOW)
    assert report.packs_deleted == dry.packs_condemned
    assert report.bytes_reclaimed > 6 * 700_000 * 0.9  # tree a was random data
    assert pack_count(path) == packs - report.packs_deleted
    restored(fresh(path), snap_b, tmp_path / "out", b)
    clean(path)
    again = prune(fresh(path), NOW)
    assert again.packs_deleted == 0 and again.packs_condemned == 0


def test_the_safety_window_delays_deletion(two_trees, tmp_path: Path) -> None:
    path, a, _b, snap_a, _sb = two_trees
    packs = pack_count(path)
    fresh(path).delete_snapshot(snap_a.id)
    first = prune(fresh(path), PruneOptions(safety_window=3600))
    assert first.packs_condemned > 0 and first.packs_deleted == 0 and first.bytes_reclaimed == 0
    assert first.packs_waiting == first.packs_condemned
    assert pack_count(path) == packs
    assert set(read_condemned(fresh(path))) and all(
        not c.provisional for c in read_condemned(fresh(path)).values()
    )
    # Condemned packs are not reused: backing up tree a again stores its data anew.
    again = backup(fresh(path), [a])
    assert again.counters["bytes_added"] > 6 * 700_000 * 0.9
    second = prune(fresh(path), PruneOptions(safety_window=3600))
    assert second.packs_deleted == 0  # still inside the window
    third = prune(fresh(path), NOW)
    assert third.packs_deleted == first.packs_condemned
    restored(fresh(path), again, tmp_path / "out", a)
    clean(path)


def test_a_planted_condemned_record_stops_nothing_and_condemns_nothing(
    two_trees, tmp_path: Path
) -> None:
    """Whoever may add objects without the key (an append token of the Backup API) can
    name a junk record by its hash, or copy a real record's bytes under another name:
    both are passed over (no backup, restore or prune stops), condemn nothing, and the
    next prune deletes them with its own records."""
    path, a, b, snap_a, snap_b = two_trees
    junk = os.urandom(300)
    planted = f"condemned/{object_hash(junk)}"
    LocalBackend(path).put(planted, junk)
    misnamed = "condemned/" + "ab" * 32
    LocalBackend(path).put(misnamed, b"not what the name says")
    assert read_condemned(fresh(path)) == {}
    snap_c = backup(fresh(path), [b])  # reads the records first
    restored(fresh(path), snap_a, tmp_path / "out", a)
    fresh(path).delete_snapshot(snap_a.id)
    report = prune(fresh(path), NOW)
    assert report.packs_deleted > 0
    assert not LocalBackend(path).exists(planted) and not LocalBackend(path).exists(misnamed)
    restored(fresh(path), snap_c, tmp_path / "out2", b)
    restored(fresh(path), snap_b, tmp_path / "out3", b)
    clean(path)


def test_a_backup_running_during_prune_loses_nothing(two_trees, tmp_path: Path) -> None:
    """The race prune exists to win: a backup that began before packs were condemned
    dedups against them and writes new packs while prune runs (with a zero window)."""
    path, a, _b, snap_a, _sb = two_trees
    fresh(path).delete_snapshot(snap_a.id)  # a's packs are now unreferenced
    extra = tmp_path / "a" / "new.bin"
    extra.write_bytes(os.urandom(2_500_000))  # new data: new packs while prune runs
    writer = fresh(path)
    paused, resume = threading.Event(), threading.Event()

    def pause(pack_id: str, size: int) -> None:
        if not paused.is_set():
            paused.set()
            assert resume.wait(60)

    writer.on_pack_written = pause
    result: dict[str, Snapshot] = {}

    def run() -> None:
        result["snapshot"] = backup(writer, [a])

    thread = threading.Thread(target=run)
    thread.start()
    assert paused.wait(60)  # a pack of the backup is stored, the snapshot is not
    during = prune(fresh(path), NOW)
    assert during.packs_deleted == 0  # everything unreferenced is the running backup's
    assert during.packs_condemned > 0 and during.waiting_for
    assert during.waiting_for[0]["kind"] == "backup"
    resume.set()
    thread.join(60)
    snapshot = result["snapshot"]
    after = prune(fresh(path), NOW)
    assert after.packs_resurrected > 0  # the finished snapshot needs them after all
    assert after.bytes_deleted < 10_000  # only the old snapshot's directory listings
    restored(fresh(path), snapshot, tmp_path / "out", a)
    clean(path)
    assert read_condemned(fresh(path)) == {}


def test_a_killed_backup_s_lease_goes_stale(two_trees, tmp_path: Path) -> None:
    path, _a, _b, snap_a, _sb = two_trees
    fresh(path).delete_snapshot(snap_a.id)
    dead = fresh(path).lease()
    dead._stop.set()  # the holder is gone: nothing refreshes the lease any more
    first = prune(fresh(path), NOW)
    assert first.packs_deleted == 0 and first.waiting_for
    time.sleep(0.2)
    second = prune(fresh(path), PruneOptions(safety_window=0, stale_after=0.1))
    assert second.packs_deleted == first.packs_condemned and not second.waiting_for
    clean(path)


def test_a_lease_whose_holder_was_killed_on_this_host_is_gone_at_once(
    two_trees, tmp_path: Path
) -> None:
    """A lease names its holder's host and process start: a holder killed -9 on this
    host blocks no prune, with no wait for the lease to go stale (issue 19, item 10)."""
    path, _a, _b, snap_a, _sb = two_trees
    fresh(path).delete_snapshot(snap_a.id)
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "from costor.store.backends import LocalBackend\n"
            "from costor.store.pool import Pool\n"
            "Pool.open(LocalBackend(sys.argv[1]), sys.argv[2]).lease()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
            str(path),
            PASSPHRASE,
        ],
        capture_output=True,
        timeout=120,
    )
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    [lease] = list_leases(fresh(path))
    assert lease.gone(time.time()) and not lease.stale(time.time())
    report = prune(fresh(path), NOW)
    assert report.packs_condemned and not report.waiting_for
    assert report.packs_deleted == report.packs_condemned
    clean(path)


def test_a_lease_of_another_host_or_a_live_process_is_not_gone() -> None:
    now = time.time()
    alive = LeaseInfo("a", "backup", "h", os.getpid(), now, now, host_id(), None)
    assert not alive.gone(now)
    elsewhere = LeaseInfo("b", "backup", "h", 2**22 + 7, now, now, "another|host|ns", 1)
    assert not elsewhere.gone(now)  # only its staleness can tell
    assert elsewhere.gone(now + 3600)
    old = LeaseInfo("c", "backup", "h", 2**22 + 7, now, now)  # written before hosts
    assert not old.gone(now)
    reused = LeaseInfo("d", "backup", "h", os.getpid(), now, now, host_id(), -1)
    assert reused.gone(now)  # this PID belongs to a process started at another time


def test_mostly_empty_packs_are_repacked(tmp_path: Path) -> None:
    path = tmp_path / "pool"
    make_pool(path, pack_size=8 * 1024 * 1024)
    src = tree(tmp_path / "src", 3, files=8, size=600_000)  # one pack of ~4.8 MB
    pool = fresh(path)
    first = backup(pool, [src])
    for i in range(1, 8):
        (src / f"f{i}.bin").unlink()
    kept = backup(fresh(path), [src])  # needs f0 only: the big pack is 1/8 used
    fresh(path).delete_snapshot(first.id)
    report = prune(fresh(path), NOW)
    assert report.packs_repacked == 1 and report.packs_written >= 1
    assert report.bytes_written < 1_000_000 and report.bytes_reclaimed > 3_500_000
    restored(fresh(path), kept, tmp_path / "out", src)
    clean(path)
    # Above the threshold nothing is repacked.
    untouched = prune(
        fresh(path), PruneOptions(safety_window=0, repack_threshold=0.99, max_unused=1.0)
    )
    assert untouched.packs_repacked == 0


def test_repack_work_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "pool"
    make_pool(path, pack_size=8 * 1024 * 1024)
    src = tree(tmp_path / "src", 3, files=8, size=600_000)
    first = backup(fresh(path), [src])
    for i in range(1, 8):
        (src / f"f{i}.bin").unlink()
    backup(fresh(path), [src])
    fresh(path).delete_snapshot(first.id)
    report = prune(fresh(path), PruneOptions(safety_window=0, max_repack_bytes=1_000_000))
    assert report.packs_repacked == 0 and report.bytes_written == 0
    clean(path)


def test_a_second_prune_is_refused(two_trees) -> None:
    path, *_ = two_trees
    with fresh(path).lease("prune"), pytest.raises(PruneBusy, match="Another prune holds pool"):
        prune(fresh(path), NOW)


def test_a_damaged_pool_is_not_pruned(two_trees) -> None:
    path, _a, _b, snap_a, snap_b = two_trees
    fresh(path).delete_snapshot(snap_a.id)
    before = pack_count(path)
    # The pack holding b's directory listing is gone: prune cannot know what b needs.
    pack_id = fresh(path).locate(bytes.fromhex(snap_b.tree)).pack_id
    (path / "packs" / pack_id[:2] / pack_id[2:4] / pack_id).unlink()
    with pytest.raises(PruneRefused, match="changed nothing"):
        prune(fresh(path), NOW)
    assert pack_count(path) == before - 1


class Killed(Exception):
    pass


class KillAfter(ForwardingBackend):
    """Raises ``Killed`` at the n-th write (put or delete): prune dies there."""

    def __init__(self, inner: LocalBackend, n: int) -> None:
        super().__init__(inner)
        self.n = n
        self.writes = 0

    def _count(self) -> None:
        self.writes += 1
        if self.writes == self.n:
            raise Killed(self.writes)

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        if not name.startswith("locks/"):
            self._count()
        super().put(name, data)

    def delete(self, name: str) -> None:
        if not name.startswith("locks/"):
            self._count()
        super().delete(name)


def test_prune_killed_at_every_write_leaves_a_consistent_pool(tmp_path: Path) -> None:
    base = tmp_path / "base"
    make_pool(base, pack_size=8 * 1024 * 1024)
    src = tree(tmp_path / "src", 4, files=8, size=600_000)
    first = backup(fresh(base), [src])
    gone = tree(tmp_path / "gone", 5, files=3)
    forgotten = backup(fresh(base), [gone])
    for i in range(1, 8):
        (src / f"f{i}.bin").unlink()
    kept = backup(fresh(base), [src])
    fresh(base).delete_snapshot(first.id)
    fresh(base).delete_snapshot(forgotten.id)
    # How many writes a complete prune makes (repack, records, index, deletions).
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    counting = KillAfter(LocalBackend(probe), 10**9)
    prune(Pool.open(counting, PASSPHRASE), NOW)
    assert counting.writes >= 6
    for n in range(1, counting.writes + 1):
        path = tmp_path / f"kill{n}"
        shutil.copytree(base, path)
        pool = Pool.open(KillAfter(LocalBackend(path), n), PASSPHRASE)
        with pytest.raises(Killed):
            prune(pool, NOW)
        clean(path, read_data=False)  # nothing the snapshots need went missing
        restored(fresh(path), kept, tmp_path / f"out{n}", src)
        # A later prune finishes the work (stale lease of the killed one aside).
        for _ in range(2):
            prune(fresh(path), PruneOptions(safety_window=0, stale_after=0))
        assert pack_count(path) == pack_count(probe), n
        clean(path)


def test_repacking_goes_on_while_more_than_max_unused_is_left(tmp_path: Path) -> None:
    path = tmp_path / "pool"
    make_pool(path, pack_size=8 * 1024 * 1024)
    src = tree(tmp_path / "src", 6, files=8, size=600_000)  # one pack
    first = backup(fresh(path), [src])
    (src / "f7.bin").unlink()  # 1/8 of the pack: below the 50 % per-pack threshold
    backup(fresh(path), [src])
    fresh(path).delete_snapshot(first.id)
    lenient = prune(fresh(path), PruneOptions(safety_window=0, dry_run=True, max_unused=0.5))
    assert lenient.packs_repacked == 0
    strict = prune(fresh(path), PruneOptions(safety_window=0, max_unused=0.05))
    assert strict.packs_repacked == 1 and strict.bytes_reclaimed > 500_000
    clean(path)


def cached_load(path: Path, cache: IndexCache) -> Pool:
    pool = Pool.open(LocalBackend(path), PASSPHRASE)
    pool.load_index(cache)
    return pool


def same_index(a: Pool, b: Pool) -> None:
    assert dict(a.index.items()) == dict(b.index.items())
    assert dict(a.fallback.items()) == dict(b.fallback.items())
    assert a.segments == b.segments and set(a.condemned) == set(b.condemned)


def test_a_kept_index_reads_only_new_segments_and_follows_prune(two_trees, tmp_path: Path) -> None:
    """IndexCache (a daemon's jobs): the same index as a whole load, at every step."""
    path, _a, _b, snap_a, _snap_b = two_trees
    cache = IndexCache()
    first = cached_load(path, cache)
    same_index(first, fresh(path))
    c = tree(tmp_path / "c", 3)
    snapshot = backup(fresh(path), [c])
    opened: list[str] = []
    real = Pool._open_segment

    def counting(self: Pool, name: str) -> bytes:
        opened.append(name)
        return real(self, name)

    Pool._open_segment = counting  # type: ignore[method-assign]
    try:
        second = cached_load(path, cache)
    finally:
        Pool._open_segment = real  # type: ignore[method-assign]
    assert len(opened) == 1  # the one segment the backup of c wrote
    same_index(second, fresh(path))
    # A prune condemns packs, then deletes them: each time, the kept index is made again.
    fresh(path).delete_snapshot(snap_a.id)
    prune(fresh(path), PruneOptions(safety_window=3600))
    assert read_condemned(fresh(path))
    same_index(cached_load(path, cache), fresh(path))
    prune(fresh(path), NOW)
    same_index(cached_load(path, cache), fresh(path))
    # A reindex replaces every segment: the kept ones are gone, it loads again whole.
    reindex(Pool.open(LocalBackend(path), PASSPHRASE))
    after = cached_load(path, cache)
    same_index(after, fresh(path))
    restored(after, snapshot, tmp_path / "out", c)
