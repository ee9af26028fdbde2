"""An image's life through the CLI (issue 23): `costor backup` of a real loop device
(a client with ``images = [...]``), then ``ls``, ``diff``, ``restore --target-device``
onto other loop devices (one too small, one mounted with ext4: both refused, nothing
written), ``restore --target`` as a sparse file, ``check --read-data`` and
``forget``/``prune``.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import client_table, local_tables, ssh_client, write_tables
from support.sshd import Sshd, remote_dir, sshd  # noqa: F401  (fixtures)

from costor.ops.backup.restore_to_host import restore_to_host
from costor.ops.context import Context

MIB = 1024 * 1024
BLOCK = 4096
IMAGE_SIZE = 16 * MIB
OLD_BYTE = 0x5A


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = f"needs root and {', '.join(tools)}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Callable[[str, bytes], Path]]:
    """loop(name, content) -> /dev/loopN over tmp_path/name; all detached afterwards."""
    _need("losetup")
    attached: list[Path] = []

    def attach(name: str, content: bytes) -> Path:
        backing = tmp_path / name
        backing.write_bytes(content)
        done = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        attached.append(Path(done.stdout.strip()))
        return attached[-1]

    try:
        yield attach
    finally:
        for device in attached:
            subprocess.run(["losetup", "-d", str(device)], capture_output=True, timeout=30)


def disk_bytes() -> bytes:
    data = bytearray(random.Random(2323).randbytes(IMAGE_SIZE))
    data[4 * MIB : 8 * MIB] = bytes(4 * MIB)  # an unused stretch of the disk
    return bytes(data)


@pytest.fixture
def imaged(tmp_path: Path, loop: Callable[[str, bytes], Path]) -> tuple[Site, Path]:
    """A site whose client "vm" backs up one loop device as an image; backed up once."""
    source = loop("source.img", disk_bytes())
    tables = local_tables({})
    tables.append('[policies.one]\nschedule = "0 2 * * *"\nretention = { last = 1 }\n')
    tables.append(client_table("vm", [], f'images = ["{source}"]', 'policy = "one"'))
    inventory = write_tables(tmp_path, *tables)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    backed_up = site.cli("backup", "vm", "--json")
    assert backed_up.code == 0, backed_up.stderr
    assert backed_up.json()["images"] == 1
    return site, source


def device_bytes(device: Path, length: int) -> bytes:
    with open(device, "rb") as handle:
        return handle.read(length)


def test_ls_shows_the_image_with_its_letter_and_facts(imaged: tuple[Site, Path]) -> None:
    site, source = imaged
    listed = site.cli("ls", "-l", "vm:latest", str(source))
    assert listed.code == 0, listed.stderr
    line = listed.stdout.strip()
    assert line.startswith("i") and line.endswith(str(source))
    assert f" {IMAGE_SIZE} " in line
    document = site.cli("ls", "vm:latest", str(source), "--json").json()
    assert document[0]["type"] == "image"
    assert document[0]["image"]["method"] == "full"
    assert document[0]["image"]["source"] == "blockdev"


def test_restore_to_a_device_is_byte_identical(
    imaged: tuple[Site, Path], loop: Callable[[str, bytes], Path]
) -> None:
    site, source = imaged
    target = loop("target.img", bytes([OLD_BYTE]) * (IMAGE_SIZE + MIB))
    dry = site.cli("restore", "vm:latest", str(source), "--target-device", str(target), "--dry-run")
    assert dry.code == 0, dry.stderr
    assert (
        dry.stdout.startswith("dry run: would write image") and "nothing was written" in dry.stdout
    )
    assert device_bytes(target, MIB) == bytes([OLD_BYTE]) * MIB
    result = site.cli("restore", "vm:latest", str(source), "--target-device", str(target))
    assert result.code == 0, result.stderr
    assert f"onto {target}" in result.stdout
    written = device_bytes(target, IMAGE_SIZE + MIB)
    assert written[:IMAGE_SIZE] == device_bytes(source, IMAGE_SIZE)  # zeros written too
    assert written[IMAGE_SIZE:] == bytes([OLD_BYTE]) * MIB  # past the image: untouched
    document = site.cli(
        "restore", "vm:latest", str(source), "--target-device", str(target), "--json"
    ).json()
    assert document["device"] == str(target)
    assert document["device_size"] == IMAGE_SIZE + MIB
    assert document["bytes_written"] == IMAGE_SIZE


def test_refusals_write_nothing_and_exit_1(
    imaged: tuple[Site, Path], loop: Callable[[str, bytes], Path], tmp_path: Path
) -> None:
    site, source = imaged
    small = loop("small.img", bytes([OLD_BYTE]) * (IMAGE_SIZE - MIB))
    refused = site.run_process("restore", "vm:latest", str(source), "--target-device", str(small))
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert "fewer than the image's" in refused.stderr
    assert "nothing was written" in refused.stderr
    assert device_bytes(small, IMAGE_SIZE - MIB) == bytes([OLD_BYTE]) * (IMAGE_SIZE - MIB)

    plain = tmp_path / "plain.img"
    plain.write_bytes(b"")
    refused = site.cli("restore", "vm:latest", str(source), "--target-device", str(plain))
    assert refused.code == 1 and "is not a block device" in refused.stderr
    assert plain.read_bytes() == b""

    not_an_image = site.cli("restore", "vm:latest", "/", "--target-device", str(small))
    assert not_an_image.code == 1
    assert "needs PATH to name an image" in not_an_image.stderr

    mixed = site.cli(
        "restore", "vm:latest", str(source), "--target-device", str(small), "--include", "x"
    )
    assert mixed.code == 1 and "--target-device writes one image" in mixed.stderr


def test_a_mounted_device_is_refused(
    imaged: tuple[Site, Path], loop: Callable[[str, bytes], Path], tmp_path: Path
) -> None:
    _need("mkfs.ext4", "mount", "umount")
    site, source = imaged
    target = loop("mounted.img", bytes(IMAGE_SIZE + MIB))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(target)], check=True, timeout=60)
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    subprocess.run(["mount", str(target), str(mount_point)], check=True, timeout=60)
    try:
        (mount_point / "data").write_bytes(b"in use\n")
        refused = site.cli("restore", "vm:latest", str(source), "--target-device", str(target))
        assert refused.code == 1
        assert f"is mounted on {mount_point}" in refused.stderr
        assert (mount_point / "data").read_bytes() == b"in use\n"
    finally:
        subprocess.run(["umount", str(mount_point)], check=True, timeout=60)


def test_restore_into_a_directory_gives_a_sparse_file(
    imaged: tuple[Site, Path], tmp_path: Path
) -> None:
    site, source = imaged
    target = tmp_path / "restored"
    result = site.cli("restore", "vm:latest", "--target", str(target), "--json")
    assert result.code == 0, result.stderr
    assert result.json()["bytes_written"] == IMAGE_SIZE
    restored = target / str(source).lstrip("/")
    st = os.lstat(restored)
    assert stat.S_ISREG(st.st_mode)  # a regular file, not a device node
    assert restored.read_bytes() == device_bytes(source, IMAGE_SIZE)
    assert st.st_blocks * 512 <= IMAGE_SIZE - 4 * MIB  # the zero stretch is a hole


def test_diff_check_forget_and_prune_treat_the_image_as_data(
    imaged: tuple[Site, Path],
) -> None:
    site, source = imaged
    with open(source, "r+b", buffering=0) as disk:  # three 4 KiB writes in 1 MiB
        for offset in (100 * BLOCK, 130 * BLOCK, 200 * BLOCK):
            disk.seek(offset)
            disk.write(random.Random(offset).randbytes(BLOCK))
    second = site.cli("backup", "vm", "--json")
    assert second.code == 0, second.stderr
    snapshots = site.cli("snapshots", "--json").json()
    first_id, second_id = (s["id"] for s in sorted(snapshots, key=lambda s: s["time"]))
    diff = site.cli("diff", first_id, second_id, "--json").json()
    [change] = diff["changes"]
    assert change["change"] == "modified" and change["type"] == "image"
    assert change["path"] == str(source)
    assert 0 < change["changed_bytes"] < IMAGE_SIZE // 2
    shown = site.cli("diff", first_id, second_id)
    assert "changed)" in shown.stdout and str(source) in shown.stdout

    checked = site.cli("check", "--read-data")
    assert checked.code == 0, checked.stdout + checked.stderr

    forgotten = site.cli("forget", "--client", "vm", "--json")
    assert forgotten.code == 0, forgotten.stderr
    assert [s["id"] for s in site.cli("snapshots", "--json").json()] == [second_id]
    pruned = site.cli("prune", "--json")
    assert pruned.code == 0, pruned.stderr
    # The old version of the changed chunks is no snapshot's any more: marked unused.
    assert pruned.json()["pools"][0]["bytes_unused"] >= change["changed_bytes"] // 2
    checked = site.cli("check", "--read-data")
    assert checked.code == 0, checked.stdout + checked.stderr
    target = site.root / "after-prune"
    result = site.cli("restore", second_id, str(source), "--target", str(target))
    assert result.code == 0, result.stderr
    assert (target / source.name).read_bytes() == device_bytes(source, IMAGE_SIZE)


def test_restore_onto_a_host_over_ssh_writes_the_image_as_a_file(
    tmp_path: Path,
    loop: Callable[[str, bytes], Path],
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
) -> None:
    """A restore job onto an SSH client (``restore_to_host``): the host receives the
    engine's tar, where an image is a regular file member (sparse: its zero chunks are
    holes, which the host's GNU tar makes again), so a file at its path."""
    rng = random.Random(40)
    size = 40 * MIB  # 24 MiB of zeros in the middle: the chunker cuts 8 MiB zero chunks
    source = loop("source.img", rng.randbytes(8 * MIB) + bytes(24 * MIB) + rng.randbytes(8 * MIB))
    (remote_dir / "nothing").mkdir()
    tables = [
        *local_tables({}),
        client_table("vm", [], f'images = ["{source}"]'),
        ssh_client("host", sshd, [remote_dir / "nothing"]),
    ]
    site = Site(tmp_path, write_tables(tmp_path, *tables), tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "vm").code == 0
    target = remote_dir / "restored"
    outcome = restore_to_host(
        Context(site.inventory), "vm:latest", client="host", target=str(target)
    )
    assert outcome.bytes_written == size
    restored = target / str(source).lstrip("/")
    assert stat.S_ISREG(os.lstat(restored).st_mode)
    assert restored.read_bytes() == device_bytes(source, size)
    # Two 8 MiB zero chunks are a hole (less 512 bytes at its start: see SparseLayout).
    assert os.lstat(restored).st_blocks * 512 <= size - 15 * MIB
