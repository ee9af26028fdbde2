"""The shipped consistency profiles (costor/profiles: lvm-snapshot, lvm-thin-snapshot,
zfs-snapshot, btrfs-snapshot, fsfreeze), for real: their hooks run through a backup
pulled over the test sshd (and, for some, read by this machine: transport "local") on
real loop devices, filesystems and volume groups made by the test and removed in
``finally`` blocks.

What is asserted: the snapshot exists while the backup reads (the backed-up content is
the origin's when the before hook ran, not what was written after), it is gone
afterwards, a hook that cannot make it stops the backup (exit 1, no snapshot stored,
nothing left behind), and the after hook undoes the before hook after a failed backup
too. Where the kernel lacks what a profile needs (device-mapper for LVM, ZFS), the test
says so in its skip reason; ZFS is only checked to fail closed when ``zfs`` is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.fixtures import CliResult, Site
from support.inventory import (
    client_table,
    local_pool,
    site_table,
    ssh_client,
    toml_list,
    write_tables,
)
from support.sshd import Sshd, sshd  # noqa: F401  (fixture)

IN_CI = os.environ.get("CI") == "true"
LVM_ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")


def need_tool(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing and not IN_CI:
        pytest.skip(f"not installed here: {', '.join(missing)}")
    assert not missing, f"scripts/test.sh installs {', '.join(missing)}"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=check, env=LVM_ENV
    )


def toml_table(values: dict[str, str]) -> str:
    return "{ " + ", ".join(f'{key} = "{value}"' for key, value in values.items()) + " }"


def profile_site(
    root: Path,
    sshd: Sshd | None,  # noqa: F811
    profile: str,
    env: dict[str, str],
    paths: list[str],
    before: tuple[str, ...] = (),
    images: tuple[str, ...] = (),
) -> Site:
    """A site whose client "vm" is pulled over sshd as root (``sshd`` None: read by
    this machine, transport "local") with ``profile``, its parameters ``env`` and its
    own ``before`` hooks (run after the profile's)."""
    root.mkdir(parents=True, exist_ok=True)
    extra = [f"hooks.env = {toml_table(env)}", "hooks.timeout_s = 60"]
    if before:
        extra.append(f"hooks.before = {toml_list(before)}")
    if images:  # a path, or a table written as TOML ("{ path = …, changes = … }")
        written = [i if i.startswith("{") else toml_list([i])[1:-1] for i in images]
        extra.append(f"images = [{', '.join(written)}]")
    write_tables(
        root,
        site_table(),
        local_pool(pack_size_mib=None),
        ssh_client("vm", sshd, paths, *extra, profiles=[profile])
        if sshd is not None
        else client_table("vm", paths, *extra, profiles=[profile]),
    )
    site = Site(root, root / "inventory.toml", root / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def failed_closed(site: Site, result: CliResult, says: str) -> None:
    """The backup failed on a before hook and stored nothing."""
    assert result.code == 1, result.stderr
    assert "before hook" in result.stderr and says in result.stderr, result.stderr
    assert site.cli("snapshots", "--json").json() == []


@contextmanager
def loop_file(directory: Path, size: str) -> Iterator[str]:
    """A loop device over a new sparse file of ``size``, detached afterwards."""
    if shutil.which("losetup") is None or os.geteuid() != 0:
        pytest.skip("loop devices need losetup and root")
    image = directory / f"disk-{uuid.uuid4().hex[:8]}.img"
    run("truncate", "-s", size, str(image))
    device = run("losetup", "-f", "--show", str(image)).stdout.strip()
    try:
        yield device
    finally:
        run("losetup", "-d", device, check=False)
        image.unlink(missing_ok=True)


@contextmanager
def mounted(device: str, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run("mount", device, str(where))
    try:
        yield where
    finally:
        run("fsfreeze", "-u", str(where), check=False)  # never leave it frozen
        run("umount", "-l", str(where), check=False)


def restored_text(site: Site, target: Path, path: str) -> str:
    result = site.cli("restore", "vm:latest", "--target", str(target))
    assert result.code == 0, result.stderr
    return (target / path.lstrip("/")).read_text()


# --- every profile: a missing parameter fails closed ------------------------------------

REQUIRED = {
    "lvm-snapshot": "COSTOR_LVM_LV",
    "lvm-thin-snapshot": "COSTOR_LVM_LV",
    "zfs-snapshot": "COSTOR_ZFS_DATASET",
    "btrfs-snapshot": "COSTOR_BTRFS_SUBVOLUME",
    "fsfreeze": "COSTOR_FSFREEZE_MOUNT",
}


@pytest.mark.parametrize("transport", ["ssh", "local"])
@pytest.mark.parametrize("profile", sorted(REQUIRED))
def test_a_profile_without_its_parameter_fails_closed(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
    profile: str,
    transport: str,
) -> None:
    """Nothing is read when the client did not say what to snapshot: the first before
    hook names the missing hooks.env key, and the after hooks (which ran) fail nothing."""
    host = sshd if transport == "ssh" else None
    site = profile_site(tmp_path, host, profile, {"UNRELATED": "1"}, ["/etc/hostname"])
    result = site.cli("backup", "vm", "--json")
    failed_closed(site, result, f"set hooks.env.{REQUIRED[profile]}")


@pytest.mark.parametrize("user, transfer", [("root", "helper"), ("nopython", "sftp")])
def test_hooks_env_reaches_every_hook(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
    user: str,
    transfer: str,
) -> None:
    """The profiles' parameters: hooks.env is each hook's environment, through the
    helper and through the SFTP fallback (a host without python3), quoting kept."""
    value = "a b'c\"d $HOME"
    seen = Path(tempfile.mkdtemp(prefix="costor-env-"))  # the remote user writes here
    seen.chmod(0o777)
    before, after = (f'printf %s "$COSTOR_PROBE" > {seen / phase}' for phase in ("b", "a"))
    env = f"env = {{ COSTOR_PROBE = {toml_list([value])[1:-1]} }}"
    write_tables(
        tmp_path,
        site_table(),
        local_pool(pack_size_mib=None),
        ssh_client(
            "vm",
            sshd,
            ["/etc/hostname"],
            f"hooks = {{ before = {toml_list([before])}, after = {toml_list([after])}, {env} }}",
            user=user,
        ),
    )
    site = Site(tmp_path, tmp_path / "inventory.toml", tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("backup", "vm", "--json")
    assert result.code == 0, result.stderr
    done = result.json()
    assert done["transfer"] == transfer
    assert [(h["phase"], h["rc"]) for h in done["hooks"]] == [("before", 0), ("after", 0)]
    try:
        assert (seen / "b").read_text() == value and (seen / "a").read_text() == value
    finally:
        shutil.rmtree(seen)


# --- fsfreeze ----------------------------------------------------------------------------

# Run after the profile's hooks: fails unless the filesystem is frozen (freezing a
# frozen filesystem is refused with EBUSY; one that was not frozen is thawed again).
FROZEN_PROBE = 'if fsfreeze -f "$COSTOR_FSFREEZE_MOUNT"; then fsfreeze -u "$COSTOR_FSFREEZE_MOUNT"; echo not frozen >&2; exit 1; fi'


def is_frozen(mount: Path) -> bool:
    if run("fsfreeze", "-f", str(mount), check=False).returncode == 0:
        run("fsfreeze", "-u", str(mount))
        return False
    return True


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    need_tool("mkfs.ext4", "fsfreeze", "mountpoint")
    with loop_file(tmp_path, "16M") as device:
        run("mkfs.ext4", "-q", "-F", device)
        with mounted(device, tmp_path / "mnt") as mount:
            yield device, mount


@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_fsfreeze_freezes_during_the_read_and_thaws_after(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
    ext4_mount: tuple[str, Path],
    transport: str,
) -> None:
    """The device under the mount is read as an image while the filesystem is frozen:
    what was written just before (still in the page cache, not on the device) is in
    the image, because the freeze flushed it."""
    need_tool("debugfs")
    device, mount = ext4_mount
    (mount / "data").write_text("written before the backup\n")  # not synced
    env = {"COSTOR_FSFREEZE_MOUNT": str(mount)}
    host = sshd if transport == "ssh" else None
    site = profile_site(
        tmp_path, host, "fsfreeze", env, ["/etc/hostname"], (FROZEN_PROBE,), (device,)
    )
    result = site.cli("backup", "vm", "--json")
    assert result.code == 0, result.stderr
    hooks = result.json()["hooks"]
    assert [h["phase"] for h in hooks] == ["before"] * 4 + ["after"]
    assert all(h["rc"] == 0 for h in hooks)
    assert not is_frozen(mount)
    (mount / "after").write_text("writable again\n")
    assert not list(Path("/run").glob("costor-fsfreeze-*"))  # the watchdog is gone
    target = tmp_path / "r"
    restored = site.cli("restore", "vm:latest", device, "--target", str(target))
    assert restored.code == 0, restored.stderr
    (image,) = [path for path in target.rglob(Path(device).name) if path.is_file()]
    data = run("debugfs", "-R", "cat /data", str(image)).stdout
    assert data == "written before the backup\n"


def test_fsfreeze_thaws_after_a_failed_backup(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
    ext4_mount: tuple[str, Path],
) -> None:
    _, mount = ext4_mount
    env = {"COSTOR_FSFREEZE_MOUNT": str(mount)}
    failing = (FROZEN_PROBE, "echo the dump failed >&2; exit 7")
    site = profile_site(tmp_path, sshd, "fsfreeze", env, ["/etc/hostname"], failing)
    failed_closed(site, site.cli("backup", "vm"), "the dump failed")
    assert not is_frozen(mount)


def test_fsfreeze_refuses_what_is_not_a_mount_point(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    need_tool("fsfreeze", "mountpoint")
    env = {"COSTOR_FSFREEZE_MOUNT": str(tmp_path)}
    site = profile_site(tmp_path, sshd, "fsfreeze", env, ["/etc/hostname"])
    failed_closed(site, site.cli("backup", "vm"), "mountpoint -q")
    root = profile_site(
        tmp_path / "root", sshd, "fsfreeze", {"COSTOR_FSFREEZE_MOUNT": "/"}, ["/etc/hostname"]
    )
    failed_closed(root, root.cli("backup", "vm"), "refusing to freeze /")


def test_fsfreeze_watchdog_thaws_and_the_backup_says_so(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
    ext4_mount: tuple[str, Path],
) -> None:
    """A helper that outlives COSTOR_FSFREEZE_TIMEOUT_S finds the filesystem thawed by
    the watchdog: the after hook fails, and the backup's report says so."""
    _, mount = ext4_mount
    env = {"COSTOR_FSFREEZE_MOUNT": str(mount), "COSTOR_FSFREEZE_TIMEOUT_S": "1"}
    site = profile_site(tmp_path, sshd, "fsfreeze", env, ["/etc/hostname"], ("sleep 3",))
    result = site.cli("backup", "vm")
    assert "after hook" in result.stderr and "thawed by the timeout" in result.stderr
    assert not is_frozen(mount)


# --- btrfs -------------------------------------------------------------------------------


def test_btrfs_snapshot_is_read_and_deleted(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    need_tool("mkfs.btrfs", "btrfs")
    if "btrfs" not in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has no btrfs")
    with loop_file(tmp_path, "160M") as device:
        run("mkfs.btrfs", "-q", "-f", device)
        with mounted(device, tmp_path / "mnt") as mount:
            origin = mount / "data"
            run("btrfs", "subvolume", "create", str(origin))
            snapshot = origin / ".costor-snapshot"
            (origin / "f").write_text("v0\n")
            # What a backup killed outright leaves: the next one replaces it.
            run("btrfs", "subvolume", "snapshot", "-r", str(origin), str(snapshot))
            (origin / "f").write_text("v1\n")
            env = {"COSTOR_BTRFS_SUBVOLUME": str(origin)}
            after_snapshot = f"echo v2 > {origin / 'f'}"  # the client's own hook, after
            site = profile_site(
                tmp_path, sshd, "btrfs-snapshot", env, [str(snapshot)], (after_snapshot,)
            )
            result = site.cli("backup", "vm", "--json")
            assert result.code == 0, result.stderr
            assert not snapshot.exists()
            assert (origin / "f").read_text() == "v2\n"
            restored = restored_text(site, tmp_path / "r", str(snapshot / "f"))
            assert restored == "v1\n"  # the origin when the snapshot was taken

            # Not a subvolume: no snapshot, no backup, and a plain directory of that
            # name is not deleted by the after hook.
            plain = mount / "plain"
            (plain / ".costor-snapshot").mkdir(parents=True)
            env = {"COSTOR_BTRFS_SUBVOLUME": str(plain)}
            bad = profile_site(tmp_path / "bad", sshd, "btrfs-snapshot", env, [str(plain)])
            failed_closed(bad, bad.cli("backup", "vm"), "btrfs subvolume snapshot")
            assert (plain / ".costor-snapshot").is_dir()


# --- zfs ---------------------------------------------------------------------------------


def test_zfs_snapshot_fails_closed_without_zfs(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    if shutil.which("zfs") is not None:
        pytest.skip("zfs is installed: this test is about a host without it")
    env = {"COSTOR_ZFS_DATASET": "tank/vm1"}
    site = profile_site(tmp_path, sshd, "zfs-snapshot", env, ["/etc/hostname"])
    failed_closed(site, site.cli("backup", "vm"), "exited with 127")


# --- LVM ---------------------------------------------------------------------------------


def device_mapper() -> bool:
    """Whether this kernel has device-mapper (LVM cannot make any LV without it)."""
    if shutil.which("dmsetup") is None:
        return False
    return "Driver version" in run("dmsetup", "version", check=False).stdout


@contextmanager
def volume_group(directory: Path, size: str = "64M") -> Iterator[str]:
    """A volume group of a unique name on a loop device, removed with all its LVs."""
    need_tool("pvcreate", "vgcreate", "lvcreate", "lvs")
    name = f"costortest{uuid.uuid4().hex[:10]}"
    with loop_file(directory, size) as device:
        try:
            run("pvcreate", "-q", device)
            run("vgcreate", "-q", "-s", "1M", name, device)
            yield name
        finally:
            run("vgremove", "-ff", "-y", name, check=False)
            run("pvremove", "-ff", "-y", device, check=False)


def lv_names(vg: str) -> set[str]:
    out = run("lvs", "--noheadings", "-o", "lv_name", vg, check=False).stdout
    return set(out.split())


def test_lvm_snapshot_of_a_missing_lv_fails_closed(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A real volume group (no device-mapper is needed to look it up): the snapshot of an
    LV it does not have cannot be made, and the backup stops with nothing left."""
    with volume_group(tmp_path) as vg:
        env = {"COSTOR_LVM_LV": f"{vg}/nope", "COSTOR_LVM_SIZE": "4M"}
        for profile in ("lvm-snapshot", "lvm-thin-snapshot"):
            site = profile_site(tmp_path / profile, sshd, profile, env, ["/etc/hostname"])
            failed_closed(site, site.cli("backup", "vm"), "lvcreate")
            assert lv_names(vg) == set()


needs_dm = pytest.mark.skipif(
    not device_mapper(), reason="device-mapper is not available in this kernel (no LVM LVs)"
)


@needs_dm
def test_lvm_snapshot_is_read_and_dropped(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    need_tool("mkfs.ext4")
    with volume_group(tmp_path) as vg:
        run("lvcreate", "-q", "-L", "24M", "-n", "origin", vg)
        origin = f"/dev/{vg}/origin"
        run("mkfs.ext4", "-q", "-F", origin)
        with mounted(origin, tmp_path / "origin") as mount:
            (mount / "f").write_text("v1\n")
            run("sync")
            view = tmp_path / "view"
            env = {
                "COSTOR_LVM_LV": f"{vg}/origin",
                "COSTOR_LVM_SIZE": "8M",
                "COSTOR_LVM_MOUNT": str(view),
            }
            own = (f"echo v2 > {mount / 'f'} && sync",)  # after the snapshot was made
            site = profile_site(tmp_path, sshd, "lvm-snapshot", env, [str(view)], own)
            result = site.cli("backup", "vm", "--json")
            assert result.code == 0, result.stderr
            assert lv_names(vg) == {"origin"}
            assert run("mountpoint", "-q", str(view), check=False).returncode != 0
            assert restored_text(site, tmp_path / "r", str(view / "f")) == "v1\n"


@needs_dm
def test_lvm_snapshot_fails_closed_when_the_vg_is_full(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    with volume_group(tmp_path, "32M") as vg:
        run("lvcreate", "-q", "-l", "100%FREE", "-n", "origin", vg)
        env = {"COSTOR_LVM_LV": f"{vg}/origin", "COSTOR_LVM_SIZE": "8M"}
        site = profile_site(tmp_path, sshd, "lvm-snapshot", env, ["/etc/hostname"])
        failed_closed(site, site.cli("backup", "vm"), "lvcreate")
        assert lv_names(vg) == {"origin"}


def thin_id(vg: str, lv: str) -> str:
    return run("lvs", "--noheadings", "-o", "thin_id", f"{vg}/{lv}").stdout.strip()


def image_facts(site: Site, path: str) -> dict[str, object]:
    listed = site.cli("ls", "vm:latest", path, "--json")
    assert listed.code == 0, listed.stderr
    (entry,) = [e for e in listed.json() if e["path"] == path]
    return dict(entry["image"])


def scribble(device: Path, offset: int, length: int) -> None:
    with open(device, "r+b") as handle:
        handle.seek(offset)
        handle.write(os.urandom(length))
        handle.flush()
        os.fsync(handle.fileno())


@needs_dm
def test_lvm_thin_snapshot_rotates_for_thin_delta(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Each backup reads a new LV-costor; the one before is LV-costor-prev while it
    runs, which `changes = "thin_delta"` compares with, and is dropped after. The
    second backup finds the changed blocks through thin_delta, and its image is the
    snapshot's bytes."""
    need_tool("thin_delta")
    mib = 1024 * 1024
    with volume_group(tmp_path) as vg:
        run("lvcreate", "-q", "--type", "thin-pool", "-L", "40M", "-n", "pool", vg)
        run("lvcreate", "-q", "-V", "16M", "-T", f"{vg}/pool", "-n", "origin")
        origin = Path(f"/dev/{vg}/origin")
        scribble(origin, 0, 16 * mib)
        snapshot = f"/dev/{vg}/origin-costor"
        image = f'{{ path = "{snapshot}", changes = "thin_delta", previous = "{snapshot}-prev" }}'
        env = {"COSTOR_LVM_LV": f"{vg}/origin"}
        record = tmp_path / "during"
        own = (f"lvs --noheadings -o lv_name {vg} > {record}",)
        site = profile_site(
            tmp_path, sshd, "lvm-thin-snapshot", env, ["/etc/hostname"], own, (image,)
        )
        first = site.cli("backup", "vm")
        assert first.code == 0, first.stderr
        assert set(record.read_text().split()) == {"pool", "origin", "origin-costor"}
        assert lv_names(vg) == {"pool", "origin", "origin-costor"}
        first_id = thin_id(vg, "origin-costor")

        scribble(origin, 3 * mib, 64 * 1024)
        scribble(origin, 11 * mib + 4096, 4096)
        second = site.cli("backup", "vm")
        assert second.code == 0, second.stderr
        during = set(record.read_text().split())
        assert during == {"pool", "origin", "origin-costor", "origin-costor-prev"}
        assert lv_names(vg) == {"pool", "origin", "origin-costor"}
        assert thin_id(vg, "origin-costor") != first_id
        assert image_facts(site, snapshot)["method"] == "thin_delta"
        target = tmp_path / "r"
        restored = site.cli("restore", "vm:latest", snapshot, "--target", str(target))
        assert restored.code == 0, restored.stderr
        (copy,) = [p for p in target.rglob("origin-costor") if p.is_file()]
        assert copy.read_bytes() == Path(snapshot).read_bytes()
