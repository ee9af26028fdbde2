"""Warnings of an SSH pull, against a real sshd (tests/support/sshd.py): a path that is a block
device (a real loop device, tests/support/loopdev.py) stores only its node, through the helper
and through the SFTP fallback; the SFTP fallback's human output shows the reason it fell
back (its summary once pointed at "warnings above" that were never printed); a file
that grows while the SFTP fallback reads it is warned of as the local walk warns."""

from __future__ import annotations

import os
from pathlib import Path

from support.fixtures import Site, appending
from support.loopdev import loop_device  # noqa: F401  (fixture)
from support.sshd import Sshd, remote_dir, ssh_site, sshd  # noqa: F401  (fixtures)

IMAGE = " (list it in the client's images to back up its contents)"


def files_in(remote_dir: Path) -> Path:  # noqa: F811
    files = remote_dir / "files"
    files.mkdir()
    files.chmod(0o755)
    (files / "a.txt").write_text("some content\n")
    (files / "a.txt").chmod(0o644)
    return files


def applied(site: Site) -> Site:
    result = site.cli("apply", "--auto-approve")
    assert result.code == 0, result.stderr
    return site


def test_a_block_device_path_is_a_warning_through_the_helper(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    loop_device: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = files_in(remote_dir)
    link = remote_dir / "disk-link"
    link.symlink_to(loop_device)
    site = applied(ssh_site(tmp_path, sshd, {"host": {"paths": [loop_device, link, files]}}))

    result = site.cli("backup", "host", "--json")

    assert result.code == 0, result.stderr
    document = result.json()
    assert document["transfer"] == "helper"
    assert document["warnings"] == [
        f"{loop_device} is a block device: its node was stored, not its contents{IMAGE}",
        f"{link} is a symbolic link to the device {loop_device}: the link was stored, "
        f"not the device's contents{IMAGE}",
    ]
    assert document["errors"] == [] and document["files_failed"] == 0
    human = site.cli("backup", "host")
    assert human.code == 0, human.stderr
    assert f"warning: {loop_device} is a block device: its node was stored" in human.stderr


def test_the_sftp_fallback_says_why_and_warns_of_devices(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    loop_device: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    files = files_in(remote_dir)
    hooks = 'hooks = { after = ["exit 3"] }'
    site = applied(
        ssh_site(
            tmp_path,
            sshd,
            {"old": {"paths": [loop_device, files], "user": "nopython", "extra": hooks}},
        )
    )

    human = site.cli("backup", "old")

    assert human.code == 0, human.stderr
    # What the summary refers to is there: the reason of the fallback, the after hook
    # that failed, the device; no item failed to be read, and none is claimed.
    assert "warning: fell back to SFTP: " in human.stderr
    assert "warning: after hook `exit 3` exited with 3" in human.stderr
    assert f"warning: {loop_device} is a block device: its node was stored" in human.stderr
    assert "could not be read" not in human.stdout
    assert "see warnings above" not in human.stdout

    document = site.cli("backup", "old", "--json").json()
    assert document["transfer"] == "sftp"
    assert "fell back to SFTP" in document["errors"][0]["error"]
    assert [e["error"] for e in document["errors"][1:]] == ["after hook `exit 3` exited with 3: "]
    assert document["warnings"] == [
        f"{loop_device} is a block device: its node was stored, not its contents{IMAGE}"
    ]


def test_a_file_appended_to_during_an_sftp_pull_is_warned_of(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A real writer appends to a large file while the SFTP fallback reads it: stored,
    with the local walk's warning (size as listed, bytes read, fstat after)."""
    files = files_in(remote_dir)
    busy = files / "busy.log"
    busy.write_bytes(os.urandom(64 * 1024 * 1024))
    busy.chmod(0o644)
    site = applied(ssh_site(tmp_path, sshd, {"old": {"paths": [files], "user": "nopython"}}))
    with appending(busy):
        result = site.cli("backup", "old", "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert document["transfer"] == "sftp" and document["complete"] is True
    assert [e["error"][:18] for e in document["errors"]] == ["fell back to SFTP:"]
    assert len(document["warnings"]) == 1, document["warnings"]
    assert document["warnings"][0].startswith(f"{busy}: changed while it was being read (")
    assert document["warnings"][0].endswith("): the stored copy may be inconsistent")
