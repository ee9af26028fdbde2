"""A hostile host's images, for real (the harness of test_hostile_host.py: an sshd whose
key forces a command that runs the shipped helper with its walk replaced by crafted
frames): every image fact the server is sent is checked, and a lie gives a clear
HostProtocolError (exit 1), no traceback, no snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import BASE_TABLES, client_table, inventory_text
from support.sshd import WRAPPED_HELPER, Sshd, running_sshd

HOSTILE = (
    WRAPPED_HELPER
    + r"""
import json, struct

Helper = helper["Helper"]
ENTRIES, DATA, END, MATCHED, WALK_DONE = b"M", b"D", b"d", b"U", b"Z"


def entry(path, kind="d", state="", size=0, extra=None):
    item = [path, kind, 0o755, 0, 0, "root", "root", size, 1, 1, 1, 1, 1, 0, None, None, state]
    return item + [extra] if extra is not None else item


def facts(**changes):
    image = {"method": "full", "block_size": 65536, "source": "file"}
    image.update(changes)
    return {"image": image}


CRAFTED = {
    "unnamed": ("/etc/other", "data", facts()),
    "block": ("/etc/img", "data", facts(block_size=1000)),
    "small": ("/etc/img", "data", facts(block_size=4096)),
    "method": ("/etc/img", "data", facts(method="guess")),
    "extra": ("/etc/img", "data", dict(facts(), blocks="AAAA")),
    "range": ("/etc/img", "changed", dict(facts(method="blocks"), digest="00" * 32,
                                         changed_blocks=[0, 99])),
    "zeros": ("/etc/img", "data", facts()),
    "nofacts": ("/etc/img", "data", None),
    "long": ("/etc/img", "data", facts()),
    "filezeros": ("/etc/hostname", "data", None),
}


def walk(self):
    if MODE not in CRAFTED:
        return Helper.honest_walk(self)
    path, state, extra = CRAFTED[MODE]
    kind = "f" if MODE == "filezeros" else "i"
    items = [entry("/"), entry("/etc"), entry(path, kind, state, 1 << 20, extra)]
    self.channel.send(ENTRIES, zlib.compress(json.dumps(items).encode()))
    if state == "data":
        count = (1 << 40) if MODE == "zeros" else (1 << 20)
        self.channel.send(DATA, b"\x02" + struct.pack(">Q", count))
        if MODE == "long":  # past the image's size
            self.channel.send(DATA, b"\x02" + struct.pack(">Q", count))
        self.channel.send_json(END, {"size": 1 << 20, "digest": "00" * 32, "blocks": ""})
    self.channel.send(MATCHED, zlib.compress(bytes(self.matched + self.matched_dirs)))
    self.channel.send_json(WALK_DONE, self.counters)


Helper.honest_walk = Helper.walk
Helper.walk = walk
helper["main"]()
"""
)

ATTACKS = {
    "unnamed": "an image '/etc/other' the client does not name",
    "block": "an image block size of 1000",
    "small": "by blocks smaller than 65536 bytes",
    "method": "an image /etc/img read by {'method': 'guess'",
    "extra": "an image /etc/img with ['blocks', 'image']",
    "range": "an image /etc/img whose changed blocks are wrong",
    "zeros": "a ZEROS frame of 1099511627776 bytes",
    "nofacts": "an image '/etc/img' without its facts",
    "long": "more than the 1048576 bytes of the image '/etc/img'",
    "filezeros": "a ZEROS run in the content of a file (only images send them)",
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[Sshd]:
    with running_sshd("costor-hostile-image-", prepare=_prepare) as server:
        yield server


def _prepare(server: Sshd) -> None:
    (server.root / "hostile.py").write_text(HOSTILE)
    (server.root / "mode").write_text("honest")
    server.force_command(f"/usr/bin/python3 {server.root}/hostile.py")


def _site(tmp_path: Path, server: Sshd) -> Site:
    ssh = (
        f'ssh = {{ user = "root", port = {server.port}, key = {{ file = "{server.client_key}" '
        "}, io_timeout_s = 5 }"
    )
    client = client_table(
        "hostile",
        ["/etc/hostname"],
        'images = ["/etc/img"]',
        transport="ssh",
        connection=['host = "127.0.0.1"', ssh],
    )
    tmp_path.mkdir(exist_ok=True)
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(inventory_text(*BASE_TABLES, client))
    site = Site(tmp_path, inventory, tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_hostile_hosts_image_is_refused(hostile: Sshd, tmp_path: Path, attack: str) -> None:
    (hostile.root / "mode").write_text(attack)
    site = _site(tmp_path, hostile)
    backup = site.cli("backup", "hostile")
    assert backup.code == 1, (backup.stdout, backup.stderr)
    assert "host hostile sent" in backup.stderr and ATTACKS[attack] in backup.stderr, backup.stderr
    assert "Traceback" not in backup.stderr
    listed = site.cli("snapshots", "--json")
    assert listed.code == 0 and listed.json() == []
