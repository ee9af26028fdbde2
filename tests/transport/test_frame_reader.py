"""The helper's frames as the server reads them ahead (costor/transport/ssh.py
HelperProcess): whole frames cut out of what the channel holds, however the bytes come
(one at a time, many frames at once), in order and counted; a frame's length refused
from its header, before its payload is waited for; an ended channel is a lost
connection, after the frames that came whole."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from costor import protocol
from costor.errors import HostProtocolError, RemoteError
from costor.transport.ssh import HelperProcess, Remote, Target


def frame(kind: bytes, payload: bytes) -> bytes:
    return protocol.FRAME_HEADER.pack(kind, len(payload)) + payload


@pytest.fixture
def remote() -> Iterator[Remote]:
    made = Remote(Target(client="web1", host="web1.example"))
    yield made
    made.close()


def reading(remote: Remote) -> tuple[HelperProcess, asyncio.StreamReader]:
    """A helper whose channel is a stream this test writes to (the event loop's own)."""

    async def stream() -> asyncio.StreamReader:
        return asyncio.StreamReader()

    stdout = remote.run(stream())
    helper = HelperProcess(remote, SimpleNamespace(stdout=stdout))
    helper.io_timeout = 10.0
    helper.start_reading()
    return helper, stdout


def feed(remote: Remote, stdout: asyncio.StreamReader, data: bytes) -> None:
    remote.loop.call_soon_threadsafe(stdout.feed_data, data)


def test_frames_are_cut_whatever_the_reads(remote: Remote) -> None:
    helper, stdout = reading(remote)
    frames = [(protocol.DATA, bytes([i % 256]) * (i * 37 % 5000)) for i in range(300)]
    frames.append((protocol.WALK_DONE, b"{}"))
    wire = b"".join(frame(kind, payload) for kind, payload in frames)
    feed(remote, stdout, wire[:1])  # a header one byte at a time
    feed(remote, stdout, wire[1:2])
    feed(remote, stdout, wire[2:7000])  # frames and a part of one
    feed(remote, stdout, wire[7000:])  # all the rest at once
    received = [helper.recv() for _ in frames]
    assert received == frames
    assert helper.bytes_received == len(wire)
    helper.stop_reading()


@pytest.mark.parametrize("together", [False, True])
def test_a_frame_too_large_is_refused_from_its_header(remote: Remote, together: bool) -> None:
    """The frames before it are taken first, whether they came in the same read or not."""
    helper, stdout = reading(remote)
    good = frame(protocol.DATA, b"x")
    bad = protocol.FRAME_HEADER.pack(protocol.DATA, protocol.MAX_FRAME + 1)
    for piece in [good + bad] if together else [good, bad]:
        feed(remote, stdout, piece)
    assert helper.recv() == (protocol.DATA, b"x")
    with pytest.raises(HostProtocolError, match="at most"):
        helper.recv()  # no payload was sent: the header alone is refused
    with pytest.raises(HostProtocolError):
        helper.recv()  # and every later read fails the same way


def test_an_ended_channel_is_a_lost_connection_after_the_whole_frames(remote: Remote) -> None:
    helper, stdout = reading(remote)
    feed(remote, stdout, frame(protocol.END, b"{}") + frame(protocol.DATA, b"abc")[:6])
    remote.loop.call_soon_threadsafe(stdout.feed_eof)
    assert helper.recv() == (protocol.END, b"{}")
    with pytest.raises(RemoteError, match="connection to the helper was lost"):
        helper.recv()
