"""Reading one local file for the walk (:mod:`.walk`): opened without touching its
access time, read in bounded pieces, and handed to the chunker with the piece already
read in front; an image (a block device or an image file) read as one stream, the holes
of a sparse file made without reading them."""

from __future__ import annotations

import errno
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


# Zeros copied into the chunker's buffer for a hole, a piece at a time.
_ZEROS = bytes(1024 * 1024)


class ImageReader:
    """A raw reader over bytes ``[0, size)`` of an image (a block device or an image
    file), read with ``pread`` from ``fd``. In a sparse file (``sparse``) the holes
    (``SEEK_DATA``/``SEEK_HOLE``) are not read: their zeros are copied in without I/O.
    ``io_bytes`` counts the bytes actually read. A device or file that ends early ends
    the stream there (the caller compares what came with ``size``)."""

    def __init__(self, fd: int, size: int, *, sparse: bool) -> None:
        self.fd = fd
        self.size = size
        self.sparse = sparse
        self.position = 0
        self.io_bytes = 0
        self.hole_bytes = 0
        # [position, data_end) is known to be data, [position, hole_end) a hole.
        self.data_end = 0 if sparse else size
        self.hole_end = 0

    def readinto(self, buffer: memoryview) -> int:
        want = min(len(buffer), self.size - self.position)
        if want <= 0:
            return 0
        if self.position >= max(self.data_end, self.hole_end):
            self._locate()
        if self.position < self.hole_end:
            count = min(want, self.hole_end - self.position)
            done = 0
            while done < count:
                piece = min(count - done, len(_ZEROS))
                buffer[done : done + piece] = _ZEROS[:piece]
                done += piece
            self.hole_bytes += count
        else:
            wanted = min(want, self.data_end - self.position)
            count = os.preadv(self.fd, [buffer[:wanted]], self.position)
            self.io_bytes += count
            if not count:
                self.size = self.position  # ended early: shrunk while read
        self.position += count
        return count

    def seek(self, position: int) -> None:
        """Go on reading from ``position`` (the chunker restarts there)."""
        self.position = position
        if self.sparse:
            self.data_end = self.hole_end = 0

    def hole_end_at(self, position: int) -> int:
        """Where the hole at ``position`` ends (``position`` itself if it is data, or
        not a sparse file)."""
        if not self.sparse or position >= self.size:
            return position
        try:
            data = os.lseek(self.fd, position, os.SEEK_DATA)
        except OSError as error:
            return self.size if error.errno == errno.ENXIO else position
        return min(data, self.size)

    def _locate(self) -> None:
        """Where the data or hole at ``position`` ends (a file system without
        ``SEEK_DATA`` is read whole)."""
        position = self.position
        try:
            data = os.lseek(self.fd, position, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # no data from here on: a hole to the end
                self.hole_end = self.size
            else:
                self.sparse, self.data_end = False, self.size
            return
        if data > position:
            self.hole_end = min(data, self.size)
            return
        self.data_end = min(os.lseek(self.fd, position, os.SEEK_HOLE), self.size)
        if self.data_end <= position:  # grew meanwhile: read what is there
            self.data_end = self.size
