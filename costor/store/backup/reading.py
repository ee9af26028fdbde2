"""Reading one local file for the walk (:mod:`.walk`): opened without touching its
access time, read in bounded pieces, and handed to the chunker with the piece already
read in front."""

from __future__ import annotations

import os


def read_up_to(fd: int, limit: int) -> bytes:
    parts = []
    remaining = limit
    while remaining:
        data = os.read(fd, remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts) if len(parts) != 1 else parts[0]


class PrefixedReader:
    """A raw reader over an fd whose first bytes were already read."""

    def __init__(self, head: bytes, fd: int) -> None:
        self.head = memoryview(head)
        self.fd = fd

    def readinto(self, buffer: memoryview) -> int:
        if self.head:
            count = min(len(buffer), len(self.head))
            buffer[:count] = self.head[:count]
            self.head = self.head[count:]
            return count
        return os.readv(self.fd, [buffer])


def open_noatime(path: bytes) -> int:
    # O_NOATIME keeps backups from touching access times; only the owner or root may
    # use it, so fall back to a plain open.
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0)
    try:
        return os.open(path, flags)
    except PermissionError:
        return os.open(path, os.O_RDONLY)
