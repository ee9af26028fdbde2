"""costor/protocol.py and the helper's stdlib copy of it (costor/transport/helper.py, which
runs on hosts and cannot import costor): every constant the helper holds is the
protocol's, and what both compute (fingerprints, directory hashes, digests, the Bloom
filter, the exclude rule, entries, frames, heartbeats, the changed-while-read rule)
comes out the same."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from costor import protocol
from costor.store.backup.common import changed_while_read
from costor.transport import helper

KEY = bytes(range(32))
FRAME_KINDS = [
    "HELLO",
    "PARENT",
    "PARENT_LARGE",
    "PARENT_DIRS",
    "BLOOM",
    "WALK",
    "FETCH",
    "DELTA",
    "AFTER",
    "QUIT",
    "HELLO_REPLY",
    "HOOK",
    "READY",
    "HOOK_FAILED",
    "ENTRIES",
    "DATA",
    "BLOCK",
    "END",
    "START",
    "OMITTED",
    "MATCHED",
    "WALK_DONE",
    "DONE",
    "ERROR",
    "HEARTBEAT",
]


def helper_constants() -> dict[str, object]:
    return {
        name: value
        for name, value in vars(helper).items()
        if name.isupper() and isinstance(value, (bytes, str, int))
    }


def test_every_constant_of_the_helper_is_the_protocols() -> None:
    constants = helper_constants()
    assert constants, "the helper holds no constants?"
    for name, value in constants.items():
        assert hasattr(protocol, name), f"helper.{name} is not in costor/protocol.py"
        assert getattr(protocol, name) == value, name


def test_every_frame_kind_is_in_the_helper_and_distinct() -> None:
    kinds = [getattr(protocol, name) for name in FRAME_KINDS]
    assert len(set(kinds)) == len(kinds)
    for name in FRAME_KINDS:
        assert getattr(helper, name) == getattr(protocol, name), name


def test_frames_have_the_same_header() -> None:
    out = io.BytesIO()
    channel = helper.Channel(io.BytesIO(), out)
    channel.send(helper.DATA, b"abc")
    data = out.getvalue()
    assert protocol.FRAME_HEADER.unpack(data[:5]) == (protocol.DATA, 3)
    echo = helper.Channel(io.BytesIO(protocol.FRAME_HEADER.pack(b"Q", 2) + b"hi"), io.BytesIO())
    assert echo.recv() == (b"Q", b"hi")


def a_helper() -> helper.Helper:
    made = helper.Helper(helper.Channel(io.BytesIO(), io.BytesIO()))
    made.key = KEY
    made.compress_level = 1
    made.batch, made.batch_bytes = [], 0
    return made


@pytest.mark.parametrize("content", [b"", b"x" * 10, b"y" * 5000])
def test_fingerprints_are_the_helpers(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f\udcff.txt"
    path.write_bytes(content)
    st = os.lstat(path)
    raw = str(path).encode("utf-8", "surrogateescape")
    ours = protocol.fingerprint(KEY, raw, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    theirs = a_helper()
    assert len(ours) == protocol.FINGERPRINT_SIZE
    assert ours[:4] == theirs.fingerprint(raw)[:4]
    assert ours[4:] == theirs.fingerprint(helper._stat_key(str(path), st))


def test_directory_hashes_are_the_helpers() -> None:
    names = [b"b", b"a", b"\xff"]
    listed = b"\0".join(sorted(names))
    theirs = a_helper().dir_hash(b"/some/dir" + b"\0" + listed)
    assert protocol.dir_hash(KEY, "/some/dir", names) == theirs
    assert len(theirs) == protocol.DIR_HASH_SIZE


@pytest.mark.parametrize("size", [0, 1000, protocol.BLOCK_SIZE + 7])
@pytest.mark.parametrize("large", [False, True])
def test_content_digests_are_the_helpers(tmp_path: Path, size: int, large: bool) -> None:
    data = os.urandom(size)
    path = tmp_path / "content"
    path.write_bytes(data)
    theirs = a_helper()
    whole = None if large else hashlib.blake2b(key=KEY, digest_size=32)
    blocks: list[bytes] = []
    with open(path, "rb", buffering=0) as handle:
        for _ in theirs.hashed_reads(handle, whole, blocks):
            pass
    digest = protocol.ContentDigest(KEY, large=large)
    digest.update(data)
    assert digest.end(size) == theirs.end_document(size, whole, blocks)
    if large:
        assert protocol.blocks_digest(KEY, b"".join(blocks)) == theirs.blocks_digest(blocks)
        assert all(len(b) == protocol.BLOCK_HASH_SIZE for b in blocks)


def test_delta_pieces_are_hashed_alike() -> None:
    """The helper compares each piece of a DELTA range with its 8-byte keyed hash: one
    piece that matches is not sent, one that differs is."""
    block = 512
    data = os.urandom(4 * block)
    hashes = b"".join(
        protocol.piece_hash(KEY, data[i : i + block]) for i in range(0, 4 * block, block)
    )
    changed = bytearray(data)
    changed[block + 3] ^= 1
    sent: list[tuple[bytes, bytes]] = []
    theirs = a_helper()
    theirs.channel.send = lambda kind, payload=b"": sent.append((kind, payload))  # type: ignore[method-assign]
    theirs.send_changed(0, bytes(changed), len(data), [(0, len(data), block, hashes)], False)
    assert len(sent) == 1
    kind, payload = sent[0]
    assert kind == protocol.BLOCK
    assert protocol.BLOCK_OFFSET.unpack(payload[:8]) == (block,)
    assert protocol.unpack_data(payload[8:]) == bytes(changed[block : 2 * block])


def test_the_bloom_filter_reads_the_same_on_both_sides() -> None:
    present = [os.urandom(32) for _ in range(300)]
    payload = protocol.bloom_filter(present)
    theirs, ours = helper.Bloom(payload), protocol.Bloom(payload)
    assert all(theirs.may_contain(d) and ours.may_contain(d) for d in present)
    for digest in (os.urandom(32) for _ in range(2000)):
        assert theirs.may_contain(digest) == ours.may_contain(digest)
    empty = protocol.bloom_filter([])
    assert not helper.Bloom(empty).may_contain(present[0])
    assert not protocol.Bloom(empty).may_contain(present[0])


def test_the_exclude_rule_is_the_helpers() -> None:
    patterns = ["*.tmp", "/var/cache/", "/home/*/Downloads", "cache"]
    theirs, ours = helper.ExcludeMatcher(patterns), protocol.ExcludeMatcher(patterns)
    cases = [
        ("/a/b.tmp", "b.tmp"),
        ("/var/cache", "cache"),
        ("/var/cache/x", "x"),
        ("/home/u/Downloads", "Downloads"),
        ("/home/u/Documents", "Documents"),
        ("/srv/cache", "cache"),
        ("/srv/keep", "keep"),
    ]
    for path, name in cases:
        assert theirs.excluded(path, name) == ours.excluded(path, name), path
    assert theirs.active == ours.active


def test_entries_parse_field_by_field(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"content")
    os.symlink("file", tmp_path / "link")
    theirs = a_helper()
    for name in ("file", "link"):
        path = str(tmp_path / name)
        item = theirs.entry(path, os.lstat(path), protocol.DATA_FOLLOWS)
        assert len(item) == protocol.ENTRY_FIELDS
        entry = protocol.parse_entry(item)
        assert list(entry[: protocol.ENTRY_FIELDS]) == item
        assert entry.extra is None and not entry.compact
        assert entry.path == path and entry.state == protocol.DATA_FOLLOWS
    extra = {"digest": "00" * 32, "blocks": None, "changed_blocks": []}
    item = theirs.entry(str(tmp_path / "file"), os.lstat(tmp_path / "file"), "changed", extra)
    assert protocol.parse_entry(item).extra == extra
    assert protocol.parse_entry(["/x"]) == protocol.Entry("/x", compact=True)
    assert protocol.parse_entry(["/x", "sparse"]).state == protocol.SPARSE


def test_error_entries_are_the_helpers() -> None:
    item = a_helper().error_entry("/gone", "cannot stat: No such file")
    assert list(protocol.error_entry("/gone", "cannot stat: No such file")[:17]) == item
    assert protocol.parse_entry(item).state.startswith(protocol.ERROR_PREFIX)


def frames_of(output: bytes) -> list[tuple[bytes, bytes]]:
    frames, position = [], 0
    while position < len(output):
        kind, length = protocol.FRAME_HEADER.unpack_from(output, position)
        position += protocol.FRAME_HEADER.size
        frames.append((kind, output[position : position + length]))
        position += length
    return frames


def test_every_frame_the_helper_sends_passes_the_checks(tmp_path: Path) -> None:
    """The limits and checks of costor/protocol.py refuse no walk of the shipped helper:
    a directory of 9,000 files (more than one ENTRIES batch), long names, a link, a
    file of several 1 MiB DATA frames, heartbeats (here as often as the helper looks)."""
    many = tmp_path / "many"
    many.mkdir()
    for i in range(9000):
        (many / f"{i:05d}-{'n' * 200}").write_bytes(b"")
    (tmp_path / "big").write_bytes(os.urandom(3 * protocol.BLOCK_SIZE + 5))
    (tmp_path / "z-link").symlink_to("big")
    out = io.BytesIO()
    theirs = helper.Helper(helper.Channel(io.BytesIO(), out))
    theirs.key, theirs.compress_level = KEY, 1
    theirs.options = {"paths": [str(tmp_path)], "exclude": []}
    theirs.channel.interval = 0.0
    theirs.walk()
    check, entries, data, beats = protocol.WalkCheck(), 0, 0, 0
    for kind, payload in frames_of(out.getvalue()):
        assert len(payload) <= protocol.MAX_FRAME
        if kind == protocol.ENTRIES:
            inflated = protocol.inflate(payload, protocol.MAX_INFLATED, "ENTRIES")
            items = json.loads(inflated.decode("utf-8", "surrogateescape"))
            assert len(items) <= protocol.MAX_ENTRIES
            for item in items:
                check.entry(protocol.parse_entry(item))
                entries += 1
        elif kind == protocol.DATA:
            data += len(protocol.unpack_data(payload))
        elif kind == protocol.HEARTBEAT:
            protocol.check_heartbeat(payload)
            beats += 1
    assert entries >= 9000 + 3 and data == 3 * protocol.BLOCK_SIZE + 5
    assert beats >= 3 + 2  # one per 1 MiB read of big, one per ENTRIES batch


def test_heartbeats_pass_the_check_and_come_only_when_due() -> None:
    out = io.BytesIO()
    channel = helper.Channel(io.BytesIO(), out)
    assert channel.interval == helper.HEARTBEAT_S == protocol.HEARTBEAT_S
    channel.alive()  # just made: nothing sent for less than the interval
    assert out.getvalue() == b""
    channel.interval = 0.0
    channel.alive()
    assert frames_of(out.getvalue()) == [(protocol.HEARTBEAT, b"")]
    protocol.check_heartbeat(b"")
    protocol.check_heartbeat(b"x" * protocol.MAX_HEARTBEAT)
    with pytest.raises(protocol.Refused, match="a HEARTBEAT frame of 17 bytes"):
        protocol.check_heartbeat(b"x" * 17)


def test_the_heartbeat_interval_is_a_quarter_of_the_io_timeout_at_most_30_s() -> None:
    assert protocol.heartbeat_interval(600) == 30
    assert protocol.heartbeat_interval(60) == 15
    assert protocol.heartbeat_interval(2) == 0.5
    assert protocol.heartbeat_interval(0.01) == protocol.MIN_HEARTBEAT_S


def test_changed_while_read_is_the_local_rule(tmp_path: Path) -> None:
    """The helper's numbers (lstat before, fstat after) give the local walk's warning,
    and only when the local rule gives one."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    before = os.lstat(path)
    with open(path, "rb") as handle:
        assert helper._changed_while_read(before, 100, handle) is None
        with open(path, "ab") as writer:
            writer.write(b"more")
        facts = helper._changed_while_read(before, 100, handle)
        short = helper._changed_while_read(before, 60, handle)
    for read, numbers in ((100, facts), (60, short)):
        assert numbers is not None
        assert protocol.check_changed_while_read("x", numbers) == numbers
        size, mtime_ns, got, after_size, after_mtime = numbers
        assert (size, mtime_ns, got) == (100, before.st_mtime_ns, read)
        assert (after_size, after_mtime) == (104, os.stat(path).st_mtime_ns)
        ours = changed_while_read(str(path), 100, before.st_mtime_ns, read, os.stat(path))
        assert ours is not None and ours["severity"] == "warning"


def test_changed_while_read_in_entries_and_ends_is_checked(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"content")
    st = os.lstat(tmp_path / "file")
    theirs = a_helper()
    facts = [7, st.st_mtime_ns, 9, 9, st.st_mtime_ns + 1]
    unsteady = {protocol.CHANGED_WHILE_READ: facts}
    digest = "digest:" + "00" * 32
    item = theirs.entry(str(tmp_path / "file"), st, digest, unsteady)
    assert protocol.parse_entry(item).extra == unsteady
    changed = {"digest": "00" * 32, "blocks": None, "changed_blocks": [], **unsteady}
    item = theirs.entry(str(tmp_path / "file"), st, "changed", changed)
    assert protocol.parse_entry(item).extra == changed
    end = theirs.end_document(9, hashlib.blake2b(key=KEY, digest_size=32), [], facts)
    assert protocol.check_end(json.loads(json.dumps(end))) == end
    for wrong in ([1, 2, 3], [-1, 0, 0, 0, 0], [0, 0, 0, 0, 2**63], [0, 0, 0, 0, "1"], "x"):
        with pytest.raises(protocol.Refused, match="changed_while_read is"):
            protocol.check_end({"size": 0, protocol.CHANGED_WHILE_READ: wrong})
        bad = theirs.entry(str(tmp_path / "file"), st, digest, {"changed_while_read": wrong})
        with pytest.raises(protocol.Refused, match="changed_while_read is"):
            protocol.parse_entry(bad)
    for extra in ({"digest": "00" * 32}, {protocol.CHANGED_WHILE_READ: facts, "more": 1}):
        bad = theirs.entry(str(tmp_path / "file"), st, digest, extra)
        with pytest.raises(protocol.Refused, match="with an 18th field"):
            protocol.parse_entry(bad)
    data = theirs.entry(str(tmp_path / "file"), st, protocol.DATA_FOLLOWS, unsteady)
    with pytest.raises(protocol.Refused, match="with an 18th field"):
        protocol.parse_entry(data)
    with pytest.raises(protocol.Refused, match="an END frame that is not one"):
        protocol.check_end([1])


# --- images (issue 23) ------------------------------------------------------------------


def image_entry(state: str = "data", size: int = 1 << 20, **extra: object) -> list[object]:
    facts = {"method": "full", "block_size": 65536, "source": "blockdev"}
    facts.update(extra.pop("facts", {}))  # type: ignore[call-overload]
    item: list[object] = ["/dev/vg0/root", "i", 0o660, 0, 6, "root", "disk", size]
    return [*item, 1, 1, 1, 1, 1, 0, None, None, state, {"image": facts, **extra}]


def test_an_image_entry_is_checked_field_by_field() -> None:
    entry = protocol.parse_entry(image_entry())
    assert entry.kind == protocol.IMAGE and entry.size == 1 << 20
    changed = image_entry(
        "changed", facts={"method": "thin_delta"}, digest="ab" * 32, changed_blocks=[0, 15]
    )
    assert protocol.parse_entry(changed).extra["changed_blocks"] == [0, 15]  # type: ignore[index]
    refused = {
        "an image block size of 1000": image_entry(facts={"block_size": 1000}),
        "an image block size of 12288": image_entry(facts={"block_size": 12288}),
        "read by": image_entry(facts={"method": "guess"}),
        "whose facts are": image_entry(facts={"colour": "blue"}),
        "in state 'same'": image_entry("same"),
        "changed blocks are wrong": image_entry("changed", digest="ab" * 32, changed_blocks=[16]),
        "whose digest is": image_entry("changed", digest="ab", changed_blocks=[]),
        "with ['blocks', 'image']": image_entry(blocks="AAAA"),
        "whose bytes_read is": image_entry(facts={"bytes_read": -1}),
        "blocks (at most": image_entry(size=(protocol.MAX_IMAGE_BLOCKS + 1) * 65536),
    }
    for message, item in refused.items():
        with pytest.raises(protocol.Refused, match=re_escape(message)):
            protocol.parse_entry(item)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_zeros_frames_unpack_to_zeros_within_the_limit() -> None:
    assert protocol.unpack_data(protocol.ZEROS + protocol.ZEROS_COUNT.pack(5)) == bytes(5)
    for count in (0, protocol.MAX_DATA + 1):
        with pytest.raises(protocol.Refused, match="a ZEROS frame of"):
            protocol.unpack_data(protocol.ZEROS + protocol.ZEROS_COUNT.pack(count))
    with pytest.raises(protocol.Refused, match="the flag and a u64"):
        protocol.unpack_data(protocol.ZEROS + b"\x01")


def test_image_block_hashes_are_the_helpers(tmp_path: Path) -> None:
    """An image file with a hole and zeros written out: the helper's block hashes (holes
    not read) are what the server computes from the bytes, by the image's block size."""
    block = 16 * 1024
    path = tmp_path / "disk.img"
    with open(path, "wb") as handle:
        handle.truncate(40 * block + 100)
        handle.write(os.urandom(3 * block + 5))
        handle.seek(20 * block)
        handle.write(bytes(2 * block))
        handle.seek(39 * block)
        handle.write(os.urandom(block))
    data = path.read_bytes()
    theirs = a_helper()
    with open(path, "rb", buffering=0) as handle:
        extents = helper._data_extents(handle, len(data))
        blocks, read = theirs.image_hashes(handle, len(data), block, extents, None, b"")
    digest = protocol.ContentDigest(KEY, large=True, block_size=block)
    digest.update(data)
    assert digest.end(len(data)) == theirs.end_document(len(data), None, blocks)
    assert 0 < read < len(data)  # the holes were not read (where the file system has them)


def test_data_extents_count_only_data() -> None:
    extents = [(0, 10), (100, 150), (400, 401)]
    assert helper._extent_bytes(extents, 0, 1000) == 61
    assert helper._extent_bytes(extents, 5, 120) == 25
    assert helper._extent_bytes(extents, 10, 100) == 0
    assert helper._extent_bytes(None, 3, 9) == 6
    assert helper._image_block(65536, 1 << 30) == 65536
    assert helper._image_block(65536, 1 << 40) == 1 << 20  # at most MAX_IMAGE_BLOCKS blocks


def test_an_image_walked_and_fetched_passes_the_checks_and_rebuilds(tmp_path: Path) -> None:
    """The helper's frames for an image file with holes, in the walk (no parent: sent
    whole) and when fetched whole after all (FETCH): every entry and frame passes the
    checks, holes cross as ZEROS, and the bytes and END are the file's."""
    block = 64 * 1024
    disk = tmp_path / "vm" / "disk.img"
    disk.parent.mkdir()
    with open(disk, "wb") as handle:
        handle.truncate(64 * block)
        handle.seek(5 * block + 7)
        handle.write(os.urandom(3 * block))
    data = disk.read_bytes()
    for command in ("walk", "fetch"):
        out = io.BytesIO()
        theirs = helper.Helper(helper.Channel(io.BytesIO(), out))
        theirs.key, theirs.compress_level = KEY, 1
        theirs.images = {str(disk): {"path": str(disk), "block_size": block, "parent": None}}
        theirs.options = {"paths": [str(tmp_path / "vm")], "exclude": []}
        if command == "walk":
            theirs.walk()
        else:
            theirs.fetch(str(disk))
        rebuilt, zeros, end, images = bytearray(), 0, None, []
        for kind, payload in frames_of(out.getvalue()):
            if kind in (protocol.ENTRIES, protocol.START):
                raw = (
                    protocol.inflate(payload, protocol.MAX_INFLATED, "ENTRIES")
                    if kind == protocol.ENTRIES
                    else b"[" + payload + b"]"
                )
                for item in json.loads(raw):
                    entry = protocol.parse_entry(item)
                    if entry.kind == protocol.IMAGE:
                        images.append(entry)
            elif kind == protocol.DATA:
                zeros += payload[:1] == protocol.ZEROS
                rebuilt += protocol.unpack_data(payload)
            elif kind == protocol.END:
                end = protocol.check_end(json.loads(payload))
        assert [e.size for e in images] == [len(data)] and bytes(rebuilt) == data, command
        assert zeros >= 2  # the holes before and after the data
        digest = protocol.ContentDigest(KEY, large=True, block_size=block)
        digest.update(data)
        assert end == digest.end(len(data))
        if command == "walk":
            facts = (images[0].extra or {})["image"]
            assert (facts["method"], facts["source"]) == ("full", "file")
            assert facts["bytes_read"] < len(data)


def test_an_image_file_written_while_it_is_sent_says_so(tmp_path: Path) -> None:
    """An image file that changes while the helper sends it (a running VM's disk, no
    snapshot): its END carries changed_while_read, which the server warns about."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(256 * 1024))

    class Writing(helper.Helper):  # the VM writes while the first block is hashed
        def block_hash(self, data: bytes) -> bytes:
            with open(disk, "ab") as handle:
                handle.write(b"more")
            return super().block_hash(data)

    out = io.BytesIO()
    theirs = Writing(helper.Channel(io.BytesIO(), out))
    theirs.key, theirs.compress_level = KEY, 1
    theirs.images = {str(disk): {"path": str(disk), "block_size": 65536}}
    theirs.fetch(str(disk))
    ends = [json.loads(p) for k, p in frames_of(out.getvalue()) if k == protocol.END]
    facts = protocol.check_end(ends[0])[protocol.CHANGED_WHILE_READ]
    assert facts[0] == facts[2] == 256 * 1024 and facts[3] > facts[0]
