"""Backup and restore through the engine: fidelity, change detection, failures."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest
from support.fixtures import make_pool, open_pool, tree_digest

from costor.errors import DataCorruption, StorageFull
from costor.store.backends import LocalBackend
from costor.store.backup.walk import Archiver
from costor.store.checker import check
from costor.store.pack import pack_name
from costor.store.pool import Pool
from costor.store.restore.directory import Restorer

IS_ROOT = os.geteuid() == 0


def backup(pool: Pool, paths: list[Path], parent=None, **kwargs):  # type: ignore[no-untyped-def]
    archiver = Archiver(pool, client="c", paths=[str(p) for p in paths], **kwargs)
    return archiver.run(parent), archiver


def restore(pool: Pool, snapshot, target: Path, path: str = "/") -> None:  # type: ignore[no-untyped-def]
    Restorer(pool).restore(snapshot, str(target), path)


def _xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.costor", b"1")
        return True
    except OSError:
        return False


def build_rich_tree(root: Path) -> None:
    root.mkdir()
    (root / "plain.txt").write_text("text\n" * 1000)
    (root / "mode700").write_bytes(b"secret")
    os.chmod(root / "mode700", 0o700)
    os.chmod(root / "plain.txt", 0o4755)  # setuid bit survives
    (root / "sub" / "inner").mkdir(parents=True)
    (root / "sub" / "inner" / "f").write_bytes(os.urandom(10_000))
    os.chmod(root / "sub", 0o750)
    os.symlink("plain.txt", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.link(root / "plain.txt", root / "hardlink")
    os.mkfifo(root / "fifo")
    odd = os.fsencode(root) + b"/caf\xe9-\xff\xfe name \n with newline"
    with open(odd, "wb") as handle:
        handle.write(b"non-utf8 name")
    (root / "spaces and ünïcödé ☃").write_text("unicode")
    (root / "-dash").write_text("dash")
    sparse = root / "sparse.img"
    with open(sparse, "wb") as handle:
        handle.seek(64 * 1024 * 1024)
        handle.write(b"end")
        handle.seek(8 * 1024 * 1024)
        handle.write(b"middle")
    with open(root / "trailing-hole", "wb") as handle:
        handle.write(b"start")
        handle.truncate(10 * 1024 * 1024)  # ends in a hole: restore must ftruncate
    if _xattrs_supported(root / "plain.txt"):
        os.setxattr(root / "mode700", "user.comment", b"\x00binary\xff")
    if IS_ROOT:
        os.chown(root / "mode700", 1234, 4321)
        os.mknod(root / "null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    os.utime(root / "plain.txt", ns=(1_000_000_123, 1_234_567_890_123_456_789))


def test_metadata_fidelity(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_rich_tree(src)
    os.utime(src / "sub", ns=(5, 1_600_000_000_987_654_321))
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, [src])
    assert archiver.errors == []
    target = tmp_path / "out"
    # faithful: the setuid bit, the fifo and the device node are recreated (issue 19)
    Restorer(open_pool(tmp_path / "pool"), faithful=True).restore(snapshot, str(target))
    restored = target / str(src).lstrip("/")
    assert tree_digest(restored) == tree_digest(src)
    assert os.lstat(restored / "sub").st_mtime_ns == 1_600_000_000_987_654_321
    assert os.stat(restored / "plain.txt").st_mtime_ns == 1_234_567_890_123_456_789
    assert os.stat(restored / "plain.txt").st_ino == os.stat(restored / "hardlink").st_ino
    assert stat.S_ISFIFO(os.lstat(restored / "fifo").st_mode)
    assert os.readlink(restored / "dangling") == "/nonexistent/target"
    if _xattrs_supported(tmp_path / "out"):
        assert os.getxattr(restored / "mode700", "user.comment") == b"\x00binary\xff"
    if IS_ROOT:
        assert os.lstat(restored / "mode700").st_uid == 1234
        assert os.lstat(restored / "null").st_rdev == os.makedev(1, 3)
    # Sparse: the holes come back as holes (allocated blocks far below the size).
    assert os.stat(restored / "trailing-hole").st_size == 10 * 1024 * 1024
    st = os.stat(restored / "sparse.img")
    assert st.st_size == 64 * 1024 * 1024 + 3
    assert st.st_blocks * 512 < 4 * 1024 * 1024


def test_unchanged_files_are_not_read_again(tmp_path: Path, source: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    first, _ = backup(pool, [source])
    assert first.counters["files_new"] == 3
    again = open_pool(tmp_path / "pool")
    second, _ = backup(again, [source], parent=first)
    assert second.counters["files_unmodified"] == 3
    assert second.counters["bytes_read"] == 0
    # Unchanged directories dedup to the same trees. Only the source's own: the trees of
    # its ancestors (/tmp, …) hold their times, which other processes move (a file made
    # in /tmp by a parallel test adds the new /tmp tree, a few hundred bytes).
    before = again.find_node(bytes.fromhex(first.tree), str(source))
    after = again.find_node(bytes.fromhex(second.tree), str(source))
    assert before is not None and after is not None and after.subtree == before.subtree
    assert second.counters["bytes_added"] < 4096  # at most the ancestors' trees
    time.sleep(0.01)
    (source / "docs" / "readme.txt").write_text("changed\n")
    third, _ = backup(open_pool(tmp_path / "pool"), [source], parent=second)
    assert third.counters["files_changed"] == 1
    assert third.counters["files_unmodified"] == 2
    assert third.counters["bytes_read"] == len("changed\n")


def test_dedup_within_and_across_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(6 * 1024 * 1024)
    (src / "a").write_bytes(payload)
    (src / "b").write_bytes(payload)
    (src / "c").write_bytes(b"prefix" + payload)
    pool = make_pool(tmp_path / "pool", compression_level=None)
    snapshot, _ = backup(pool, [src])
    # ~6 MiB stored once; "c" shares all chunks after the first boundary.
    assert snapshot.counters["bytes_added"] < 9 * 1024 * 1024
    restore(open_pool(tmp_path / "pool"), snapshot, tmp_path / "out")
    assert (tmp_path / "out" / str(src).lstrip("/") / "c").read_bytes() == b"prefix" + payload


def test_excludes(tmp_path: Path, source: Path) -> None:
    (source / "skip.tmp").write_text("x")
    (source / "cache").mkdir()
    (source / "cache" / "big").write_text("x")
    pool = make_pool(tmp_path / "pool")
    snapshot, _ = backup(pool, [source], exclude=["*.tmp", str(source / "cache")])
    names = {p.decode() for p, _n in pool.walk(bytes.fromhex(snapshot.tree))}
    prefix = str(source).lstrip("/")
    assert f"{prefix}/docs/readme.txt" in names
    assert f"{prefix}/skip.tmp" not in names
    assert f"{prefix}/cache" not in names


def _unreadable(path: Path) -> None:
    os.chmod(path, 0)


@pytest.mark.skipif(IS_ROOT, reason="root reads anything; see the non-root variant below")
def test_unreadable_file_is_reported_and_backup_completes(tmp_path: Path, source: Path) -> None:
    _unreadable(source / "docs" / "readme.txt")
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, [source])
    assert snapshot.counters["files_failed"] == 1
    assert any("readme.txt" in e["path"] for e in archiver.errors)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to an unprivileged user")
def test_unreadable_file_as_unprivileged_user(tmp_path: Path) -> None:
    """As root, drop to 'nobody' in a child process so permissions really apply."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="costor-nobody-"))
    os.chmod(base, 0o777)
    src = base / "src"
    src.mkdir()
    (src / "ok").write_text("readable")
    (src / "locked").write_text("not for you")
    os.chmod(src / "locked", 0)
    os.chmod(src, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, back up, report through the pipe
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            pool = make_pool(base / "pool")
            snapshot, archiver = backup(pool, [src])
            os.write(
                write,
                f"{snapshot.counters['files_failed']} {snapshot.counters['files_new']} {len(archiver.errors)}".encode(),
            )
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    result = os.read(read, 100).decode()
    assert result == "1 2 1"  # one failed, both counted as new, one error reported


def test_disk_full_fails_cleanly_and_pool_stays_valid(tmp_path: Path, source: Path) -> None:
    """A real full filesystem: a 6 MiB tmpfs (root), else a real directory whose
    backend refuses writes past a quota with ENOSPC exactly as the kernel would."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    mounted = (
        IS_ROOT
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        == 0
    )
    try:
        pool = make_pool(mount / "pool", compression_level=None, pack_size=4 * 1024 * 1024)
        small, _ = backup(pool, [source / "docs" / "readme.txt"])
        big = tmp_path / "big"
        big.mkdir()
        (big / "random").write_bytes(os.urandom(12 * 1024 * 1024))
        backend = pool.backend
        if not mounted:
            pool.backend = _QuotaBackend(backend, limit=6 * 1024 * 1024)  # type: ignore[assignment]
        with pytest.raises(StorageFull):
            backup(open_pool(mount / "pool"), [big])
        report = check(
            Pool.open(LocalBackend(mount / "pool"), "correct horse battery staple"), read_data=True
        )
        assert report.ok, report.problems
        reopened = open_pool(mount / "pool")
        assert [s.id for s in reopened.list_snapshots()] == [small.id]
        restore(reopened, small, tmp_path / "out")
    finally:
        if mounted:
            # Lazy: open pack handles (cached per thread) may still pin the mount.
            subprocess.run(["umount", "-l", str(mount)], check=False)


class _QuotaBackend:
    def __init__(self, inner: LocalBackend, limit: int) -> None:
        self.inner, self.limit, self.location = inner, limit, inner.location

    def put(self, name: str, data: bytes) -> None:
        used = sum(i.size for i in self.inner.list(""))
        if used + len(data) > self.limit:
            raise StorageFull(name=name, reason=os.strerror(errno.ENOSPC))
        self.inner.put(name, data)

    def __getattr__(self, attr: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, attr)


def test_restore_of_damaged_data_fails_loudly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim").write_bytes(os.urandom(2 * 1024 * 1024))
    pool = make_pool(tmp_path / "pool", compression_level=None)
    snapshot, _ = backup(pool, [src])
    data_packs = [p for p, size in pool.list_packs().items() if size > 1024 * 1024]
    path = tmp_path / "pool" / pack_name(data_packs[0])
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    target = tmp_path / "out"
    with pytest.raises(DataCorruption) as raised:
        restore(open_pool(tmp_path / "pool"), snapshot, target)
    assert data_packs[0] in str(raised.value)
    victim = target / str(src).lstrip("/") / "victim"
    assert not victim.exists()  # never wrong bytes under the real name
    assert not list(victim.parent.glob("*.costor-restore"))


def test_failed_restore_over_an_existing_file_keeps_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim").write_bytes(os.urandom(2 * 1024 * 1024))
    pool = make_pool(tmp_path / "pool", compression_level=None)
    snapshot, _ = backup(pool, [src])
    target = tmp_path / "out"
    restore(open_pool(tmp_path / "pool"), snapshot, target)
    victim = target / str(src).lstrip("/") / "victim"
    victim.write_bytes(b"the user's newer copy")
    big = max(pool.list_packs().items(), key=lambda item: item[1])[0]
    path = tmp_path / "pool" / pack_name(big)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 3] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataCorruption):
        restore(open_pool(tmp_path / "pool"), snapshot, target)
    assert victim.read_bytes() == b"the user's newer copy"
    assert not list(victim.parent.glob("*.costor-restore"))


def test_restore_sub_path(tmp_path: Path, source: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    snapshot, _ = backup(pool, [source])
    restore(open_pool(tmp_path / "pool"), snapshot, tmp_path / "out", str(source / "docs"))
    assert (tmp_path / "out" / "docs" / "readme.txt").read_text().startswith("hello")
    restore(open_pool(tmp_path / "pool"), snapshot, tmp_path / "one", str(source / "empty"))
    assert (tmp_path / "one" / "empty").read_bytes() == b""


def test_selection_patterns() -> None:
    from costor.store.restore.directory import Selection

    txt = Selection(include=["*.txt"])
    assert txt.selected(b"/srv/a.txt") and txt.selected(b"/a.txt")
    assert not txt.selected(b"/srv/a.txt.bak")
    anchored = Selection(include=["/srv/www"])
    assert anchored.selected(b"/srv/www") and anchored.selected(b"/srv/www/x/y")
    assert not anchored.selected(b"/other/srv/www") and not anchored.selected(b"/srv/wwwx")
    deep = Selection(include=["/srv/**/cache/*.db"])
    assert deep.selected(b"/srv/cache/a.db") and deep.selected(b"/srv/a/b/cache/a.db")
    assert not deep.selected(b"/srv/a/b/cache/sub")
    # An excluded directory takes its content with it, whatever the includes say.
    both = Selection(include=["/srv"], exclude=["cache"])
    assert both.selected(b"/srv/www/index.html")
    assert not both.selected(b"/srv/www/cache") and not both.selected(b"/srv/www/cache/x")
    assert Selection().everything and not both.everything
    with pytest.raises(Exception, match="empty pattern"):
        Selection(exclude=["/"])


def test_a_link_where_a_directory_goes_is_never_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"from the snapshot")
    pool = make_pool(tmp_path / "pool")
    snapshot, _ = backup(pool, [src])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "out"
    placed = target / str(src).lstrip("/")
    placed.mkdir(parents=True)
    os.symlink(elsewhere, placed / "sub")  # where the snapshot has a directory

    kept = Restorer(open_pool(tmp_path / "pool"), overwrite="never").restore(snapshot, str(target))
    assert kept.files_not_overwritten == 1 and kept.files_new == 0
    assert (placed / "sub").is_symlink() and list(elsewhere.iterdir()) == []

    replaced = Restorer(open_pool(tmp_path / "pool")).restore(snapshot, str(target))
    assert replaced.files_new == 1
    assert not (placed / "sub").is_symlink()
    assert (placed / "sub" / "f").read_bytes() == b"from the snapshot"
    assert list(elsewhere.iterdir()) == []  # nothing was written through the link


def test_hard_links_when_the_first_name_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"linked content")
    os.link(src / "a", src / "b")
    pool = make_pool(tmp_path / "pool")
    snapshot, _ = backup(pool, [src])
    target = tmp_path / "out"
    placed = target / str(src).lstrip("/")
    placed.mkdir(parents=True)
    (placed / "a").write_bytes(b"the user's own a")
    result = Restorer(open_pool(tmp_path / "pool"), overwrite="never").restore(
        snapshot, str(target)
    )
    assert (result.files_not_overwritten, result.files_new) == (1, 1)
    assert (placed / "a").read_bytes() == b"the user's own a"
    assert (placed / "b").read_bytes() == b"linked content"  # not a link to the kept a
    # Restored again with the default: a is replaced and b becomes its link again.
    again = Restorer(open_pool(tmp_path / "pool")).restore(snapshot, str(target))
    assert again.files_overwritten == 2
    assert os.path.samestat(os.stat(placed / "a"), os.stat(placed / "b"))
    third = Restorer(open_pool(tmp_path / "pool"), dry_run=True, list_entries=True).restore(
        snapshot, str(target)
    )
    assert third.files_unchanged == 2 and third.files == 0
    assert [e["action"] for e in third.entries or []] == ["unchanged", "unchanged"]
