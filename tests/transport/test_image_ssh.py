"""Images over SSH (issue 23), against the real test sshd (tests/support/sshd.py) and real
loop devices: a block device and a sparse image file read as one stream each, the
incremental's changed blocks alone over the wire, holes and zeros nearly free, the
content in the pool byte-identical to the device, the SFTP fallback refusing images."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import open_pool
from support.sshd import Sshd, remote_dir, ssh_site, sshd  # noqa: F401  (fixtures)
from test_ssh_pull import sudo_rule  # noqa: F401  (a fixture: the sudoers line of docs/ssh.md)

from costor.store.pool import Pool
from costor.store.tree import DIR, Node

MiB = 1024 * 1024
KiB = 1024


def needs(*tools: str) -> None:
    """Root and the tools, or skip (fail under CI, where the test script installs them)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        reason = f"needs root and {', '.join(missing) or 'nothing else'}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def loop(image: Path) -> Iterator[Path]:
    """A loop device over ``image``, detached afterwards."""
    needs("losetup")
    attached = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, timeout=30
    )
    if attached.returncode != 0:
        pytest.skip(f"losetup cannot attach a loop device here: {attached.stderr.strip()}")
    device = Path(attached.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], capture_output=True, timeout=30)


def scatter(path: Path, size: int, fraction: float, seed: int = 7) -> int:
    """Rewrite ``fraction`` of the 4 KiB blocks of ``path`` at random offsets (random
    bytes); returns the bytes written."""
    rng = random.Random(seed)
    picked = rng.sample(range(size // (4 * KiB)), max(1, int(size // (4 * KiB) * fraction)))
    with open(path, "r+b", buffering=0) as handle:
        for index in picked:
            handle.seek(index * 4 * KiB)
            handle.write(os.urandom(4 * KiB))
        os.fsync(handle.fileno())
    return len(picked) * 4 * KiB


def image_node(pool: Pool, client: str, path: str) -> Node:
    """The image node at ``path`` in the client's latest snapshot."""
    snapshot = max(pool.list_snapshots(client), key=lambda s: s.time)
    tree: bytes | None = bytes.fromhex(snapshot.tree)
    found: Node | None = None
    for name in path.strip("/").split("/"):
        assert tree is not None, path
        found = next(n for n in pool.load_tree(tree) if n.name == name.encode())
        tree = found.subtree if found.type == DIR else None
    assert found is not None and found.type == "image", found
    return found


def node_tree(pool: Pool, snapshot: Any, directory: Path) -> bytes:
    """The tree of ``directory`` in ``snapshot``."""
    tree = bytes.fromhex(snapshot.tree)
    for name in str(directory).strip("/").split("/"):
        found = next(n for n in pool.load_tree(tree) if n.name == name.encode())
        assert found.subtree is not None
        tree = found.subtree
    return tree


def content(pool: Pool, node: Node) -> bytes:
    return b"".join(pool.read_blob(blob) for blob in node.content)


def site_with_images(
    tmp_path: Path, server: Sshd, small: Path, images: list[Any], **options: Any
) -> Any:
    # An image: its path, or the inside of its table ('path = "…", changes = …').
    listed = ", ".join("{ " + str(i) + " }" if "=" in str(i) else f'"{i}"' for i in images)
    site = ssh_site(
        tmp_path, server, {"img": {"paths": [small], "extra": f"images = [{listed}]", **options}}
    )
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def test_a_block_device_incremental_sends_about_the_changed_blocks(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    size = 32 * MiB
    backing = tmp_path / "disk.img"
    backing.write_bytes(os.urandom(size))
    small = remote_dir / "etc"
    small.mkdir()
    (small / "hosts").write_text("127.0.0.1 localhost\n")
    with loop(backing) as device:
        site = site_with_images(tmp_path, sshd, small, [device])
        first = site.cli("backup", "img", "--json")
        assert first.code == 0, first.stderr
        assert first.json()["bytes_transferred"] > size
        pool = open_pool(site.pool_path)
        node = image_node(pool, "img", str(device))
        assert node.size == size and node.image is not None
        assert (node.image["method"], node.image["source"]) == ("full", "blockdev")
        assert content(pool, node) == backing.read_bytes()
        changed = scatter(device, size, 0.01)
        second = site.cli("backup", "img", "--json")
        assert second.code == 0, second.stderr
        document = second.json()
        # The changed 4 KiB pieces, plus the block hashes both ways (64 KiB blocks: 8 KiB
        # a direction) and the pieces' hashes of the blocks asked for.
        assert document["bytes_transferred"] < 2 * changed + 64 * KiB, document
        pool = open_pool(site.pool_path)
        node = image_node(pool, "img", str(device))
        assert node.image is not None and node.image["method"] == "blocks"
        assert node.image["bytes_read"] == size  # a device is read whole to compare
        with open(device, "rb") as handle:
            assert content(pool, node) == handle.read()
        unchanged = site.cli("backup", "img", "--json").json()
        assert unchanged["bytes_transferred"] < 40 * KiB, unchanged  # hashes, no content
        assert unchanged["bytes_added"] < 20 * KiB
        # costor restore writes it to another device, byte for byte.
        (tmp_path / "target.img").write_bytes(bytes(size))
        with loop(tmp_path / "target.img") as target:
            restored = site.cli(
                "restore", "img:latest", str(device), "--target-device", str(target)
            )
            assert restored.code == 0, restored.stderr
        assert (tmp_path / "target.img").read_bytes() == backing.read_bytes()
    assert site.cli("check", "--read-data").code == 0


def test_a_sparse_image_file_inside_a_path_skips_its_holes_and_stores_zeros_once(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    size = 64 * MiB
    vm = remote_dir / "vm"
    vm.mkdir()
    (vm / "notes.txt").write_text("the disk of vm1\n")
    disk = vm / "disk.img"
    with open(disk, "wb") as handle:
        handle.truncate(size)
        for offset in (0, 20 * MiB + 12345, 50 * MiB):
            handle.seek(offset)
            handle.write(os.urandom(MiB))
        handle.seek(30 * MiB)
        handle.write(bytes(4 * MiB))  # zeros written out, not a hole
    site = site_with_images(tmp_path, sshd, vm, [disk])
    first = site.cli("backup", "img", "--json")
    assert first.code == 0, first.stderr
    document = first.json()
    assert document["bytes_transferred"] < 3 * MiB + 200 * KiB, document
    assert document["bytes_added"] < 3 * MiB + 200 * KiB, document  # zero runs: one blob
    pool = open_pool(site.pool_path)
    node = image_node(pool, "img", str(disk))
    assert node.image is not None and node.image["source"] == "file"
    assert node.image["bytes_read"] < 8 * MiB  # the data and the written zeros, no holes
    assert content(pool, node) == disk.read_bytes()
    changed = scatter(disk, size, 0.01)
    second = site.cli("backup", "img", "--json")
    assert second.code == 0, second.stderr
    assert second.json()["bytes_transferred"] < 2 * changed + 128 * KiB, second.json()
    pool = open_pool(site.pool_path)
    node = image_node(pool, "img", str(disk))
    assert node.image is not None and node.image["method"] == "blocks"
    assert content(pool, node) == disk.read_bytes()
    snapshot = max(pool.list_snapshots("img"), key=lambda s: s.time)
    assert b"notes.txt" in [n.name for n in pool.load_tree(node_tree(pool, snapshot, vm))]


def test_the_sftp_fallback_refuses_images_before_any_hook(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    small = remote_dir / "etc"
    small.mkdir()
    (small / "hosts").write_text("127.0.0.1 localhost\n")
    marker = remote_dir / "hook-ran"
    site = site_with_images(
        tmp_path,
        sshd,
        small,
        ["/dev/null-image"],
        user="nopython",
        extra=f'images = ["/dev/null-image"]\nhooks = {{ before = ["touch {marker}"] }}',
    )
    backup = site.cli("backup", "img")
    assert backup.code == 1, (backup.stdout, backup.stderr)
    assert "images (/dev/null-image) need python3 on the host" in backup.stderr, backup.stderr
    assert "Traceback" not in backup.stderr
    assert not marker.exists()


def test_sudo_reads_a_device_the_login_user_cannot(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
    sudo_rule: str,  # noqa: F811
) -> None:
    backing = tmp_path / "disk.img"
    backing.write_bytes(os.urandom(4 * MiB))
    small = remote_dir / "etc"
    small.mkdir()
    (small / "hosts").write_text("127.0.0.1 localhost\n")
    with loop(backing) as device:
        (tmp_path / "a").mkdir()
        plain = site_with_images(tmp_path / "a", sshd, small, [device], user="costortest")
        refused = plain.cli("backup", "img", "--json")
        assert refused.code == 5, refused.stderr  # stored, incomplete
        assert refused.json()["files_failed"] == 1, refused.stdout  # root:disk 0660
        assert "Permission denied" in refused.stdout
        (tmp_path / "b").mkdir()
        site = site_with_images(
            tmp_path / "b",
            sshd,
            small,
            [device],
            user="costortest",
            ssh_extra=f', sudo = true, python = "{sudo_rule}"',
        )
        backup = site.cli("backup", "img", "--json")
        assert backup.code == 0, backup.stderr
        assert backup.json()["files_failed"] == 0
        pool = open_pool(site.pool_path)
        assert content(pool, image_node(pool, "img", str(device))) == backing.read_bytes()


def test_an_image_file_that_grows_and_shrinks_is_rebuilt_exactly(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    disk = remote_dir / "disk.img"
    disk.write_bytes(os.urandom(8 * MiB + 1000))
    small = remote_dir / "etc"
    small.mkdir()
    (small / "hosts").write_text("127.0.0.1 localhost\n")
    site = site_with_images(tmp_path, sshd, small, [disk])
    assert site.cli("backup", "img").code == 0
    with open(disk, "r+b") as handle:  # a block changed, and 300 KiB more at the end
        handle.seek(3 * MiB + 5)
        handle.write(b"changed")
        handle.seek(0, os.SEEK_END)
        handle.write(os.urandom(300 * KiB))
    grown = site.cli("backup", "img", "--json")
    assert grown.code == 0, grown.stderr
    assert grown.json()["bytes_transferred"] < 300 * KiB + 64 * KiB
    pool = open_pool(site.pool_path)
    node = image_node(pool, "img", str(disk))
    assert node.image is not None and node.image["method"] == "blocks"
    assert content(pool, node) == disk.read_bytes()
    with open(disk, "r+b") as handle:
        handle.truncate(5 * MiB + 17)
    shrunk = site.cli("backup", "img", "--json")
    assert shrunk.code == 0, shrunk.stderr
    assert shrunk.json()["bytes_transferred"] < 64 * KiB
    pool = open_pool(site.pool_path)
    assert content(pool, image_node(pool, "img", str(disk))) == disk.read_bytes()
    # Unchanged since (size, times, inode): not read again, the parent's entry kept.
    same = site.cli("backup", "img", "--json")
    assert same.code == 0, same.stderr
    assert same.json()["files_unmodified"] == 2, same.stdout  # the image and hosts
    assert same.json()["images"] == 1 and str(disk) in same.json()["paths"], same.stdout
    pool = open_pool(site.pool_path)
    assert content(pool, image_node(pool, "img", str(disk))) == disk.read_bytes()


def test_an_image_across_a_mount_is_read_and_an_excluded_one_is_reported(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """one_file_system stops the walk at a mount, not at an image named below it (/dev
    under paths = ["/"]); an image an exclude pattern hides is reported, not lost."""
    needs("mount")
    mounted = remote_dir / "mnt"
    mounted.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mounted)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (remote_dir / "notes.txt").write_text("beside the mount\n")
        disk = mounted / "disk.img"
        disk.write_bytes(os.urandom(MiB))
        (mounted / "other.bin").write_bytes(b"not backed up: another file system")
        hidden = remote_dir / "hidden.img"
        hidden.write_bytes(os.urandom(4096))
        site = site_with_images(
            tmp_path,
            sshd,
            remote_dir,
            [disk, hidden],
            extra=f'images = ["{disk}", "{hidden}"]\none_file_system = true\n'
            'exclude = ["hidden.img"]',
        )
        backup = site.cli("backup", "img", "--json")
        assert backup.code == 5, backup.stderr  # stored; hidden.img reported
        document = backup.json()
        assert any(
            error["path"] == str(hidden) and "not read" in error["error"]
            for error in document["errors"]
        ), document
        pool = open_pool(site.pool_path)
        assert content(pool, image_node(pool, "img", str(disk))) == disk.read_bytes()
        snapshot = max(pool.list_snapshots("img"), key=lambda s: s.time)
        names = [n.name for n in pool.load_tree(node_tree(pool, snapshot, mounted))]
        assert names == [b"disk.img"]
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True)
