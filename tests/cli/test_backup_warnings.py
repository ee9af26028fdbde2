"""A path given to back up that is a block device (or a link to one) stores only the
device node: ``costor backup`` says so, in ``warnings`` of ``--json`` and on stderr,
with a real loop device (tests/support/loopdev.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from support.fixtures import Site
from support.inventory import write_local_inventory
from support.loopdev import loop_device  # noqa: F401  (fixture)


def device_site(tmp_path: Path, paths: list[Path]) -> Site:
    inventory = write_local_inventory(tmp_path, {"disk": paths})
    site = Site(tmp_path, inventory, tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def test_a_block_device_path_is_a_warning(tmp_path: Path, loop_device: Path) -> None:  # noqa: F811
    link = tmp_path / "disk-link"
    link.symlink_to(loop_device)
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("some content\n")
    # A device node met inside a walked directory is stored as what it is, silently.
    os.mknod(files / "node", stat.S_IFBLK | 0o600, os.lstat(loop_device).st_rdev)
    site = device_site(tmp_path, [loop_device, link, files])

    result = site.cli("backup", "disk", "--json")

    assert result.code == 0, result.stderr
    document = result.json()
    image = " (list it in the client's images to back up its contents)"
    assert document["warnings"] == [
        f"{loop_device} is a block device: its node was stored, not its contents{image}",
        f"{link} is a symbolic link to the device {loop_device}: the link was stored, "
        f"not the device's contents{image}",
    ]
    assert document["errors"] == [] and document["files_failed"] == 0
    assert document["files_new"] == 1  # a.txt: nothing of the device was read

    human = site.cli("backup", "disk")
    assert human.code == 0, human.stderr
    assert f"warning: {loop_device} is a block device: its node was stored" in human.stderr
    assert f"warning: {link} is a symbolic link to the device {loop_device}" in human.stderr
    assert "could not be read" not in human.stdout
    assert "node" not in human.stderr.replace("its node was stored", "")


def test_a_backup_without_devices_has_no_warnings(site: Site) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("backup", "alpha", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["warnings"] == []
