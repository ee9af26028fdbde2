"""A hostile host, for real: an OpenSSH sshd on loopback whose ``authorized_keys`` forces
a command (``command="…"``) that runs the helper the server sends (decompressed from
what the server writes on its stdin, as the real loader does) with its walk replaced by
crafted frames. For each attack the backup exits 1 with a clear error naming the host
and what it sent, no snapshot is recorded, and the server's memory and time stay
bounded. Also: the io timeout does not fire while a long ``before`` hook runs."""

from __future__ import annotations

import resource
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import BASE_TABLES, client_table, inventory_text
from support.sshd import WRAPPED_HELPER, Sshd, running_sshd

MiB = 1024 * 1024
IO_TIMEOUT = 3  # seconds: the test inventory's ssh.io_timeout_s

# The forced command. It reads the loader line and the compressed helper the server
# sends, runs the shipped helper's code (not as __main__), and replaces its walk.
HOSTILE = (
    WRAPPED_HELPER
    + r"""
import json, struct, time

Helper = helper["Helper"]
ENTRIES, DATA, MATCHED, WALK_DONE = b"M", b"D", b"U", b"Z"


def entry(path, kind="d", state="", size=0):
    return [path, kind, 0o755, 0, 0, "root", "root", size, 1, 1, 1, 1, 1, 0, None, None, state]


def send_entries(self, items):
    self.channel.send(ENTRIES, zlib.compress(json.dumps(items).encode()))


def finish(self):
    self.channel.send(MATCHED, zlib.compress(bytes(self.matched + self.matched_dirs)))
    self.channel.send_json(WALK_DONE, self.counters)


CRAFTED = {
    "dotdot": ["/etc/.."],
    "slash": ["/etc//shadow"],
    "empty": ["/etc/"],
    "duplicate": ["/etc/a", "/etc/a"],
}


def walk(self):
    if MODE in CRAFTED:
        send_entries(self, [entry("/"), entry("/etc")] + [entry(p) for p in CRAFTED[MODE]])
        return finish(self)
    if MODE == "frame":  # a length prefix of 4 GiB, then nothing of it
        sys.stdout.buffer.write(struct.pack(">cI", ENTRIES, 0xFFFFFFF0) + b"[]")
        sys.stdout.buffer.flush()
        time.sleep(30)
        return
    if MODE == "bomb":  # ~0.5 MB of zlib that inflates to 512 MiB of JSON whitespace
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "bomb.z"), "rb") as f:
            self.channel.send(ENTRIES, f.read())
        return finish(self)
    if MODE == "stall":  # a file whose content stops half way
        send_entries(self, [entry("/"), entry("/etc"), entry("/etc/big", "f", "data", 2 << 20)])
        self.channel.send(DATA, b"\x00" + b"x" * (1 << 20))
        self.channel.flush()
        time.sleep(40)
        return
    return Helper.honest_walk(self)


Helper.honest_walk = Helper.walk
Helper.walk = walk
helper["main"]()
"""
)

ATTACKS = {
    "dotdot": "host hostile sent an entry named '..' in /etc: refused",
    "slash": "host hostile sent an entry named '/shadow' in /etc: refused",
    "empty": "host hostile sent an entry named '' in /etc: refused",
    "duplicate": "host hostile sent two entries named 'a' in /etc: refused",
    "frame": "host hostile sent a frame of 4294967280 bytes (at most 134217728): refused",
    "bomb": "host hostile sent an ENTRIES frame that inflates past 134217728 bytes: refused",
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[Sshd]:
    """An sshd whose only key runs ``hostile.py`` whatever the client asks; the attack
    is the word in ``mode`` beside it."""
    with running_sshd("costor-hostile-", prepare=_prepare_hostile) as server:
        yield server


def _prepare_hostile(server: Sshd) -> None:
    root = server.root
    (root / "hostile.py").write_text(HOSTILE)
    (root / "mode").write_text("honest")
    packer = zlib.compressobj(9)  # the bomb, made once (slow on a busy machine)
    chunk = b" " * MiB
    parts = [packer.compress(b"["), *(packer.compress(chunk) for _ in range(512))]
    (root / "bomb.z").write_bytes(b"".join(parts) + packer.compress(b"]") + packer.flush())
    server.force_command(f"/usr/bin/python3 {root}/hostile.py")


def hostile_site(tmp_path: Path, sshd: Sshd, paths: list[str], *extra: str) -> Site:
    ssh = (
        f'ssh = {{ user = "root", port = {sshd.port}, key = {{ file = "{sshd.client_key}" }}, '
        f"io_timeout_s = {IO_TIMEOUT} }}"
    )
    client = client_table(
        "hostile", paths, *extra, transport="ssh", connection=['host = "127.0.0.1"', ssh]
    )
    tmp_path.mkdir(exist_ok=True)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(inventory_text(*BASE_TABLES, client))
    site = Site(tmp_path, inventory, tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def snapshots(site: Site) -> list[object]:
    listed = site.cli("snapshots", "--json")
    assert listed.code == 0, listed.stderr
    return list(listed.json())


def test_the_harness_backs_up_an_honest_host(hostile: Sshd, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file").write_text("honest\n")
    (hostile.root / "mode").write_text("honest")
    site = hostile_site(tmp_path / "site", hostile, [str(tmp_path / "src")])
    backup = site.cli("backup", "hostile", "--json")
    assert backup.code == 0, backup.stderr
    assert backup.json()["transfer"] == "helper" and len(snapshots(site)) == 1


@pytest.mark.timeout(120)  # before this check, a 4 GiB frame or a stall hung forever
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_hostile_host_is_refused_and_nothing_is_committed(
    hostile: Sshd, tmp_path: Path, attack: str
) -> None:
    (hostile.root / "mode").write_text(attack)
    site = hostile_site(tmp_path, hostile, ["/etc"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.monotonic()
    backup = site.cli("backup", "hostile")
    took = time.monotonic() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert backup.code == 1, (backup.stdout, backup.stderr)
    assert ATTACKS[attack] in backup.stderr, backup.stderr
    assert "Traceback" not in backup.stderr
    assert snapshots(site) == []
    assert grown < 300 * MiB, f"the server's peak memory grew by {grown / MiB:.0f} MiB"
    assert took < IO_TIMEOUT + 20, took


@pytest.mark.timeout(120)
def test_a_host_that_stalls_mid_file_fails_within_the_io_timeout(
    hostile: Sshd, tmp_path: Path
) -> None:
    (hostile.root / "mode").write_text("stall")
    site = hostile_site(tmp_path, hostile, ["/etc"])
    started = time.monotonic()
    backup = site.cli("backup", "hostile")
    took = time.monotonic() - started
    assert backup.code == 1, (backup.stdout, backup.stderr)
    assert f"host hostile sent nothing for {IO_TIMEOUT} s: in the middle of a file" in (
        backup.stderr
    )
    assert took < IO_TIMEOUT + 8, took
    assert snapshots(site) == []


def test_a_long_before_hook_is_governed_by_the_hook_timeout(hostile: Sshd, tmp_path: Path) -> None:
    """The helper says nothing while a hook runs: longer than io_timeout_s is fine."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "file").write_text("honest\n")
    (hostile.root / "mode").write_text("honest")
    site = hostile_site(
        tmp_path / "site",
        hostile,
        [str(tmp_path / "src")],
        f'hooks = {{ before = ["sleep {IO_TIMEOUT + 2}"], timeout_s = 60 }}',
    )
    backup = site.cli("backup", "hostile")
    assert backup.code == 0, backup.stderr
    assert len(snapshots(site)) == 1
