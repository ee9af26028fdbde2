"""costor restore outside /: setuid/setgid bits cleared, no device nodes or fifos, no
security.*/trusted.* xattrs, unless --faithful asks for a system restore; and a snapshot
holding names that would leave the target fails with a clear error (issue 19)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support.fixtures import Site, open_pool

from costor.store.pack import BlobType
from costor.store.snapshot import Snapshot
from costor.store.tree import FILE, Node

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def privileged(applied: Site, source: Path) -> Site:
    """A backup of a source with a setuid file, a fifo and (as root) a device node and
    a trusted.* xattr."""
    (source / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(source / "suid", 0o4755)
    os.mkfifo(source / "fifo")
    if IS_ROOT:
        os.mknod(source / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.setxattr(source / "suid", "trusted.costor", b"1")
    result = applied.cli("backup", "alpha")
    assert result.code == 0, result.stderr
    return applied


def restored(target: Path, source: Path) -> Path:
    return target / str(source).lstrip("/")


def test_default_leaves_privileges_out(privileged: Site, source: Path, tmp_path: Path) -> None:
    target = tmp_path / "r"
    result = privileged.cli("restore", "alpha:latest", "--target", str(target), "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["faithful"] is False
    assert document["not_restorable"] == (2 if IS_ROOT else 1)
    root = restored(target, source)
    assert stat.S_IMODE(os.lstat(root / "suid").st_mode) == 0o755
    assert not os.path.lexists(root / "fifo") and not os.path.lexists(root / "null")
    assert "trusted.costor" not in os.listxattr(root / "suid")
    assert "fifo is made only by a system restore (--faithful)" in result.stderr
    assert "setuid/setgid bits cleared on 1 entr(ies)" in result.stderr
    assert (root / "docs" / "readme.txt").read_text() == (
        source / "docs" / "readme.txt"
    ).read_text()


def test_faithful_restores_them(privileged: Site, source: Path, tmp_path: Path) -> None:
    target = tmp_path / "r"
    result = privileged.cli(
        "restore", "alpha:latest", "--target", str(target), "--faithful", "--json"
    )
    assert result.code == 0, result.stderr
    assert result.json()["faithful"] is True
    root = restored(target, source)
    assert stat.S_IMODE(os.lstat(root / "suid").st_mode) == 0o4755
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    if IS_ROOT:
        assert os.lstat(root / "null").st_rdev == os.makedev(1, 3)
        assert os.getxattr(root / "suid", "trusted.costor") == b"1"
    assert "warning" not in result.stderr


def test_faithful_is_for_directories(privileged: Site, tmp_path: Path) -> None:
    result = privileged.cli(
        "restore", "alpha:latest", "--archive", str(tmp_path / "a.tar"), "--faithful"
    )
    assert result.code == 1
    assert "--faithful applies to a restore into a directory" in result.stderr
    assert not (tmp_path / "a.tar").exists()


def test_a_hostile_snapshot_fails_clearly_and_stays_inside(applied: Site, tmp_path: Path) -> None:
    pool = open_pool(applied.pool_path)
    data = b"owned\n"
    blob = pool.put_blob(BlobType.DATA, data)
    nodes = [
        Node(name=name, type=FILE, mode=0o100644, size=len(data), content=[blob])
        for name in (b"..", b"ok")
    ]
    tree = pool.save_tree(nodes)
    pool.flush()
    snapshot = Snapshot(
        client="alpha", time="2026-12-07T08:00:00.000000Z", paths=["/"], tree=tree.hex()
    )
    pool.save_snapshot(snapshot)
    target = tmp_path / "arena" / "target"
    for args in (("--target", str(target)), ("--archive", str(tmp_path / "arena" / "a.tar"))):
        result = applied.cli("restore", snapshot.id, *args)
        assert result.code == 1, result.stderr
        assert "Refused 1 entr(ies)" in result.stderr and "'..'" in result.stderr
        assert "Traceback" not in result.stderr
    assert (target / "ok").read_bytes() == data
    assert sorted(os.listdir(tmp_path / "arena")) == ["a.tar", "target"]
