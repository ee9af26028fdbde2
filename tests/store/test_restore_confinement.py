"""A restore stays inside its target whatever a snapshot holds (issue 19).

The snapshots here are crafted through the store API, as a hostile host's helper (or an
old version that did not check names where they enter) could have stored them: names
``..``, ``a/b``, ``.``, empty, with NUL, repeated in one directory, a symbolic link
then a directory of its name, setuid files, device nodes, fifos, system xattrs. Each is
restored into a target beside a sentinel tree, and nothing outside the target may
change: the sentinel's full listing (modes, owners, times, content) and every other
entry under the test's directory are compared before and after.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from support.fixtures import make_pool, open_pool

from costor.errors import RestoreRefused
from costor.store.pack import BlobType
from costor.store.pool import Pool
from costor.store.restore.archive import plan_archive, write_archive
from costor.store.restore.directory import Restorer
from costor.store.snapshot import Snapshot
from costor.store.tree import CHARDEV, DIR, FIFO, FILE, SYMLINK, Node

IS_ROOT = os.geteuid() == 0
MTIME = 1_500_000_000_123_456_789
EVIL = b"owned by the host\n"
GOOD = b"good content\n"


# --- building hostile snapshots ---------------------------------------------------------


def file_node(pool: Pool, name: bytes, data: bytes = EVIL, mode: int = 0o644, **kw: Any) -> Node:
    content = [pool.put_blob(BlobType.DATA, data)] if data else []
    return Node(
        name=name,
        type=FILE,
        mode=stat.S_IFREG | mode,
        size=len(data),
        content=content,
        mtime_ns=MTIME,
        **kw,
    )


def dir_node(pool: Pool, name: bytes, children: list[Node], mode: int = 0o755) -> Node:
    return Node(
        name=name,
        type=DIR,
        mode=stat.S_IFDIR | mode,
        subtree=pool.save_tree(children),
        mtime_ns=MTIME,
    )


def good_nodes(pool: Pool) -> list[Node]:
    """What every hostile snapshot also holds, and what must come back."""
    inner = dir_node(pool, b"dir", [file_node(pool, b"file", GOOD, 0o600)], 0o750)
    return [file_node(pool, b"good.txt", GOOD), dir_node(pool, b"good", [inner])]


def assert_good_restored(root: Path) -> None:
    assert (root / "good.txt").read_bytes() == GOOD
    assert (root / "good" / "dir" / "file").read_bytes() == GOOD
    assert stat.S_IMODE(os.lstat(root / "good" / "dir").st_mode) == 0o750
    assert os.lstat(root / "good" / "dir" / "file").st_mtime_ns == MTIME


@dataclass
class Arena:
    """tmp_path/arena/{sentinel,target}, the pool in tmp_path/pool."""

    tmp: Path
    sentinel: Path
    target: Path
    pool_dir: Path

    def snapshot(self, build: Callable[[Pool], list[Node]]) -> tuple[Pool, Snapshot]:
        pool = make_pool(self.pool_dir)
        tree = pool.save_tree([*good_nodes(pool), *build(pool)])
        pool.flush()
        snapshot = Snapshot(
            client="hostile", time="2026-12-07T08:00:00.000000Z", paths=["/"], tree=tree.hex()
        )
        pool.save_snapshot(snapshot)
        return open_pool(self.pool_dir), snapshot

    def listing(self) -> dict[str, tuple[Any, ...]]:
        """Every entry under tmp_path but the target's content: type, mode, owner,
        times, size, content digest or link target."""
        seen: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.tmp):
            if Path(dirpath) == self.target:
                dirnames[:] = []
                continue
            for name in [*dirnames, *filenames, "."]:
                full = os.path.join(dirpath, name)
                if full == str(self.target):
                    continue  # its mtime changes as entries are made in it
                st = os.lstat(full)
                extra: Any = None
                if stat.S_ISLNK(st.st_mode):
                    extra = os.readlink(full)
                elif stat.S_ISREG(st.st_mode):
                    extra = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                key = os.path.normpath(os.path.relpath(full, self.tmp))
                seen[key] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, extra)
        return seen


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    sentinel = tmp_path / "arena" / "sentinel"
    (sentinel / "sub" / "inner").mkdir(parents=True)
    (sentinel / "file").write_bytes(b"sentinel\n")
    (sentinel / "sub" / "inner" / "deep").write_bytes(b"deep\n")
    os.chmod(sentinel / "file", 0o640)
    os.chmod(sentinel / "sub", 0o750)
    os.symlink("file", sentinel / "link")
    for path in (sentinel / "file", sentinel / "sub" / "inner" / "deep", sentinel / "sub"):
        os.utime(path, ns=(1_000_000_000, 1_111_111_111_000_000_000))
    target = tmp_path / "arena" / "target"
    target.mkdir()
    return Arena(tmp_path, sentinel, target, tmp_path / "pool")


def restore_confined(
    arena: Arena, build: Callable[[Pool], list[Node]], *, refused: int, **kwargs: Any
) -> Any:
    """Restore the crafted snapshot into the target; nothing outside it may change.
    Returns the result, or the RestoreRefused raised when ``refused`` entries are."""
    pool, snapshot = arena.snapshot(build)
    before = arena.listing()
    restorer = Restorer(pool, list_entries=True, **kwargs)
    if refused:
        with pytest.raises(RestoreRefused) as raised:
            restorer.restore(snapshot, str(arena.target))
        assert len(raised.value.fields["refused"]) == refused
        assert "Traceback" not in str(raised.value)
        outcome: Any = raised.value
    else:
        outcome = restorer.restore(snapshot, str(arena.target))
    assert arena.listing() == before
    assert_good_restored(arena.target)
    actions = [entry["action"] for entry in restorer.result.entries or []]
    assert actions.count("refused") == refused
    return outcome


# --- names --------------------------------------------------------------------------------


def test_dot_dot_names_stay_inside(arena: Arena) -> None:
    def build(pool: Pool) -> list[Node]:
        # ../../owned (setuid, world-writable), and ../ as a file name and a directory.
        deeper = dir_node(pool, b"..", [file_node(pool, b"owned", mode=0o4777, uid=0)], 0o777)
        return [
            dir_node(pool, b"..", [deeper, file_node(pool, b"sentinel", mode=0o777)], 0o777),
            dir_node(pool, b"nested", [file_node(pool, b"..", mode=0o777)]),
        ]

    raised = restore_confined(arena, build, refused=2)
    assert not (arena.tmp / "owned").exists()
    assert "'..'" in str(raised)
    assert sorted(os.listdir(arena.target)) == ["good", "good.txt", "nested"]
    assert os.listdir(arena.target / "nested") == []


def test_names_with_slash_nul_empty_and_dot_are_refused(arena: Arena) -> None:
    def build(pool: Pool) -> list[Node]:
        return [
            file_node(pool, b"a/b"),
            file_node(pool, b"../../escaped"),
            file_node(pool, os.fsencode(arena.tmp / "absolute")),
            file_node(pool, b"x\x00y"),
            file_node(pool, b""),
            file_node(pool, b"."),
            dir_node(pool, b"a", [file_node(pool, b"b", GOOD)]),
        ]

    raised = restore_confined(arena, build, refused=6)
    assert not (arena.tmp / "escaped").exists() and not (arena.tmp / "absolute").exists()
    assert (arena.target / "a" / "b").read_bytes() == GOOD  # the real a/b, not "a/b"
    # A file named "." leaves no temporary file behind (issue 19, item 11).
    assert sorted(os.listdir(arena.target)) == ["a", "good", "good.txt"]
    reasons = " ".join(entry["reason"] for entry in raised.fields["refused"])
    assert "'/'" in reasons and "NUL" in reasons and "not a file name" in reasons


def test_a_repeated_name_is_refused_and_the_first_kept(arena: Arena) -> None:
    def build(pool: Pool) -> list[Node]:
        return [file_node(pool, b"twice", b"first\n"), file_node(pool, b"twice", b"second\n")]

    restore_confined(arena, build, refused=1)
    assert (arena.target / "twice").read_bytes() == b"first\n"


def test_symlink_then_directory_of_its_name_is_never_written_through(arena: Arena) -> None:
    outside = arena.sentinel / "sub"

    def build(pool: Pool) -> list[Node]:
        link = Node(name=b"x", type=SYMLINK, mode=0o120777, target=os.fsencode(outside))
        planted = dir_node(pool, b"x", [file_node(pool, b"planted"), file_node(pool, b"file")])
        planted.mode = stat.S_IFDIR | 0o777
        return [link, planted]

    restore_confined(arena, build, refused=1)
    assert os.readlink(arena.target / "x") == str(outside)  # made as a link, not traversed
    assert not (outside / "planted").exists()
    assert stat.S_IMODE(os.lstat(outside).st_mode) == 0o750  # chmod did not follow it


@pytest.mark.parametrize("overwrite", ["always", "never"])
def test_a_link_already_at_the_target_is_never_followed(arena: Arena, overwrite: str) -> None:
    """Left by an earlier restore (or planted): the snapshot's directory of that name
    replaces the link, or its content is left out; nothing goes through it."""
    os.symlink(arena.sentinel / "sub", arena.target / "x")
    os.symlink(arena.sentinel / "file", arena.target / "good.txt")

    def build(pool: Pool) -> list[Node]:
        return [dir_node(pool, b"x", [file_node(pool, b"planted"), file_node(pool, b"file")])]

    if overwrite == "never":
        pool, snapshot = arena.snapshot(build)
        before = arena.listing()
        Restorer(pool, overwrite="never").restore(snapshot, str(arena.target))
        assert arena.listing() == before
        assert (arena.target / "x").is_symlink() and (arena.target / "good.txt").is_symlink()
        return
    restore_confined(arena, build, refused=0, overwrite=overwrite)
    assert (arena.target / "x" / "planted").read_bytes() == EVIL
    assert not (arena.target / "x").is_symlink()


def test_a_hostile_path_selected_by_name_is_refused(arena: Arena) -> None:
    pool, snapshot = arena.snapshot(
        lambda pool: [dir_node(pool, b"..", [file_node(pool, b"owned", mode=0o4777)])]
    )
    before = arena.listing()
    with pytest.raises(RestoreRefused):
        Restorer(pool).restore(snapshot, str(arena.target), "/..")
    assert arena.listing() == before
    assert os.listdir(arena.target) == []


def test_dry_run_reports_refusals_and_writes_nothing(arena: Arena) -> None:
    pool, snapshot = arena.snapshot(lambda pool: [file_node(pool, b"..")])
    before = arena.listing()
    restorer = Restorer(pool, dry_run=True, list_entries=True)
    with pytest.raises(RestoreRefused, match="counted"):
        restorer.restore(snapshot, str(arena.target))
    assert arena.listing() == before and os.listdir(arena.target) == []
    assert {"path": "/..", "type": "file", "action": "refused", "size": len(EVIL)} in (
        restorer.result.entries or []
    )


# --- what a restore outside / leaves out ------------------------------------------------


def privileged(pool: Pool) -> list[Node]:
    xattrs = {"user.costor": b"kept", "trusted.costor": b"t", "security.costor": b"s"}
    return [
        file_node(pool, b"suid", mode=0o4755, uid=0, gid=0, xattrs=xattrs),
        file_node(pool, b"sgid", mode=0o2750),
        Node(name=b"mem", type=CHARDEV, mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 1)),
        Node(name=b"fifo", type=FIFO, mode=stat.S_IFIFO | 0o666, mtime_ns=MTIME),
    ]


def _xattrs(path: Path) -> set[str]:
    try:
        return set(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return set()


def test_safe_default_clears_privileges_and_makes_no_nodes(arena: Arena) -> None:
    result = restore_confined(arena, privileged, refused=0)
    assert stat.S_IMODE(os.lstat(arena.target / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(arena.target / "sgid").st_mode) == 0o750
    assert not os.path.lexists(arena.target / "mem")
    assert not os.path.lexists(arena.target / "fifo")
    assert result.skipped == 2
    assert not {"trusted.costor", "security.costor"} & _xattrs(arena.target / "suid")
    actions = {entry["path"]: entry["action"] for entry in result.entries}
    assert actions["/mem"] == actions["/fifo"] == "not-restorable"


def test_faithful_restores_them_as_they_are(arena: Arena) -> None:
    restore_confined(arena, privileged, refused=0, faithful=True)
    assert stat.S_IMODE(os.lstat(arena.target / "suid").st_mode) == 0o4755
    assert stat.S_ISFIFO(os.lstat(arena.target / "fifo").st_mode)
    if IS_ROOT:
        assert os.lstat(arena.target / "mem").st_rdev == os.makedev(1, 1)
        names = _xattrs(arena.target / "suid")
        if "user.costor" in names:  # a file system with xattrs
            assert "trusted.costor" in names


# --- archives -----------------------------------------------------------------------------


def hostile_for_archives(pool: Pool) -> list[Node]:
    link = Node(name=b"x", type=SYMLINK, mode=0o120777, target=b"/etc")
    return [
        dir_node(pool, b"..", [dir_node(pool, b"..", [file_node(pool, b"owned")])]),
        file_node(pool, b"../../escaped"),
        file_node(pool, b"/abs"),
        file_node(pool, b""),
        file_node(pool, b"."),
        link,
        dir_node(pool, b"x", [file_node(pool, b"passwd")]),
        dir_node(pool, b"nested", [file_node(pool, b".."), file_node(pool, b"ok", GOOD)]),
    ]


def _assert_member_names(names: list[str]) -> None:
    assert names
    for name in names:
        assert not name.startswith("/"), name
        parts = PurePosixPath(name).parts
        assert ".." not in parts and "." not in name.split("/")[:-1], name
    assert "good.txt" in names and "nested/ok" in names
    assert not any(name.startswith("x/") for name in names)  # through the link "x"


@pytest.mark.parametrize("format", ["tar", "zip"])
def test_archives_hold_no_name_that_leaves(arena: Arena, format: str) -> None:
    pool, snapshot = arena.snapshot(hostile_for_archives)
    archive = arena.tmp / f"out.{format}"
    with pytest.raises(RestoreRefused) as raised:
        write_archive(pool, snapshot, "/", str(archive))
    assert len(raised.value.fields["refused"]) == 7
    if format == "tar":
        with tarfile.open(archive) as tar:
            names = tar.getnames()
    else:
        with zipfile.ZipFile(archive) as zipped:
            names = [name.rstrip("/") for name in zipped.namelist()]
    _assert_member_names(names)


def test_archive_on_a_stream_and_its_dry_run_refuse_too(arena: Arena) -> None:
    pool, snapshot = arena.snapshot(hostile_for_archives)
    stream = io.BytesIO()
    with pytest.raises(RestoreRefused):
        write_archive(pool, snapshot, "/", stream)
    with tarfile.open(fileobj=io.BytesIO(stream.getvalue())) as tar:
        _assert_member_names(tar.getnames())
    with pytest.raises(RestoreRefused):
        plan_archive(pool, snapshot, "/", "plan.tar", list_entries=True)


def test_an_archive_of_a_hostile_path_by_name_is_refused(arena: Arena) -> None:
    pool, snapshot = arena.snapshot(lambda pool: [dir_node(pool, b"..", [file_node(pool, b"o")])])
    stream = io.BytesIO()
    with pytest.raises(RestoreRefused):
        write_archive(pool, snapshot, "/..", stream)
    with tarfile.open(fileobj=io.BytesIO(stream.getvalue())) as tar:
        assert tar.getnames() == []


def test_a_clean_snapshot_is_not_refused(arena: Arena) -> None:
    restore_confined(arena, lambda pool: [], refused=0)
    pool = open_pool(arena.pool_dir)
    stream = io.BytesIO()
    write_archive(pool, pool.list_snapshots()[0], "/", stream, format="zip")
    names = zipfile.ZipFile(io.BytesIO(stream.getvalue())).namelist()
    assert {"good.txt", "good/", "good/dir/", "good/dir/file"} <= set(names)
