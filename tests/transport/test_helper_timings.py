"""The helper says where its walk's time went (WALK_DONE's "seconds": bench/ssh.py's
breakdown of a pull on the host's side), next to its counters."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from costor import protocol
from costor.transport import helper

KEY = bytes(range(32))


def frames_of(data: bytes) -> list[tuple[bytes, bytes]]:
    frames, at = [], 0
    while at < len(data):
        kind, length = protocol.FRAME_HEADER.unpack(data[at : at + 5])
        frames.append((kind, data[at + 5 : at + 5 + length]))
        at += 5 + length
    return frames


def test_walk_done_carries_the_hosts_seconds(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_bytes(b"INFO a line that repeats\n" * 50_000)
    (tmp_path / "random.bin").write_bytes(os.urandom(3 * helper.BLOCK_SIZE))
    out = io.BytesIO()
    walker = helper.Helper(helper.Channel(io.BytesIO(), out))
    walker.key, walker.compress_level = KEY, 1
    walker.options = {"paths": [str(tmp_path)], "exclude": []}
    walker.walk()
    frames = frames_of(out.getvalue())
    kind, payload = frames[-1]
    assert kind == protocol.WALK_DONE
    done = json.loads(payload)
    assert done["files"] == 2 and done["sent"] == 2  # the counters, as before
    seconds = done["seconds"]
    assert set(seconds) == {"walk", "read_hash", "compress", "write"}
    assert all(isinstance(value, float) and value >= 0 for value in seconds.values())
    assert seconds["compress"] > 0  # the text was deflated
    assert seconds["read_hash"] > 0  # 4 MiB read and hashed
    assert seconds["walk"] >= seconds["read_hash"] + seconds["compress"]
