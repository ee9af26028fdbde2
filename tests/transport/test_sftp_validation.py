"""The SFTP fallback checks what a host's SFTP server lists with the helper's one check
(costor/protocol.py), and bounds each SFTP call by ssh.io_timeout_s. The SFTP
server here is a stand-in answering on a real :class:`costor.transport.ssh.Remote`'s
event loop: a hostile one is what this tests (a real OpenSSH sftp-server never lists a
name with a '/')."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from costor.errors import HostProtocolError, HostTimedOut
from costor.protocol import Entry, ExcludeMatcher
from costor.transport.sftp import SftpWalker
from costor.transport.ssh import Remote, Target


def attrs(kind: int, size: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        permissions=kind | 0o644, uid=0, gid=0, size=size, mtime=1_700_000_000, nlink=1
    )


class File:
    def __init__(self, stall: float, size_after: int = 10) -> None:
        self.stall, self.sent, self.size_after = stall, False, size_after

    async def __aenter__(self) -> File:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self, size: int) -> bytes:
        if self.sent:
            await asyncio.sleep(self.stall)  # the second read stalls (mid-file)
            return b""
        self.sent = True
        return b"x" * 10

    async def stat(self) -> SimpleNamespace:
        return attrs(stat.S_IFREG, self.size_after)  # what fstat says after the reads


class HostileSftp:
    """/srv holds ``names`` (files of 10 bytes); ``stall``: seconds a listing or a read
    of a file waits; ``size_after``: the size an open file's status says."""

    def __init__(
        self,
        names: list[Any],
        *,
        stall_listing: float = 0,
        stall_read: float = 0,
        size_after: int = 10,
    ):
        self.names = names
        self.stall_listing, self.stall_read = stall_listing, stall_read
        self.size_after = size_after

    async def lstat(self, path: str) -> SimpleNamespace:
        return attrs(stat.S_IFDIR) if path == "/srv" else attrs(stat.S_IFREG, 10)

    async def readdir(self, path: str) -> list[SimpleNamespace]:
        await asyncio.sleep(self.stall_listing)
        return [
            SimpleNamespace(filename=name, longname="", attrs=attrs(stat.S_IFREG, 10))
            for name in self.names
        ]

    async def open(self, path: str, mode: str) -> File:
        return File(self.stall_read, self.size_after)


class Sink:
    digest = SimpleNamespace(large=False)

    def __init__(self) -> None:
        self.ended: dict[str, Any] | None = None

    def write(self, data: bytes) -> None:
        pass

    def finish(self, end: dict[str, Any]) -> None:
        self.ended = end


class Recorder:
    """The consumer: takes every entry, wants every file's content."""

    client = "web1"
    key = b"k" * 32
    retry: list[str] = []

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.changed: list[tuple[str, list[int]]] = []

    def parent_files(self) -> list[Any]:
        return []

    def entry(self, entry: Entry) -> str:
        self.entries.append(entry)
        return "data" if entry.kind == "f" else ""

    def content(self, path: str) -> Sink:
        return Sink()

    def changed_while_read(self, path: str, facts: list[int]) -> None:
        self.changed.append((path, facts))


@pytest.fixture
def remote() -> Iterator[Remote]:
    with Remote(Target("web1", "127.0.0.1")) as remote:
        yield remote


def walker(remote: Remote, sftp: HostileSftp, timeout: float = 5) -> tuple[SftpWalker, Recorder]:
    ingest = Recorder()
    found = SftpWalker(remote, sftp, ingest, ["/srv"], ExcludeMatcher([]), io_timeout=timeout)
    return found, ingest


def test_an_ordinary_listing_is_walked(remote: Remote) -> None:
    walk, ingest = walker(remote, HostileSftp([".", "..", "b", b"a\xff", "a"]))
    walk.walk()
    paths = [entry.path for entry in ingest.entries]
    assert paths == ["/", "/srv", "/srv/a", "/srv/a\udcff", "/srv/b"]


@pytest.mark.parametrize(
    ("names", "said"),
    [
        (["a/b"], "host web1 sent an entry named 'a/b' in /srv: refused"),
        (["../../etc"], "host web1 sent an entry named '../../etc' in /srv: refused"),
        ([""], "host web1 sent an entry named '' in /srv: refused"),
        (["a\0b"], "host web1 sent an entry named 'a\\x00b' in /srv: refused"),
        (["x", "x"], "host web1 sent two entries named 'x' in /srv: refused"),
    ],
)
def test_a_hostile_listing_is_refused(remote: Remote, names: list[str], said: str) -> None:
    walk, _ingest = walker(remote, HostileSftp(names))
    with pytest.raises(HostProtocolError) as refused:
        walk.walk()
    assert str(refused.value) == said


def test_a_stalled_listing_times_out(remote: Remote) -> None:
    walk, _ingest = walker(remote, HostileSftp(["a"], stall_listing=30), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(HostTimedOut, match="host web1 sent nothing for 0.5 s: over SFTP"):
        walk.walk()
    assert time.monotonic() - started < 5


def test_a_file_stalled_mid_read_times_out(remote: Remote) -> None:
    walk, _ingest = walker(remote, HostileSftp(["a"], stall_read=30), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(HostTimedOut, match="host web1 sent nothing for 0.5 s: over SFTP"):
        walk.walk()
    assert time.monotonic() - started < 5


def test_a_file_that_changed_while_read_is_reported(remote: Remote) -> None:
    """As the helper reports one: size and mtime as listed, bytes read, the open file's
    status after the read (fstat)."""
    walk, ingest = walker(remote, HostileSftp(["a", "b"]))
    walk.walk()
    assert ingest.changed == []
    walk, ingest = walker(remote, HostileSftp(["a"], size_after=12))
    walk.walk()
    second = 1_700_000_000 * 10**9
    assert ingest.changed == [("/srv/a", [10, second, 10, 12, second])]


def test_an_impossible_file_status_is_refused(remote: Remote) -> None:
    walk, _ingest = walker(remote, HostileSftp(["a"], size_after=2**64 - 1))
    with pytest.raises(HostProtocolError, match="whose changed_while_read is"):
        walk.walk()
