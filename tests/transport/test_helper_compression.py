"""What the helper deflates before sending (costor/transport/helper.py ``send_data``):
data whose first KiB looks random is sent as it is without trying zlib on it; other
data is deflated when that shrinks it; either way the server reads back the same bytes
(costor/protocol.py ``unpack_data``)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from costor import protocol
from costor.transport import helper

KEY = bytes(range(32))


def a_helper(out: io.BytesIO) -> helper.Helper:
    made = helper.Helper(helper.Channel(io.BytesIO(), out))
    made.key = KEY
    made.compress_level = 1
    return made


def frames_of(data: bytes) -> list[tuple[bytes, bytes]]:
    frames, at = [], 0
    while at < len(data):
        kind, length = protocol.FRAME_HEADER.unpack(data[at : at + 5])
        frames.append((kind, data[at + 5 : at + 5 + length]))
        at += 5 + length
    return frames


def sent(data: bytes) -> tuple[bytes, bool, bytes]:
    """The flag of the one DATA frame ``data`` went out as, whether the helper would
    try compressing the file's next frames, and the bytes the server reads back."""
    out = io.BytesIO()
    keep_trying = a_helper(out).send_data(helper.DATA, b"", data, True)
    ((kind, payload),) = frames_of(out.getvalue())
    assert kind == protocol.DATA
    return payload[:1], keep_trying, protocol.unpack_data(payload)


def test_text_is_deflated() -> None:
    text = b"".join(b"%06d INFO request served in %d ms\n" % (i, i % 97) for i in range(300))
    flag, keep_trying, back = sent(text)
    assert (flag, keep_trying, back) == (protocol.ZLIB, True, text)


def test_random_looking_data_is_sent_as_it_is_without_trying_zlib() -> None:
    # Its first KiB holds every byte value (random-looking), the rest is zeros: zlib
    # would shrink it, so only the sample rule sends it raw.
    data = bytes(range(256)) * 4 + bytes(7 * 1024)
    flag, keep_trying, back = sent(data)
    assert (flag, keep_trying, back) == (b"\x00", False, data)


def test_random_data_is_sent_raw_and_not_tried_again() -> None:
    data = os.urandom(64 * 1024)
    flag, keep_trying, back = sent(data)
    assert (flag, keep_trying, back) == (b"\x00", False, data)


def test_short_data_is_judged_by_zlib_alone() -> None:
    # Shorter than the sample: its distinct values say little, zlib decides.
    data = bytes(range(256)) + b"a" * 500
    flag, _keep_trying, back = sent(data)
    assert (flag, back) == (protocol.ZLIB, data)


def test_a_random_file_pulls_back_whole(tmp_path: Path) -> None:
    """A whole file through send_content: random first MiB, text after it: the first
    frame raw, and the file's next frames not tried (one verdict per file)."""
    path = tmp_path / "mixed"
    content = os.urandom(helper.BLOCK_SIZE) + b"text " * 100_000
    path.write_bytes(content)
    out = io.BytesIO()
    a_helper(out).send_content(str(path), os.lstat(path), want_blocks=False)
    frames = frames_of(out.getvalue())
    data = [payload for kind, payload in frames if kind == protocol.DATA]
    assert [payload[:1] for payload in data] == [b"\x00", b"\x00"]
    assert b"".join(protocol.unpack_data(payload) for payload in data) == content
    assert frames[-1][0] == protocol.END
