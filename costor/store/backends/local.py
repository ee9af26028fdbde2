"""A pool in a local directory (or any mounted filesystem).

Atomic puts: data goes to a uniquely named temporary file in the target directory, is
fsynced, then renamed over the final name (rename is atomic on POSIX), and the directory
is fsynced so the name survives a power cut. A killed writer leaves only ``*.tmp-*``
files, which ``list`` ignores and ``cleanup_temporaries`` removes.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from costor.errors import BackendError, ObjectNotFound, ObjectTruncated, StorageFull
from costor.store.backends.base import ObjectInfo, validate_name

_TMP_MARK = ".tmp-"
_OPEN_PACKS_PER_THREAD = 16


class LocalBackend:
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.fsync = fsync
        self._handles = threading.local()

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(name)
        tmp = path.with_name(f"{path.name}{_TMP_MARK}{uuid.uuid4().hex[:12]}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            if self.fsync:
                dir_fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as error:
            try:
                tmp.unlink()
            except OSError:
                pass
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(name=name, reason=error.strerror) from error
            raise BackendError(name=name, reason=str(error)) from error

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError as error:
            raise ObjectNotFound(name=name) from error
        except OSError as error:
            raise BackendError(name=name, reason=str(error)) from error

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        handle = self._open_cached(name)
        try:
            data = os.pread(handle.fileno(), length, offset)
        except OSError as error:
            raise BackendError(name=name, reason=str(error)) from error
        if len(data) != length:
            raise ObjectTruncated(name=name, got=len(data), length=length, offset=offset)
        return data

    def _open_cached(self, name: str) -> io.FileIO:
        """Restores read many blobs from each pack: opening the pack once per blob cost
        ~19% of restore time (py-spy). Each thread keeps its own small LRU of open
        packs, so no descriptor is ever closed under another thread's read; objects
        are immutable, so a cached handle never reads stale data. Handles close when
        evicted or when their thread ends."""
        cache: OrderedDict[str, io.FileIO] | None = getattr(self._handles, "cache", None)
        if cache is None:
            cache = self._handles.cache = OrderedDict()
        handle = cache.get(name)
        if handle is not None:
            cache.move_to_end(name)
            return handle
        try:
            handle = io.FileIO(self._path(name), "r")
        except FileNotFoundError as error:
            raise ObjectNotFound(name=name) from error
        except OSError as error:
            raise BackendError(name=name, reason=str(error)) from error
        cache[name] = handle
        if len(cache) > _OPEN_PACKS_PER_THREAD:
            cache.popitem(last=False)[1].close()
        return handle

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix points into, not the whole pool.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if not start.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            for filename in filenames:
                if _TMP_MARK in filename:
                    continue
                name = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if not name.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, filename)).st_size
                except FileNotFoundError:
                    continue
                yield ObjectInfo(name, size)

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            raise BackendError(name=name, reason=str(error)) from error

    def cleanup_temporaries(self) -> int:
        """Remove temporary files left by killed writers; returns how many."""
        removed = 0
        for dirpath, _dirs, filenames in os.walk(self.root):
            for filename in filenames:
                if _TMP_MARK in filename:
                    try:
                        os.unlink(os.path.join(dirpath, filename))
                        removed += 1
                    except OSError:
                        pass
        return removed
