"""``costor backup`` of a local client with ``images`` (issue 23): a real loop device and a
sparse image file beside a backed-up directory, through the CLI on a real inventory; the
snapshot read back from the pool; the errors and exit codes of images that cannot be
read; ``validate`` and ``plan`` on images."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures import Site, open_pool
from support.inventory import client_table, local_pool, rewrite_tables, site_table, toml_list
from support.inventory import write_tables as write_inventory_tables

from costor.errors import BACKUP_INCOMPLETE_EXIT
from costor.store.pool import Pool
from costor.store.tree import DIR, FILE, IMAGE, Node

MIB = 1024 * 1024


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 16 MiB loop device over random bytes, and its backing file (detached after)."""
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("loop devices need losetup and root (the test script provides both)")
        pytest.skip("loop devices need losetup and root")
    backing = tmp_path / "disk.img"
    backing.write_bytes(random.Random(7).randbytes(16 * MIB))
    done = subprocess.run(
        [losetup, "-f", "--show", str(backing)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    device = Path(done.stdout.strip())
    try:
        yield device, backing
    finally:
        subprocess.run([losetup, "-d", str(device)], capture_output=True, timeout=30)


def tables(paths: list[Path], images: list[str]) -> list[str]:
    client = client_table("vm", paths, f"images = {toml_list(images)}" if images else "")
    return [site_table(), local_pool(), client]


def image_site(tmp_path: Path, paths: list[Path], images: list[str]) -> Site:
    inventory = write_inventory_tables(tmp_path, *tables(paths, images))
    site = Site(tmp_path, inventory, tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def node_at(pool: Pool, tree_hex: str, path: str) -> Node:
    tree = bytes.fromhex(tree_hex)
    parts = [p for p in os.fsencode(path).split(b"/") if p]
    for index, part in enumerate(parts):
        nodes = {node.name: node for node in pool.load_tree(tree)}
        node = nodes[part]
        if index == len(parts) - 1:
            return node
        assert node.type == DIR and node.subtree is not None
        tree = node.subtree
    raise AssertionError(path)


def sparse_image(path: Path) -> bytes:
    """64 MiB, 2 MiB of it data: what the image holds."""
    data = random.Random(9).randbytes(MIB)
    with open(path, "wb") as handle:
        handle.truncate(64 * MIB)
        for where in (5 * MIB, 40 * MIB + 777):
            handle.seek(where)
            handle.write(data)
    return path.read_bytes()


def test_backup_of_a_device_and_a_sparse_file_beside_files(
    tmp_path: Path, loop: tuple[Path, Path]
) -> None:
    device, backing = loop
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("some content\n")
    vm = files / "vm.img"  # inside a backed-up directory: stored once, as the image
    content = sparse_image(vm)
    site = image_site(tmp_path, [files], [str(device), str(vm)])

    result = site.cli("backup", "vm", "--json")

    assert result.code == 0, result.stderr
    document = result.json()
    assert document["warnings"] == [] and document["errors"] == []
    assert document["images"] == 2
    assert document["files_new"] == 1  # a.txt
    assert document["bytes_processed"] == 16 * MIB + 64 * MIB + len("some content\n")
    assert document["bytes_read"] < 16 * MIB + 4 * MIB  # the holes were not read
    assert document["bytes_added"] < 16 * MIB + 4 * MIB  # the zeros stored once
    assert sorted(document["paths"]) == sorted([str(files), str(device), str(vm)])
    pool = open_pool(site.pool_path)
    snapshot = pool.load_snapshot(document["snapshot_id"])
    for path, source, expected in (
        (str(device), "blockdev", backing.read_bytes()),
        (str(vm), "file", content),
    ):
        node = node_at(pool, snapshot.tree, path)
        assert node.type == IMAGE
        assert node.size == len(expected)
        assert node.image == {"method": "full", "source": source}
        assert b"".join(pool.read_blob(blob) for blob in node.content) == expected
    assert node_at(pool, snapshot.tree, str(files / "a.txt")).type == FILE

    human = site.cli("backup", "vm")
    assert human.code == 0, human.stderr
    assert "0 failed; images: 2" in human.stdout
    assert "warning" not in human.stderr


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_image_that_cannot_be_read_makes_the_backup_incomplete(
    tmp_path: Path, kind: str
) -> None:
    """Like a file that cannot be read (restic's exit 3, Borg's warning): the rest is
    stored, the error names the image, the exit code is the incomplete backup's."""
    image = tmp_path / "vm.img"
    if kind == "directory":
        image.mkdir()
    good = tmp_path / "good.img"
    good.write_bytes(b"good" * 1000)
    site = image_site(tmp_path, [], [str(image), str(good)])

    result = site.cli("backup", "vm", "--json")

    assert result.code == BACKUP_INCOMPLETE_EXIT, result.stderr
    document = result.json()
    message = {
        "missing": "image cannot be read: No such file or directory",
        "directory": "image is a directory, not a block device or a file",
    }[kind]
    assert document["errors"] == [{"path": str(image), "error": message}]
    assert document["complete"] is False and document["images"] == 1

    human = site.cli("backup", "vm")
    assert human.code == BACKUP_INCOMPLETE_EXIT
    assert f"{image}" in human.stderr and message in human.stderr
    assert "1 item(s) could not be read" in human.stdout


def test_validate_names_a_duplicated_image_and_plan_shows_a_change_of_images(
    tmp_path: Path,
) -> None:
    image = tmp_path / "a.img"
    image.write_bytes(b"a" * 1000)
    site = image_site(tmp_path, [], [str(image)])
    assert site.cli("plan").code == 0

    # The same text twice is one entry (arrays compose without repeats, as with paths);
    # the same image spelt twice is an error.
    rewrite_tables(site.inventory, *tables([tmp_path], [str(image), str(image) + "/"]))
    invalid = site.cli("validate")
    assert invalid.code == 1, invalid.stdout + invalid.stderr  # an invalid inventory
    text = invalid.stdout + invalid.stderr
    lines = site.inventory.read_text().splitlines()  # [costor] differs on PostgreSQL
    line = next(n for n, row in enumerate(lines, 1) if row.startswith("images ="))
    assert f"inventory.toml:{line}:" in text and "clients.vm.images[1]" in text
    assert f"image '{image}' is listed twice (also images[0])" in text

    other = tmp_path / "b.img"
    rewrite_tables(site.inventory, *tables([], [str(image), str(other)]))
    planned = site.cli("plan")
    assert planned.code == 0, planned.stderr
    assert "client.vm" in planned.stdout and "images" in planned.stdout


def test_hooks_of_a_local_client_make_the_image_and_drop_it(tmp_path: Path) -> None:
    """As a snapshot profile does (costor/profiles/lvm-snapshot.toml): the before hook
    makes what the image is read from, the after hook drops it, here on this machine."""
    snap = tmp_path / "snap.img"
    inventory = write_inventory_tables(
        tmp_path,
        site_table(),
        local_pool(),
        client_table(
            "vm",
            [],
            f"images = {toml_list([snap])}",
            f"hooks.before = [\"head -c 3000000 /dev/urandom > '{snap}'\"]",
            f'hooks.after = ["rm \'{snap}\'", "echo dropped >&2; exit 3"]',
        ),
    )
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0

    result = site.cli("backup", "vm", "--json")

    assert result.code == 0, result.stderr  # a failed after hook keeps the snapshot
    document = result.json()
    assert document["images"] == 1 and document["bytes_read"] == 3_000_000
    assert [(h["phase"], h["rc"]) for h in document["hooks"]] == [
        ("before", 0),
        ("after", 0),
        ("after", 3),
    ]
    assert document["errors"] == [
        {"path": "", "error": "after hook `echo dropped >&2; exit 3` exited with 3: dropped"}
    ]
    assert not snap.exists()


def test_a_failing_before_hook_stops_a_local_backup(tmp_path: Path) -> None:
    marker = tmp_path / "after-ran"
    inventory = write_inventory_tables(
        tmp_path,
        site_table(),
        local_pool(),
        client_table(
            "vm",
            [],
            f"images = {toml_list([tmp_path / 'snap.img'])}",
            "hooks.before = [\"echo 'no space in the volume group' >&2; exit 5\"]",
            f"hooks.after = [\"touch '{marker}'\"]",
        ),
    )
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0

    result = site.cli("backup", "vm")

    assert result.code == 1
    assert "before hook `echo 'no space in the volume group' >&2; exit 5` exited with 5" in (
        result.stderr
    )
    assert "no space in the volume group" in result.stderr
    assert marker.exists()  # the after hooks ran
    assert site.cli("snapshots", "--json").json() == []


def test_a_device_backed_up_here_restores_onto_another_byte_identical(
    tmp_path: Path, loop: tuple[Path, Path]
) -> None:
    """Backup through the local transport, then ``costor restore --target-device`` onto a
    second loop device, and the sparse image into a directory."""
    device, backing = loop
    target_file = tmp_path / "target.img"
    target_file.write_bytes(b"\xa5" * 16 * MIB)
    target = Path(
        subprocess.run(
            ["losetup", "-f", "--show", str(target_file)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    )
    try:
        vm = tmp_path / "vm.img"
        content = sparse_image(vm)
        site = image_site(tmp_path, [], [str(device), str(vm)])
        assert site.cli("backup", "vm").code == 0

        onto = site.cli("restore", "vm:latest", str(device), "--target-device", str(target))
        assert onto.code == 0, onto.stderr
        with open(target, "rb") as handle:
            assert handle.read() == backing.read_bytes()

        into = site.cli("restore", "vm:latest", str(vm), "--target", str(tmp_path / "out"))
        assert into.code == 0, into.stderr
        assert (tmp_path / "out" / "vm.img").read_bytes() == content  # PATH lands in DIR
    finally:
        subprocess.run(["losetup", "-d", str(target)], capture_output=True, timeout=30)
