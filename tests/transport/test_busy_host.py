"""A host that is busy, for real: an OpenSSH sshd on loopback whose ``authorized_keys``
forces a command that runs the shipped helper (decompressed from what the server sends,
as the real loader does) with one part of the host changed under it, the technique of
test_hostile_host.py. The mode is the word in ``mode`` beside the script:

- ``slow``: hashing takes 0.25 s per MiB (the helper's ``hashlib`` slowed), so one file
  takes twice the io timeout to hash: the helper's heartbeats keep the backup alive;
- ``silent``: as slow, heartbeats taken out: the same backup times out (so it is the
  heartbeats that carry the slow one through);
- ``stuck``: one read's hashing takes longer than the io timeout: a heartbeat comes only
  between reads, so a host stuck in one read still times out;
- ``unsteady``: while the helper reads a file, something changes it (``growing.log``
  is appended to, ``touched.txt`` gets a new modification time): the backup warns of
  each, with the local walk's message, once per stored copy."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures import CliResult, Site
from support.inventory import BASE_TABLES, client_table, inventory_text
from support.sshd import WRAPPED_HELPER, Sshd, running_sshd

from costor.store.backup.common import StatusAfter, changed_while_read

MiB = 1024 * 1024
IO_TIMEOUT = 2  # seconds: the test inventory's ssh.io_timeout_s (heartbeats: every 0.5 s)
SLOW = 0.25  # seconds of hashing per MiB in mode "slow"
APPENDED = b"appended while the helper read it\n"

# The forced command: the shipped helper, with the host changed under it by mode.
BUSY = f"SLOW, STUCK, APPENDED = {SLOW!r}, {3 * IO_TIMEOUT!r}, {APPENDED!r}\n"
BUSY += (
    WRAPPED_HELPER
    + r"""
import hashlib, time

Helper, Channel = helper["Helper"], helper["Channel"]


class SlowHash(object):
    # hashlib.blake2b, slowed for file content (not for the small fingerprints).
    def __init__(self, data=b"", **options):
        self.inner = hashlib.blake2b(**options)
        self.update(data)

    def update(self, data):
        if len(data) >= 64 * 1024:
            time.sleep(SECONDS * len(data) / (1024 * 1024))
        self.inner.update(data)

    def digest(self):
        return self.inner.digest()

    def hexdigest(self):
        return self.inner.hexdigest()


class SlowHashlib(object):
    blake2b = SlowHash


if MODE in ("slow", "silent", "stuck"):
    SECONDS = STUCK if MODE == "stuck" else SLOW
    helper["hashlib"] = SlowHashlib
if MODE == "silent":
    Channel.alive = lambda self: None

if MODE == "unsteady":
    honest_reads = Helper.hashed_reads

    def unsteady_reads(self, handle, whole, blocks):
        # Once per read of a file, after its first 1 MiB: change it under the reader.
        name = os.readlink("/proc/self/fd/%d" % handle.fileno())
        for index, data in enumerate(honest_reads(self, handle, whole, blocks)):
            if index == 0 and name.endswith("/growing.log"):
                with open(name, "ab") as appending:
                    appending.write(APPENDED)
            elif index == 0 and name.endswith("/touched.txt"):
                os.utime(name, ns=(time.time_ns(), os.stat(name).st_mtime_ns + 1000))
            yield data

    Helper.hashed_reads = unsteady_reads

helper["main"]()
"""
)


@pytest.fixture(scope="module")
def busy() -> Iterator[Sshd]:
    """An sshd whose only key runs ``busy.py`` whatever the client asks; the mode is
    the word in ``mode`` beside it."""
    with running_sshd("costor-busy-", prepare=_prepare_busy) as server:
        yield server


def _prepare_busy(server: Sshd) -> None:
    (server.root / "busy.py").write_text(BUSY)
    (server.root / "mode").write_text("honest")
    server.force_command(f"/usr/bin/python3 {server.root}/busy.py")


def busy_site(tmp_path: Path, sshd: Sshd, paths: list[Path]) -> Site:
    ssh = (
        f'ssh = {{ user = "root", port = {sshd.port}, key = {{ file = "{sshd.client_key}" }}, '
        f"io_timeout_s = {IO_TIMEOUT} }}"
    )
    client = client_table("busy", paths, transport="ssh", connection=['host = "127.0.0.1"', ssh])
    tmp_path.mkdir(exist_ok=True)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(inventory_text(*BASE_TABLES, client))
    site = Site(tmp_path, inventory, tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def slowly_changed(busy: Sshd, tmp_path: Path, mode: str) -> tuple[Site, Path, CliResult, float]:
    """A first backup of a 16 MiB file (honest, quick); the file changed in place; the
    second backup's helper in ``mode``. That backup hashes the file whole twice (the
    walk's digest, then the delta's read), each time 16 × 0.25 s = 4 s in mode slow:
    twice the io timeout, with nothing else to send meanwhile."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(16 * MiB))
    site = busy_site(tmp_path / "site", busy, [src])
    (busy.root / "mode").write_text("honest")
    first = site.cli("backup", "busy", "--json")
    assert first.code == 0, first.stderr
    with open(big, "r+b") as handle:
        handle.seek(8 * MiB + 123)
        handle.write(os.urandom(4096))
    (busy.root / "mode").write_text(mode)
    started = time.monotonic()
    second = site.cli("backup", "busy", "--json")
    took = time.monotonic() - started
    (busy.root / "mode").write_text("honest")
    return site, big, second, took


@pytest.mark.timeout(120)
def test_heartbeats_keep_a_host_that_hashes_slowly_alive(busy: Sshd, tmp_path: Path) -> None:
    site, big, second, took = slowly_changed(busy, tmp_path, "slow")
    assert second.code == 0, second.stderr
    document = second.json()
    assert document["files_changed"] == 1 and document["complete"] is True
    assert took > 3 * IO_TIMEOUT, f"hashing was not slow ({took:.1f} s)"
    restored = site.cli("restore", "busy:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    assert (tmp_path / "r" / str(big).lstrip("/")).read_bytes() == big.read_bytes()


@pytest.mark.timeout(120)
def test_without_heartbeats_the_same_host_times_out(busy: Sshd, tmp_path: Path) -> None:
    _site, _big, second, took = slowly_changed(busy, tmp_path, "silent")
    assert second.code == 1, (second.stdout, second.stderr)
    assert f"host busy sent nothing for {IO_TIMEOUT} s: during the walk" in second.stderr
    assert took < IO_TIMEOUT + 8, took


@pytest.mark.timeout(120)
def test_a_host_stuck_in_one_read_still_times_out(busy: Sshd, tmp_path: Path) -> None:
    """Heartbeats come between reads, from the work itself: one read that takes longer
    than the io timeout (a hung disk) is not kept alive by them."""
    _site, _big, second, took = slowly_changed(busy, tmp_path, "stuck")
    assert second.code == 1, (second.stdout, second.stderr)
    assert f"host busy sent nothing for {IO_TIMEOUT} s: during the walk" in second.stderr
    assert took < IO_TIMEOUT + 8, took


def local_warning(path: Path, size: int, mtime_ns: int, read: int, after: int) -> str:
    """The local walk's warning (costor/store/backup/common.py) for these numbers, as
    ``backup --json`` lists it: led by the file's path."""
    warning = changed_while_read(str(path), size, mtime_ns, read, StatusAfter(after, mtime_ns + 1))
    assert warning is not None
    return f"{path}: {warning['error']}"


@pytest.mark.timeout(120)
def test_a_file_changed_while_the_helper_reads_it_is_warned_of_as_locally(
    busy: Sshd, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    growing, touched = src / "growing.log", src / "touched.txt"
    growing.write_bytes(os.urandom(3 * MiB))
    touched.write_bytes(os.urandom(2 * MiB))
    (src / "steady.txt").write_bytes(os.urandom(2 * MiB))
    site = busy_site(tmp_path / "site", busy, [src])
    (busy.root / "mode").write_text("unsteady")
    try:
        # First: every file is new, its content sent as read. Second: the two that
        # changed are hashed first (touched.txt's digest names content the pool has:
        # that copy, hashed while it changed, is the one kept; growing.log's is not
        # there, so it is read again for a delta, and grows again: that read is the
        # one stored and warned of). One warning each, every time.
        for backup, reads in (("first", 1), ("second", 2)):
            size = growing.stat().st_size + (reads - 1) * len(APPENDED)  # before the last
            result = site.cli("backup", "busy", "--json")
            assert result.code == 0, (backup, result.stderr)
            document = result.json()
            assert document["complete"] is True and document["files_failed"] == 0, backup
            assert document["errors"] == [], backup
            grown = local_warning(growing, size, 0, size + len(APPENDED), size)
            touched_warning = local_warning(touched, 2 * MiB, 0, 2 * MiB, 2 * MiB)
            assert sorted(document["warnings"]) == sorted([grown, touched_warning]), backup
            assert "(modified meanwhile)" in touched_warning
            assert f"({size} bytes before, {size + len(APPENDED)} read)" in grown
        assert document["files_changed"] == 2 and document["files_deduplicated"] == 1
        human = site.cli("backup", "busy")
        assert human.code == 0, human.stderr
        assert f"warning: {growing}: changed while it was being read (" in human.stderr
        assert f"warning: {touched}: changed while it was being read (" in human.stderr
        assert "steady.txt" not in human.stderr
    finally:
        (busy.root / "mode").write_text("honest")
