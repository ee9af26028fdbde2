"""The one check of what a host sends (costor/protocol.py): each field of an entry, the
walk's order and names, and bounded decompression. The hostile host over a real SSH
connection is tests/transport/test_hostile_host.py."""

from __future__ import annotations

import base64
import time
import zlib
from typing import Any

import pytest

from costor import protocol
from costor.protocol import Entry, Refused, WalkCheck

DIGEST = "ab" * 32


def full(path: str, kind: str = "f", state: str = "", **fields: Any) -> list[Any]:
    """A full entry as the helper sends one (17 fields)."""
    entry = Entry(path, kind, 0o644, 1000, 1000, "web", "web", 5, 10**18, 10**18, 7, 2049, 1)
    item = list(entry._replace(state=state, **fields))[: protocol.ENTRY_FIELDS]
    return item


def test_well_formed_entries_parse() -> None:
    assert protocol.parse_entry(full("/etc/hosts", state="data")).size == 5
    assert protocol.parse_entry(full("/etc", "d", "sparse")).state == "sparse"
    assert protocol.parse_entry(full("/l", "l", target="../x")).target == "../x"
    assert protocol.parse_entry(full("/f", state="digest:" + DIGEST)).kind == "f"
    changed = full("/f", state="changed") + [{"digest": DIGEST, "changed_blocks": [0, 3]}]
    assert protocol.parse_entry(changed).extra == {"digest": DIGEST, "changed_blocks": [0, 3]}
    xattrs = {"user.a": base64.b64encode(b"\0\1").decode()}
    assert protocol.parse_entry(full("/f", xattrs=xattrs)).xattrs == xattrs
    assert protocol.parse_entry(full("/f", state="link:/g")).state == "link:/g"
    assert protocol.parse_entry(full("/f", "c", mode=0o6755, rdev=259)).rdev == 259
    assert protocol.parse_entry(full("/l", "l", target="x", mtime_ns=-1)).mtime_ns == -1
    error = list(protocol.error_entry("/gone", "cannot stat"))[: protocol.ENTRY_FIELDS]
    assert protocol.parse_entry(error).state == "error:cannot stat"
    assert protocol.parse_entry(["/x"]).compact


@pytest.mark.parametrize(
    ("item", "said"),
    [
        ("not a list", "not a list"),
        ([], "not a list"),
        (["/x", "data"], "compact entry"),
        ([7], "compact entry"),
        (full("/x")[:10], "of 10 fields"),
        (full("/x") + [None, None], "not a list"),
        (full("relative"), "not an absolute path"),
        (full("/a\0b"), "not an absolute path"),
        (full("/" + "a" * protocol.MAX_PATH), "characters (at most"),
        (full("/x", "z"), "unknown type 'z'"),
        (full("/x", mode=0o100644), "out of range"),
        (full("/x", uid=2**32), "out of range"),
        (full("/x", gid=-1), "out of range"),
        (full("/x", size=2**63), "out of range"),
        (full("/x", mtime_ns=-1), "out of range"),  # a file's fingerprint needs u64
        (full("/x", "d", ctime_ns=-1), "out of range"),
        (full("/l", "l", target="x", mtime_ns=-(2**63)), "out of range"),
        (full("/x", size="5"), "not one"),
        (full("/x", links=True), "not one"),
        (full("/x", size=1.5), "not one"),
        (full("/x", user=None), "owned by"),
        (full("/x", group="g" * 300), "owned by"),
        (full("/l", "l", target=None), "without a target"),
        (full("/l", "l", target="x" * (protocol.MAX_TARGET + 1)), "link target"),
        (full("/l", "l", target="a\0b"), "link target"),
        (full("/x", xattrs=["a"]), "extended attributes"),
        (full("/x", xattrs={"user.a": "not base64!"}), "not base64"),
        (full("/x", xattrs={"": "AA=="}), "extended attribute"),
        (full("/x", state="bogus"), "whose state is"),
        (full("/x", state=7), "whose state is"),
        (full("/x", state="digest:00"), "whose digest"),
        (full("/x", state="digest:" + "zz" * 32), "whose digest"),
        (full("/x", state="link:relative"), "not an absolute path"),
        (full("/x", "f", "sparse"), "not a directory"),
        (full("/x", state="changed"), "without its digest"),
        (full("/x", state="changed") + [{"digest": "00"}], "whose digest"),
        (
            full("/x", state="changed") + [{"digest": DIGEST, "changed_blocks": ["a"]}],
            "changed blocks",
        ),
        (full("/x", state="data") + [{"digest": DIGEST}], "18th field"),
    ],
)
def test_malformed_entries_are_refused(item: Any, said: str) -> None:
    with pytest.raises(Refused, match=None) as refused:
        protocol.parse_entry(item)
    assert said in str(refused.value), str(refused.value)


def walk(*items: list[Any]) -> WalkCheck:
    check = WalkCheck()
    for item in items:
        check.entry(protocol.parse_entry(item))
    return check


def test_a_walk_in_the_producers_order_passes() -> None:
    walk(
        full("/", "d"),
        full("/etc", "d"),
        ["/etc/a"],  # compact: a directory or a file, as the parent had it
        full("/etc/a/x"),
        list(protocol.error_entry("/etc/a/y", "cannot stat"))[:17],
        ["/etc/a/z", "sparse"],
        full("/etc/a/z/deep", "d"),
        full("/etc/a/z/deep/f"),
        full("/etc/b"),
        full("/etc/\udc80"),  # a name not UTF-8 (byte 0x80) sorts by its bytes: before é
        full("/etc/é"),  # (0xc3 0xa9), not by code points (U+00E9 < U+DC80)
        full("/srv", "d"),
        full("/srv/f"),
    )


@pytest.mark.parametrize(
    ("paths", "said"),
    [
        (["/etc/.."], "an entry named '..' in /etc"),
        (["/etc/."], "an entry named '.' in /etc"),
        (["/etc/"], "an entry named '' in /etc"),
        (["/etc//shadow"], "an entry named '/shadow' in /etc"),
        (["/etc/x/y"], "an entry named 'x/y' in /etc"),  # x was never sent
        (["/etc/a\0"], "not an absolute path"),
        (["/etc/" + "n" * (protocol.MAX_NAME + 1)], "an entry named"),
        (["/etc/a", "/etc/a"], "two entries named 'a' in /etc"),
        (["/etc/b", "/etc/a"], "entries out of order named 'a' in /etc"),
        (["/etc/a", "/etc/a/x", "/etc/a"], "two entries named 'a' in /etc"),
        (["/etc", "/srv"], "two entries named 'etc' in /"),
        (["/etc/f", "/etc/f/x"], "an entry named 'f/x' in /etc"),  # f is a file
        (["/"], "an entry named '' in /"),
    ],
)
def test_names_and_order_are_checked(paths: list[str], said: str) -> None:
    with pytest.raises(Refused) as refused:
        walk(
            full("/", "d"),
            full("/etc", "d"),
            *(full(p, "f" if p.endswith("f") else "d") for p in paths),
        )
    assert said in str(refused.value), str(refused.value)


def test_the_root_comes_first() -> None:
    with pytest.raises(Refused, match="before the root"):
        walk(full("/etc", "d"))
    with pytest.raises(Refused, match="before the root"):
        walk(full("/", "f"))


def test_names_of_a_listing() -> None:
    protocol.check_name("hosts", "/etc")
    for name in ("", ".", "..", "a/b", "a\0", "n" * (protocol.MAX_NAME + 1)):
        with pytest.raises(Refused, match="an entry named"):
            protocol.check_name(name, "/etc")


def test_decompression_is_bounded() -> None:
    assert protocol.inflate(zlib.compress(b"x" * 1000), 1000, "a frame") == b"x" * 1000
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024), 9)
    assert len(bomb) < 100_000
    with pytest.raises(Refused, match="a frame that inflates past 1000000 bytes"):
        protocol.inflate(bomb, 1_000_000, "a frame")
    with pytest.raises(Refused, match="truncated"):
        protocol.inflate(zlib.compress(b"x" * 1000)[:-6], 1000, "a frame")
    with pytest.raises(Refused, match="does not inflate"):
        protocol.inflate(b"not zlib", 1000, "a frame")
    with pytest.raises(Refused, match="a DATA frame that inflates past"):
        protocol.unpack_data(protocol.ZLIB + zlib.compress(b"\0" * (protocol.MAX_DATA + 1)))
    with pytest.raises(Refused, match="a DATA frame of"):
        protocol.unpack_data(protocol.RAW + b"\0" * (protocol.MAX_DATA + 1))
    assert protocol.unpack_data(protocol.ZLIB + zlib.compress(b"abc")) == b"abc"


def test_checking_costs_little_per_entry() -> None:
    """A million-file tree: parsing and placing an entry must stay cheap."""
    items = [full("/", "d"), full("/d", "d")] + [full(f"/d/{i:07d}") for i in range(50_000)]
    started = time.perf_counter()
    walk(*items)
    per_entry = (time.perf_counter() - started) / len(items)
    assert per_entry < 20e-6, f"{per_entry * 1e6:.1f} µs per entry"
