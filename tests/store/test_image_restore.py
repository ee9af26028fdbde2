"""Images restored onto real loop devices and as sparse files (issue 23).

The snapshots hold an ``image`` entry made through the store's own API (its blobs put
in a real pool, as a backup stores them); the targets are real loop devices over files
in the test's directory, one mounted with a real ext4 file system, one too small.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.fixtures import make_pool, open_pool

from costor.errors import DataCorruption, PathNotInSnapshot, RestoreError, UsageError
from costor.store.checker import check
from costor.store.pack import BlobType, pack_name
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.restore.archive import write_archive
from costor.store.restore.device import (
    _Zeroer,
    holders,
    image_node,
    mount_points,
    partitions,
    restore_to_device,
)
from costor.store.restore.directory import Restorer
from costor.store.snapshot import Snapshot
from costor.store.tree import DIR, FILE, IMAGE, Node

MIB = 1024 * 1024
IMAGE_SIZE = 8 * MIB
CHUNK = 256 * 1024
MTIME = 1_700_000_000_000_000_000
OLD_BYTE = 0xA5  # what a target device holds before the restore


def image_bytes() -> bytes:
    """8 MiB: random data with all-zero stretches (whole chunks and parts of chunks),
    and a zero tail, as a disk image has."""
    rng = random.Random(23)
    data = bytearray(rng.randbytes(IMAGE_SIZE))
    data[MIB : 3 * MIB] = bytes(2 * MIB)  # whole zero chunks: holes in a file
    data[5 * MIB + 4096 : 5 * MIB + 200_000] = bytes(200_000 - 4096)
    data[7 * MIB :] = bytes(MIB)  # the image ends in zeros
    return bytes(data)


def image_node_in(pool: Pool, name: bytes, data: bytes) -> Node:
    content = [
        pool.put_blob(BlobType.DATA, data[start : start + CHUNK])
        for start in range(0, len(data), CHUNK)
    ]
    return Node(
        name=name,
        type=IMAGE,
        mode=0o660,
        size=len(data),
        content=content,
        mtime_ns=MTIME,
        image={"method": "full", "block_size": 4096, "source": "blockdev"},
    )


def dir_node(pool: Pool, name: bytes, children: list[Node]) -> Node:
    return Node(name=name, type=DIR, mode=stat.S_IFDIR | 0o755, subtree=pool.save_tree(children))


@pytest.fixture
def image_pool(tmp_path: Path) -> tuple[Pool, Snapshot, bytes]:
    """A pool whose snapshot holds /dev/vg0/root-snap (an image) and /etc/motd (a file)."""
    pool = make_pool(tmp_path / "pool")
    data = image_bytes()
    image = image_node_in(pool, b"root-snap", data)
    motd = Node(
        name=b"motd",
        type=FILE,
        mode=stat.S_IFREG | 0o644,
        size=3,
        content=[pool.put_blob(BlobType.DATA, b"hi\n")],
        mtime_ns=MTIME,
    )
    dev = dir_node(pool, b"dev", [dir_node(pool, b"vg0", [image])])
    tree = pool.save_tree([dev, dir_node(pool, b"etc", [motd])])
    pool.flush()
    snapshot = Snapshot(
        client="vmhost", time="2026-12-07T20:00:00.000000Z", paths=["/"], tree=tree.hex()
    )
    pool.save_snapshot(snapshot)
    return open_pool(tmp_path / "pool"), snapshot, data


def _need_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if os.geteuid() != 0 or missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"loop devices need root and {', '.join(missing) or 'losetup'}")
        pytest.skip("loop devices need root and losetup")


def _attach(backing: Path, size: int) -> Path:
    backing.write_bytes(bytes([OLD_BYTE]) * size)
    attached = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, timeout=30
    )
    assert attached.returncode == 0, attached.stderr
    return Path(attached.stdout.strip())


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """attach(name, size) -> /dev/loopN over a file of OLD_BYTE bytes; detached after."""
    _need_tools("losetup")
    attached: list[Path] = []

    def attach(name: str, size: int) -> Path:
        device = _attach(tmp_path / name, size)
        attached.append(device)
        return device

    try:
        yield attach
    finally:
        for device in attached:
            subprocess.run(["losetup", "-d", str(device)], capture_output=True, timeout=30)


def _read_device(device: Path, length: int) -> bytes:
    with open(device, "rb") as handle:
        return handle.read(length)


def test_image_is_written_to_a_device_byte_for_byte(image_pool, loop_devices) -> None:
    pool, snapshot, data = image_pool
    device = loop_devices("target.img", IMAGE_SIZE + MIB)  # larger: its tail is kept
    node = image_node(pool, snapshot, "/dev/vg0/root-snap")
    result = restore_to_device(pool, node, str(device))
    assert result.bytes_written == IMAGE_SIZE
    assert result.device_size == IMAGE_SIZE + MIB
    # Zeroed by the device (BLKZEROOUT): the 2 MiB and the last 1 MiB, and the two
    # whole 64 KiB blocks inside the ~190 KiB zero stretch in the middle of a chunk.
    assert result.bytes_zeroed == 3 * MIB + 128 * 1024
    written = _read_device(device, IMAGE_SIZE + MIB)
    # The zero chunks were written as zeros over the old bytes, not skipped.
    assert written[:IMAGE_SIZE] == data
    assert written[IMAGE_SIZE:] == bytes([OLD_BYTE]) * MIB


def test_a_device_smaller_than_the_image_is_refused(image_pool, loop_devices) -> None:
    pool, snapshot, _data = image_pool
    device = loop_devices("small.img", IMAGE_SIZE - MIB)
    node = image_node(pool, snapshot, "/dev/vg0/root-snap")
    with pytest.raises(RestoreError, match="fewer than the image's 8388608") as raised:
        restore_to_device(pool, node, str(device))
    assert "nothing was written" in str(raised.value)
    assert _read_device(device, IMAGE_SIZE - MIB) == bytes([OLD_BYTE]) * (IMAGE_SIZE - MIB)


def test_a_mounted_device_is_refused_and_named(image_pool, loop_devices, tmp_path) -> None:
    _need_tools("mkfs.ext4", "mount", "umount")
    pool, snapshot, _data = image_pool
    device = loop_devices("mounted.img", 16 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(device)], check=True, timeout=60)
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    subprocess.run(["mount", str(device), str(mount_point)], check=True, timeout=60)
    try:
        (mount_point / "precious").write_bytes(b"keep me\n")
        assert mount_points(os.stat(device).st_rdev) == [str(mount_point)]
        node = image_node(pool, snapshot, "/dev/vg0/root-snap")
        with pytest.raises(RestoreError, match=f"is mounted on {mount_point}"):
            restore_to_device(pool, node, str(device))
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=60)
    # The file system is whole: mount it again and find the file.
    subprocess.run(["mount", str(device), str(mount_point)], check=True, timeout=60)
    try:
        assert (mount_point / "precious").read_bytes() == b"keep me\n"
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=60)


def test_a_device_held_exclusively_is_refused(image_pool, loop_devices) -> None:
    """Not mounted, but in use: O_EXCL (as LVM or a mount would hold it) says EBUSY."""
    pool, snapshot, _data = image_pool
    device = loop_devices("held.img", 16 * MIB)
    holder = os.open(device, os.O_RDONLY | os.O_EXCL)
    try:
        node = image_node(pool, snapshot, "/dev/vg0/root-snap")
        with pytest.raises(RestoreError, match="is in use"):
            restore_to_device(pool, node, str(device))
    finally:
        os.close(holder)
    assert _read_device(device, 4096) == bytes([OLD_BYTE]) * 4096


def test_not_a_block_device_is_refused(image_pool, tmp_path) -> None:
    pool, snapshot, _data = image_pool
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"x" * 100)
    node = image_node(pool, snapshot, "/dev/vg0/root-snap")
    with pytest.raises(RestoreError, match="is not a block device .*--target DIR"):
        restore_to_device(pool, node, str(plain))
    assert plain.read_bytes() == b"x" * 100
    with pytest.raises(RestoreError, match="No such file"):
        restore_to_device(pool, node, str(tmp_path / "missing"))


def test_only_an_image_goes_to_a_device(image_pool) -> None:
    pool, snapshot, _data = image_pool
    with pytest.raises(UsageError, match="'/etc/motd' is a file"):
        image_node(pool, snapshot, "/etc/motd")
    with pytest.raises(UsageError, match="root is a dir"):
        image_node(pool, snapshot, "/")
    with pytest.raises(PathNotInSnapshot):
        image_node(pool, snapshot, "/dev/vg0/nothing")


def test_dry_run_checks_the_device_and_writes_nothing(image_pool, loop_devices) -> None:
    pool, snapshot, _data = image_pool
    device = loop_devices("dry.img", IMAGE_SIZE)
    node = image_node(pool, snapshot, "/dev/vg0/root-snap")
    result = restore_to_device(pool, node, str(device), dry_run=True)
    assert result.bytes_written == IMAGE_SIZE
    assert _read_device(device, IMAGE_SIZE) == bytes([OLD_BYTE]) * IMAGE_SIZE


def test_image_into_a_directory_is_a_sparse_regular_file(image_pool, tmp_path) -> None:
    pool, snapshot, data = image_pool
    target = tmp_path / "target"
    result = Restorer(pool).restore(snapshot, str(target))
    restored = target / "dev" / "vg0" / "root-snap"
    st = os.lstat(restored)
    assert stat.S_ISREG(st.st_mode)  # a file, never a device node
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_mtime_ns == MTIME
    assert restored.read_bytes() == data
    # 2 MiB + ~190 KiB + 1 MiB of zeros are holes (64 KiB granularity)
    assert st.st_blocks * 512 <= IMAGE_SIZE - 3 * MIB
    assert result.files_new == 2
    assert result.bytes_written == IMAGE_SIZE + 3
    # Restored again: recognised as unchanged by its content, not written.
    again = Restorer(pool).restore(snapshot, str(target))
    assert again.files_unchanged == 2 and again.bytes_written == 0


def test_image_path_alone_lands_under_the_target(image_pool, tmp_path) -> None:
    pool, snapshot, data = image_pool
    target = tmp_path / "one"
    Restorer(pool).restore(snapshot, str(target), "/dev/vg0/root-snap")
    assert (target / "root-snap").read_bytes() == data


@pytest.mark.parametrize("name", ["image.tar", "image.zip"])
def test_an_archive_holds_the_image_as_a_regular_file(image_pool, tmp_path, name) -> None:
    pool, snapshot, data = image_pool
    destination = tmp_path / name
    result = write_archive(pool, snapshot, "/dev", str(destination))
    assert result.files == 1 and result.bytes_written == IMAGE_SIZE
    if name.endswith(".tar"):
        with tarfile.open(destination) as archive:
            member = archive.getmember("dev/vg0/root-snap")
            assert member.isreg() and member.size == IMAGE_SIZE and member.mode == 0o660
            # Its 12 zero chunks (2 MiB, then the last 1 MiB) are holes of a sparse
            # member (GNU format 1.0), not in the archive.
            assert member.issparse()
            assert member.sparse == [(0, MIB), (3 * MIB, 4 * MIB), (IMAGE_SIZE, 0)]
            extracted = archive.extractfile(member)
            assert extracted is not None and extracted.read() == data
        assert destination.stat().st_size < IMAGE_SIZE - 3 * MIB + 64 * 1024
    else:
        with zipfile.ZipFile(destination) as archive:
            info = archive.getinfo("dev/vg0/root-snap")
            assert stat.S_ISREG(info.external_attr >> 16)
            assert archive.read(info) == data


def test_zeros_are_written_where_the_device_refuses_blkzeroout(tmp_path) -> None:
    """A descriptor that refuses the ioctl (here a regular file: ENOTTY) gets zeros
    written: the run, and every later one."""
    backing = tmp_path / "old.bin"
    backing.write_bytes(bytes([OLD_BYTE]) * (4 * MIB))
    fd = os.open(backing, os.O_WRONLY)
    try:
        zeros = _Zeroer(fd)
        zeros.add(100, MIB)  # unaligned at both ends
        zeros.add(100 + MIB, MIB)  # contiguous: one run
        zeros.flush()
        zeros.add(3 * MIB, 4096)
        zeros.flush()
    finally:
        os.close(fd)
    assert not zeros.ioctl_works and zeros.zeroed_by_device == 0
    data = backing.read_bytes()
    old = bytes([OLD_BYTE])
    assert data[:100] == old * 100
    assert data[100 : 100 + 2 * MIB] == bytes(2 * MIB)
    assert data[100 + 2 * MIB : 3 * MIB] == old * (MIB - 100)
    assert data[3 * MIB : 3 * MIB + 4096] == bytes(4096)
    assert data[3 * MIB + 4096 :] == old * (MIB - 4096)


def _damage_blob(pool_dir: Path, pool: Pool, blob: bytes) -> None:
    location = pool.index.lookup(blob)
    assert location is not None
    pack = pool_dir / pack_name(location.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[location.offset + 20] ^= 0xFF
    pack.write_bytes(bytes(raw))


def test_damage_in_an_image_is_found_by_check_and_stops_a_device_restore(
    image_pool, loop_devices, tmp_path
) -> None:
    pool, snapshot, _data = image_pool
    node = image_node(pool, snapshot, "/dev/vg0/root-snap")
    _damage_blob(tmp_path / "pool", pool, node.content[5])
    report = check(open_pool(tmp_path / "pool"), read_data=True)
    [problem] = report.problems  # the pack, whose damaged blob is the image's
    assert problem.kind == "damaged_pack" and "1 of" in problem.message
    assert problem.affected == [
        {"snapshot": snapshot.id, "client": "vmhost", "path": "/dev/vg0/root-snap"}
    ]
    device = loop_devices("target.img", IMAGE_SIZE)
    fresh = open_pool(tmp_path / "pool")
    with pytest.raises(DataCorruption, match="holds a partial image now") as raised:
        restore_to_device(fresh, image_node(fresh, snapshot, "/dev/vg0/root-snap"), str(device))
    assert raised.value.exit_code == 3


def test_gnu_tar_extracts_an_archived_image_as_a_sparse_file(image_pool, tmp_path) -> None:
    """What a host does with a restore over SSH (``tar -x``): the holes come back."""
    if shutil.which("tar") is None:
        pytest.skip("no tar")
    pool, snapshot, data = image_pool
    destination = tmp_path / "image.tar"
    write_archive(pool, snapshot, "/", str(destination))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-x", "-f", str(destination), "-C", str(out)], check=True, timeout=60)
    extracted = out / "dev" / "vg0" / "root-snap"
    assert extracted.read_bytes() == data
    assert os.stat(extracted).st_blocks * 512 <= IMAGE_SIZE - 3 * MIB
    assert not (out / "dev" / "vg0" / "GNUSparseFile.0").exists()


def _mbr_with_one_partition(size: int) -> bytes:
    """A disk of ``size`` bytes whose MBR names one Linux partition from 1 MiB to the end."""
    start, sectors = 2048, size // 512 - 2048
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", start, sectors)
    mbr = bytearray(512)
    mbr[446 : 446 + 16] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr) + bytes(size - 512)


def test_a_disk_whose_partition_is_mounted_is_refused(image_pool, tmp_path) -> None:
    _need_tools("losetup", "mkfs.ext4", "mount", "umount")
    pool, snapshot, _data = image_pool
    backing = tmp_path / "disk.img"
    backing.write_bytes(_mbr_with_one_partition(24 * MIB))
    attached = subprocess.run(
        ["losetup", "-P", "-f", "--show", str(backing)], capture_output=True, text=True, timeout=30
    )
    assert attached.returncode == 0, attached.stderr
    disk = Path(attached.stdout.strip())
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    try:
        found: list[tuple[str, int]] = []
        for _wait in range(50):  # the kernel reads the partition table as it attaches
            found = partitions(os.stat(disk).st_rdev)
            if found:
                break
            time.sleep(0.1)
        if not found:
            pytest.skip("this kernel makes no partitions on loop devices (loop max_part=0)")
        [(name, rdev)] = found
        partition = Path(f"/dev/{name}")
        if not partition.exists():  # no udev here: a node of our own
            partition = tmp_path / name
            os.mknod(partition, stat.S_IFBLK | 0o600, rdev)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(partition)], check=True, timeout=60)
        subprocess.run(["mount", str(partition), str(mount_point)], check=True, timeout=60)
        try:
            node = image_node(pool, snapshot, "/dev/vg0/root-snap")
            with pytest.raises(
                RestoreError, match=f"its partition {name} is mounted on {mount_point}"
            ):
                restore_to_device(pool, node, str(disk))
        finally:
            subprocess.run(["umount", str(mount_point)], check=True, timeout=60)
    finally:
        subprocess.run(["losetup", "-d", str(disk)], capture_output=True, timeout=30)
    assert backing.read_bytes()[446:462] == _mbr_with_one_partition(24 * MIB)[446:462]


def test_a_device_held_by_device_mapper_is_refused_and_named(image_pool, loop_devices) -> None:
    _need_tools("dmsetup")
    if "device-mapper" not in Path("/proc/misc").read_text():
        pytest.skip("the kernel has no device-mapper (not in /proc/misc)")
    pool, snapshot, _data = image_pool
    device = loop_devices("pv.img", 16 * MIB)
    name = f"costor-test-{os.getpid()}"
    table = f"0 {16 * MIB // 512} linear {device} 0"
    subprocess.run(["dmsetup", "create", name, "--table", table], check=True, timeout=60)
    try:
        assert any(name in holder for holder in holders(os.stat(device).st_rdev))
        node = image_node(pool, snapshot, "/dev/vg0/root-snap")
        with pytest.raises(RestoreError, match=rf"is in use: held by dm-\d+ \({name}\)"):
            restore_to_device(pool, node, str(device))
    finally:
        subprocess.run(["dmsetup", "remove", name], capture_output=True, timeout=60)
    assert _read_device(device, 4096) == bytes([OLD_BYTE]) * 4096


class _Warnings(Progress):
    def __init__(self) -> None:
        self.warnings: list[tuple[str, str]] = []

    def warning(self, path: str, message: str) -> None:
        self.warnings.append((path, message))


def test_an_image_never_replaces_a_device_node_in_a_directory(image_pool, tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes need root")
    pool, snapshot, _data = image_pool
    target = tmp_path / "target"
    (target / "dev" / "vg0").mkdir(parents=True)
    node_path = target / "dev" / "vg0" / "root-snap"
    os.mknod(node_path, stat.S_IFBLK | 0o600, os.makedev(7, 250))
    progress = _Warnings()
    result = Restorer(pool, progress=progress).restore(snapshot, str(target))
    assert stat.S_ISBLK(os.lstat(node_path).st_mode)  # still the node, not 8 MiB of file
    assert result.skipped == 1 and result.files_new == 1  # motd is restored
    assert progress.warnings == [
        (str(node_path), "is a device node, not replaced by the image: use --target-device DEV")
    ]


def test_an_image_is_not_written_into_a_live_systems_tree(image_pool) -> None:
    """With the target / (a system restore), an image would land in /dev: refused
    (checked with a dry run, which writes nothing)."""
    pool, snapshot, _data = image_pool
    progress = _Warnings()
    result = Restorer(pool, progress=progress, dry_run=True, list_entries=True).restore(
        snapshot, "/", "/dev/vg0/root-snap"
    )
    assert result.skipped == 1 and result.files == 0
    assert result.entries is not None and result.entries[0]["action"] == "not-restorable"
    assert "not written into a live system's tree" in progress.warnings[0][1]
