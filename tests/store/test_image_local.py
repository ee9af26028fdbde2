"""Images over the local transport (issue 23): a real loop device and sparse image files
read as one stream by the archiver, stored as ``image`` nodes, read back from the pool.

Loop devices are attached with ``losetup`` on files in the test's directory and always
detached; under ``CI=true`` a missing losetup fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures import make_pool, open_pool

from costor.errors import BackupError
from costor.store.backup.walk import Archiver
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.snapshot import Snapshot
from costor.store.tree import DIR, FILE, IMAGE, Node

MIB = 1024 * 1024
BLOCK = 4096


def attach(file: Path) -> Path:
    """``file`` as a loop device (the caller detaches it)."""
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("loop devices need losetup and root (the test script provides both)")
        pytest.skip("loop devices need losetup and root")
    done = subprocess.run(
        [losetup, "-f", "--show", str(file)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def detach(device: Path) -> None:
    subprocess.run(["losetup", "-d", str(device)], capture_output=True, timeout=30)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 32 MiB loop device over random bytes, and its backing file."""
    backing = tmp_path / "disk.img"
    backing.write_bytes(random.Random(23).randbytes(32 * MIB))
    loop = attach(backing)
    try:
        yield loop, backing
    finally:
        detach(loop)


def backup(pool: Pool, parent: Snapshot | None = None, **kwargs) -> tuple[Snapshot, Archiver]:  # type: ignore[no-untyped-def]
    kwargs.setdefault("paths", [])
    archiver = Archiver(pool, client="c", **kwargs)
    return archiver.run(parent), archiver


def node_at(pool: Pool, snapshot: Snapshot, path: str) -> Node:
    tree = bytes.fromhex(snapshot.tree)
    parts = [p for p in os.fsencode(path).split(b"/") if p]
    for index, part in enumerate(parts):
        nodes = {node.name: node for node in pool.load_tree(tree)}
        assert part in nodes, f"{path}: {part!r} not in the snapshot's tree"
        node = nodes[part]
        if index == len(parts) - 1:
            return node
        assert node.type == DIR and node.subtree is not None
        tree = node.subtree
    raise AssertionError(path)


def content_of(pool: Pool, node: Node) -> bytes:
    return b"".join(pool.read_blob(blob) for blob in node.content)


def test_block_device_is_one_image_node_read_back_byte_identical(
    tmp_path: Path, device: tuple[Path, Path]
) -> None:
    loop, backing = device
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, images=[str(loop)])
    assert archiver.errors == []
    assert str(loop) in snapshot.paths
    node = node_at(pool, snapshot, str(loop))
    assert node.type == IMAGE
    assert node.size == 32 * MIB
    assert node.image == {"method": "full", "source": "blockdev"}
    assert node.rdev == 0
    assert content_of(pool, node) == backing.read_bytes()
    assert snapshot.counters["images"] == 1
    assert snapshot.counters["bytes_read"] == 32 * MIB


def test_changing_one_percent_of_blocks_adds_only_the_changed_chunks(
    tmp_path: Path, device: tuple[Path, Path]
) -> None:
    """Small chunks (64 KiB on average) so that 1 % of 4 KiB blocks touches a minority of
    them; a block device is read again every time, unchanged chunks dedup."""
    loop, backing = device
    pool = make_pool(tmp_path / "pool", chunk_avg=64 * 1024)
    first, _ = backup(pool, images=[str(loop)])
    before = node_at(pool, first, str(loop))
    ends, offset = [], 0
    for blob in before.content:
        offset += len(pool.read_blob(blob))
        ends.append(offset)
    rng = random.Random(1)
    blocks = rng.sample(range(32 * MIB // BLOCK), 32 * MIB // BLOCK // 100)
    touched = set()
    with open(loop, "r+b", buffering=0) as handle:
        for block in blocks:
            handle.seek(block * BLOCK)
            handle.write(rng.randbytes(BLOCK))
            touched.add(next(i for i, end in enumerate(ends) if end > block * BLOCK))
        os.fsync(handle.fileno())
    pool = open_pool(tmp_path / "pool")  # its counters start from zero
    second, archiver = backup(pool, first, images=[str(loop)])
    assert archiver.errors == []
    after = node_at(pool, second, str(loop))
    assert content_of(pool, after) == backing.read_bytes()
    added = second.counters["blobs_added"] - 2  # the trees of / and /dev change too
    # Each changed chunk is stored again; a write near a cut point may move it (CDC
    # re-synchronises within a chunk or so), never more.
    assert len(touched) <= added <= 2 * len(touched) + 2
    assert added < len(before.content) // 2
    assert second.counters["bytes_added_raw"] < 32 * MIB // 2


def test_sparse_file_holes_are_not_read_and_zero_chunks_stored_once(tmp_path: Path) -> None:
    """A mostly-empty 256 MiB sparse file: only its data is read, and the pool grows by
    far less than the file."""
    image = tmp_path / "vm.img"
    data = random.Random(5).randbytes(MIB)
    with open(image, "wb") as handle:
        handle.truncate(256 * MIB)
        for where in (0, 100 * MIB, 200 * MIB + 12345):
            handle.seek(where)
            handle.write(data)
    pool = make_pool(tmp_path / "pool")
    started = time.monotonic()
    snapshot, archiver = backup(pool, images=[str(image)])
    elapsed = time.monotonic() - started
    assert archiver.errors == []
    node = node_at(pool, snapshot, str(image))
    assert node.type == IMAGE and node.size == 256 * MIB
    assert node.image == {"method": "full", "source": "file"}
    assert content_of(pool, node) == image.read_bytes()
    # The holes were not read: 3 MiB of data in (at most) 3 file system extents.
    assert snapshot.counters["bytes_read"] <= 4 * MIB
    assert snapshot.counters["bytes_processed"] == 256 * MIB
    assert pool.bytes_added < 8 * MIB
    assert len(set(node.content)) < len(node.content) // 4  # zero chunks repeat
    print(f"sparse 256 MiB image backed up in {elapsed:.2f} s")


def test_a_sparse_file_and_a_full_copy_of_it_are_cut_alike(tmp_path: Path) -> None:
    """Holes are cut into zero chunks without running the chunker over them, and the
    chunker restarts after them: the chunks are those of the whole stream, so a sparse
    image and a full copy (a device holding the same bytes) share every chunk. Data
    regions start and end at odd offsets, one hole is shorter than a zero chunk, the
    file starts and ends with holes."""
    sparse = tmp_path / "sparse.img"
    rng = random.Random(11)
    with open(sparse, "wb") as handle:
        handle.truncate(96 * MIB + 4321)
        for where, size in ((20 * MIB + 1, 3 * MIB), (23 * MIB + 200 * 1024, 777), (70 * MIB, MIB)):
            handle.seek(where)
            handle.write(rng.randbytes(size))
    full = tmp_path / "full.img"
    full.write_bytes(sparse.read_bytes())  # every block allocated
    assert os.stat(full).st_blocks > 4 * os.stat(sparse).st_blocks
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, images=[str(sparse), str(full)])
    assert archiver.errors == []
    cut_sparse = node_at(pool, snapshot, str(sparse)).content
    assert cut_sparse == node_at(pool, snapshot, str(full)).content
    assert content_of(pool, node_at(pool, snapshot, str(sparse))) == full.read_bytes()
    assert snapshot.counters["bytes_read"] < 96 * MIB + 8 * MIB  # the full copy, the data


def test_a_device_that_shrinks_while_read_is_reported_like_a_changed_file(
    tmp_path: Path, device: tuple[Path, Path]
) -> None:
    """The loop device loses half its size after the first chunk is read (the progress
    callback runs on the reading thread between chunks): the snapshot keeps what was
    read, with a warning naming the device."""
    loop, backing = device

    class Shrink(Progress):
        done = False

        def advance(self, files: int = 0, size: int = 0) -> None:
            if size and not self.done:
                self.done = True
                os.truncate(backing, 16 * MIB)
                subprocess.run(["losetup", "-c", str(loop)], check=True, timeout=30)

    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, images=[str(loop)], progress=Shrink())
    assert len(archiver.errors) == 1
    warning = archiver.errors[0]
    assert warning["path"] == str(loop) and warning["severity"] == "warning"
    assert warning["error"].startswith("changed while it was being read (33554432 bytes before")
    node = node_at(pool, snapshot, str(loop))
    assert node.type == IMAGE and node.size < 32 * MIB
    assert content_of(pool, node) == backing.read_bytes()[: node.size]


def test_unchanged_image_file_is_not_read_again_a_device_always_is(
    tmp_path: Path, device: tuple[Path, Path]
) -> None:
    loop, _ = device
    image = tmp_path / "small.img"
    image.write_bytes(random.Random(2).randbytes(3 * MIB))
    pool = make_pool(tmp_path / "pool")
    first, _ = backup(pool, images=[str(image), str(loop)])
    second, _ = backup(pool, first, images=[str(image), str(loop)])
    assert second.counters["bytes_read"] == 32 * MIB  # the device only
    assert node_at(pool, second, str(image)).content == node_at(pool, first, str(image)).content
    with open(image, "r+b") as handle:
        handle.write(b"changed")
    third, _ = backup(pool, second, images=[str(image), str(loop)])
    assert third.counters["bytes_read"] == 35 * MIB
    assert content_of(pool, node_at(pool, third, str(image))) == image.read_bytes()


def test_image_inside_a_backed_up_directory_is_stored_once_as_the_image(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "notes.txt").write_text("notes")
    image = root / "images" / "vm1.img"
    image.write_bytes(random.Random(3).randbytes(2 * MIB))
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, paths=[str(root)], images=[str(image)], exclude=["*.img"])
    assert archiver.errors == []
    directory = node_at(pool, snapshot, str(root / "images"))
    assert directory.subtree is not None
    entries = pool.load_tree(directory.subtree)
    assert [(n.name, n.type) for n in entries] == [(b"vm1.img", IMAGE)]  # not excluded
    assert node_at(pool, snapshot, str(root / "notes.txt")).type == FILE
    assert content_of(pool, entries[0]) == image.read_bytes()


def test_an_image_in_an_excluded_directory_is_still_stored(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cache" / "vms").mkdir(parents=True)
    (root / "cache" / "junk").write_text("junk")
    image = root / "cache" / "vms" / "vm1.img"
    image.write_bytes(b"i" * 3000)
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, paths=[str(root)], images=[str(image)], exclude=["cache"])
    assert archiver.errors == []
    cache = node_at(pool, snapshot, str(root / "cache"))
    assert cache.type == DIR and cache.subtree is not None
    assert [n.name for n in pool.load_tree(cache.subtree)] == [b"vms"]  # no junk
    assert content_of(pool, node_at(pool, snapshot, str(image))) == image.read_bytes()


def test_an_image_on_another_file_system_is_stored_with_one_file_system(tmp_path: Path) -> None:
    """``one_file_system`` leaves a mount point's contents out, but not an image listed
    below it (a real tmpfs mounted in the test's directory)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    root = tmp_path / "data"
    mount = root / "mnt"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        (mount / "other.txt").write_text("other file system")
        image = mount / "vm.img"
        image.write_bytes(b"m" * 4000)
        pool = make_pool(tmp_path / "pool")
        snapshot, archiver = backup(
            pool, paths=[str(root)], images=[str(image)], one_file_system=True
        )
        assert archiver.errors == []
        mounted = node_at(pool, snapshot, str(mount))
        assert mounted.subtree is not None
        assert [n.name for n in pool.load_tree(mounted.subtree)] == [b"vm.img"]
        assert content_of(pool, node_at(pool, snapshot, str(image))) == image.read_bytes()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_image_beside_paths_under_a_common_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\x01" * 100_000)  # smaller than the smallest chunk
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, paths=[str(tmp_path / "etc")], images=[str(image)])
    assert archiver.errors == []
    assert snapshot.paths == sorted([str(tmp_path / "etc"), str(image)])
    node = node_at(pool, snapshot, str(image))
    assert node.type == IMAGE and content_of(pool, node) == image.read_bytes()
    assert node_at(pool, snapshot, str(tmp_path / "etc" / "hosts")).type == FILE


def test_an_image_the_walk_cannot_reach_is_a_failure_not_silently_missing(
    tmp_path: Path,
) -> None:
    # /x/var is backed up; /x/var/lib is a link to ../srv, stored as the link, so the
    # walk never reaches the image named below it: the backup says so (exit 5).
    (tmp_path / "x" / "var").mkdir(parents=True)
    (tmp_path / "x" / "srv").mkdir()
    (tmp_path / "x" / "srv" / "vm.img").write_bytes(b"\x02" * 100_000)
    (tmp_path / "x" / "var" / "lib").symlink_to("../srv")
    image = tmp_path / "x" / "var" / "lib" / "vm.img"
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, paths=[str(tmp_path / "x" / "var")], images=[str(image)])
    assert archiver.errors == [
        {
            "path": str(image),
            "error": "image was not read: a directory on its path is a symbolic link or not "
            "a directory (name the image by its real path)",
        }
    ]
    assert snapshot.counters["images"] == 0 and snapshot.counters["files_failed"] == 1


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_an_image_that_cannot_be_read_is_a_failure_naming_it(tmp_path: Path, kind: str) -> None:
    image = tmp_path / "vm.img"
    if kind == "directory":
        image.mkdir()
    elif kind == "fifo":
        os.mkfifo(image)
    good = tmp_path / "good.img"
    good.write_bytes(b"good" * 1000)
    pool = make_pool(tmp_path / "pool")
    snapshot, archiver = backup(pool, images=[str(image), str(good)])
    expected = {
        "missing": "image cannot be read: No such file or directory",
        "directory": "image is a directory, not a block device or a file",
        "fifo": "image is neither a block device nor a regular file",
    }[kind]
    assert archiver.errors == [{"path": str(image), "error": expected}]
    assert snapshot.counters["files_failed"] == 1
    assert node_at(pool, snapshot, str(good)).type == IMAGE  # the rest is stored
    directory = node_at(pool, snapshot, str(tmp_path))
    assert directory.subtree is not None
    assert [n.name for n in pool.load_tree(directory.subtree)] == [b"good.img"]


def test_an_image_path_must_be_absolute(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "pool")
    with pytest.raises(BackupError, match="not an absolute path"):
        Archiver(pool, client="c", paths=[], images=["vm.img"])


def test_progress_totals_count_the_images(tmp_path: Path, device: tuple[Path, Path]) -> None:
    """The totals counted alongside (the bar's ETA) hold each image once, a device by
    its size, an image inside a backed-up directory not twice."""
    loop, _ = device
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a" * 1000)
    image = root / "vm.img"
    image.write_bytes(b"v" * 5000)

    class Totals(Progress):
        totals: tuple[int, int] | None = None
        advanced = 0

        def set_total(self, files: int, size: int) -> None:
            self.totals = (files, size)

        def advance(self, files: int = 0, size: int = 0) -> None:
            self.advanced += size

    progress = Totals()
    pool = make_pool(tmp_path / "pool")
    archiver = Archiver(
        pool, client="c", paths=[str(root)], images=[str(loop), str(image)], progress=progress
    )
    archiver.run(scan_totals=True)
    deadline = time.monotonic() + 10
    while progress.totals is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert progress.totals == (3, 32 * MIB + 5000 + 1000)
    assert progress.advanced == 32 * MIB + 5000 + 1000


def test_an_image_that_cannot_be_opened_names_it(tmp_path: Path) -> None:
    """EACCES, for real: the archiver runs as nobody (setpriv) on an image only root
    may read; the backup stores the rest and names the image."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test needs setpriv (util-linux) and root")
        pytest.skip("this test needs setpriv and root")
    shared = Path(tempfile.mkdtemp(prefix="costor-eacces-"))
    try:
        os.chmod(shared, 0o777)
        secret = shared / "secret.img"
        secret.write_bytes(b"s" * 1000)
        os.chmod(secret, 0o600)
        readable = shared / "readable.img"
        readable.write_bytes(b"r" * 1000)
        os.chmod(readable, 0o644)
        script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from support.fixtures import make_pool
from costor.store.backup.walk import Archiver
pool = make_pool(__import__("pathlib").Path({str(shared / "pool")!r}))
archiver = Archiver(pool, client="c", paths=[], images=[{str(secret)!r}, {str(readable)!r}])
snapshot = archiver.run()
print(json.dumps({{"errors": archiver.errors, "images": snapshot.counters["images"]}}))
"""
        done = subprocess.run(
            [
                setpriv,
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=shared,
            env={**os.environ, "HOME": str(shared)},
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {
            "errors": [{"path": str(secret), "error": "image cannot be opened: Permission denied"}],
            "images": 1,
        }
    finally:
        shutil.rmtree(shared, ignore_errors=True)
