"""changes = "thin_delta" (issue 23): the helper asks LVM which chunks of a thin
snapshot changed since ``previous`` and reads only those. With a real thin pool on a
loop device where the kernel has device-mapper (the test makes its own volume group
and snapshots and removes them); thin_delta's output read from the real tool on
metadata made by thin_restore; and the fall back to comparing every block, with the
reason recorded, where LVM cannot say."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.fixtures import open_pool
from support.sshd import Sshd, remote_dir, sshd  # noqa: F401  (fixtures)
from test_image_ssh import content, image_node, loop, needs, scatter, site_with_images

from costor.transport import helper

MiB = 1024 * 1024
KiB = 1024

METADATA = """<superblock uuid="" time="1" transaction="2" flags="0" version="2"
 data_block_size="128" nr_data_blocks="2048">
  <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="9" data_block="9" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="5" transaction="1" creation_time="1" snap_time="1">
    <single_mapping origin_block="0" data_block="0" time="0"/>
    <single_mapping origin_block="1" data_block="10" time="1"/>
    <range_mapping origin_begin="2" data_begin="2" length="2" time="0"/>
    <single_mapping origin_block="7" data_block="11" time="1"/>
  </device>
</superblock>
"""


def test_thin_deltas_output_names_the_changed_chunks(tmp_path: Path) -> None:
    needs("thin_restore", "thin_delta")
    (tmp_path / "meta.xml").write_text(METADATA.replace("\n ", " "))
    metadata = tmp_path / "meta"
    with open(metadata, "wb") as handle:
        handle.truncate(8 * MiB)
    subprocess.run(
        ["thin_restore", "-i", str(tmp_path / "meta.xml"), "-o", str(metadata)], check=True
    )
    out = subprocess.run(
        ["thin_delta", "--snap1", "1", "--snap2", "2", str(metadata)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ranges, chunk = helper._thin_ranges(out)
    # Chunk 1 remapped, 7 only in the new one, 9 only in the old (it reads zeros now).
    assert sorted(ranges) == [(1, 1), (7, 1), (9, 1)] and chunk == 64 * KiB


def test_where_lvm_cannot_say_the_image_is_compared_block_by_block(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    size = 16 * MiB
    backing = tmp_path / "disk.img"
    backing.write_bytes(os.urandom(size))
    small = remote_dir / "etc"
    small.mkdir()
    (small / "hosts").write_text("127.0.0.1 localhost\n")
    with loop(backing) as device:
        spec = f'path = "{device}", changes = "thin_delta", previous = "{device}"'
        site = site_with_images(tmp_path, sshd, small, [spec])
        first = site.cli("backup", "img", "--json")
        assert first.code == 0, first.stderr
        node = image_node(open_pool(site.pool_path), "img", str(device))
        assert node.image is not None and node.image["method"] == "full"
        assert "is not a thin LV" in node.image["full_read"] or "lvs" in node.image["full_read"]
        changed = scatter(device, size, 0.01)
        second = site.cli("backup", "img", "--json")
        assert second.code == 0, second.stderr
        assert second.json()["bytes_transferred"] < 2 * changed + 64 * KiB
        pool = open_pool(site.pool_path)
        node = image_node(pool, "img", str(device))
        assert node.image is not None and node.image["method"] == "blocks"
        assert node.image["full_read"], node.image
        with open(device, "rb") as handle:
            assert content(pool, node) == handle.read()


def device_mapper() -> bool:
    """Whether the kernel has device-mapper (LVM needs it; a container's may not)."""
    try:
        return "device-mapper" in Path("/proc/misc").read_text()
    except OSError:
        return False


def lvm(*args: str) -> str:
    result = subprocess.run(["lvm", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


@contextmanager
def thin_volume_group(tmp_path: Path) -> Iterator[str]:
    """A volume group of its own on a loop device, with a thin pool ``pool`` (64 KiB
    chunks) and a 32 MiB thin volume ``vol``; removed afterwards."""
    needs("lvm", "thin_delta", "dmsetup")
    if not device_mapper():
        pytest.skip("the kernel has no device-mapper (not in /proc/misc): no LVM here")
    backing = tmp_path / "pv.img"
    with open(backing, "wb") as handle:
        handle.truncate(192 * MiB)
    name = f"costortest{uuid.uuid4().hex[:8]}"
    with loop(backing) as device:
        try:
            lvm("pvcreate", "-q", str(device))
            lvm("vgcreate", "-q", name, str(device))
            lvm(
                "lvcreate",
                "-q",
                "--type",
                "thin-pool",
                "-L",
                "96M",
                "-c",
                "64k",
                "-n",
                "pool",
                name,
            )
            lvm("lvcreate", "-q", "-V", "32M", "-T", f"{name}/pool", "-n", "vol")
            yield name
        finally:
            subprocess.run(["vgremove", "-f", "-q", name], capture_output=True, timeout=120)
            subprocess.run(["pvremove", "-f", "-q", str(device)], capture_output=True, timeout=60)


def test_thin_delta_reads_only_the_changed_chunks_and_falls_back_on_another_previous(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    with thin_volume_group(tmp_path) as vg:
        volume = Path(f"/dev/{vg}/vol")
        with open(volume, "r+b") as handle:
            handle.write(os.urandom(32 * MiB))
            os.fsync(handle.fileno())
        lvm("lvcreate", "-q", "-kn", "-s", "-n", "snap", f"{vg}/vol")
        small = remote_dir / "etc"
        small.mkdir()
        (small / "hosts").write_text("127.0.0.1 localhost\n")
        spec = f'path = "/dev/{vg}/snap", changes = "thin_delta", previous = "/dev/{vg}/prev"'
        site = site_with_images(tmp_path, sshd, small, [spec])
        first = site.cli("backup", "img", "--json")
        assert first.code == 0, first.stderr
        node = image_node(open_pool(site.pool_path), "img", f"/dev/{vg}/snap")
        assert node.image is not None and node.image["method"] == "full"
        assert node.image.get("source_id"), node.image
        # The next round: what was read becomes "prev", a new snapshot is read.
        changed = scatter(volume, 32 * MiB, 0.005)
        lvm("lvrename", "-q", vg, "snap", "prev")
        lvm("lvcreate", "-q", "-kn", "-s", "-n", "snap", f"{vg}/vol")
        second = site.cli("backup", "img", "--json")
        assert second.code == 0, second.stderr
        pool = open_pool(site.pool_path)
        node = image_node(pool, "img", f"/dev/{vg}/snap")
        assert node.image is not None and node.image["method"] == "thin_delta", node.image
        # Only the changed 64 KiB chunks were read (at most one per 4 KiB write).
        assert node.image["bytes_read"] <= changed // (4 * KiB) * 64 * KiB < 32 * MiB // 4
        assert second.json()["bytes_transferred"] < 2 * changed + 64 * KiB
        with open(f"/dev/{vg}/snap", "rb") as handle:
            assert content(pool, node) == handle.read()
        # A "prev" that is not what the last backup read: every block compared.
        lvm("lvremove", "-q", "-f", f"{vg}/prev")
        lvm("lvrename", "-q", vg, "snap", "old")
        lvm("lvcreate", "-q", "-kn", "-s", "-n", "prev", f"{vg}/vol")
        lvm("lvcreate", "-q", "-kn", "-s", "-n", "snap", f"{vg}/vol")
        third = site.cli("backup", "img", "--json")
        assert third.code == 0, third.stderr
        node = image_node(open_pool(site.pool_path), "img", f"/dev/{vg}/snap")
        assert node.image is not None and node.image["method"] == "blocks"
        assert "not what the parent snapshot read" in node.image["full_read"], node.image
