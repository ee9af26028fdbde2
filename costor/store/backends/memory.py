"""An in-memory backend: for tests and as the reference implementation of the contract."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from costor.errors import ObjectNotFound, ObjectTruncated
from costor.store.backends.base import ObjectInfo, validate_name


class MemoryBackend:
    def __init__(self) -> None:
        self.location = "memory:"
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            self._objects[validate_name(name)] = bytes(data)

    def get(self, name: str) -> bytes:
        with self._lock:
            try:
                return self._objects[validate_name(name)]
            except KeyError:
                raise ObjectNotFound(name=name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        data = self.get(name)[offset : offset + length]
        if len(data) != length:
            raise ObjectTruncated(name=name, got=len(data), length=length, offset=offset)
        return data

    def exists(self, name: str) -> bool:
        with self._lock:
            return validate_name(name) in self._objects

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = [(n, len(d)) for n, d in self._objects.items() if n.startswith(prefix)]
        for name, size in items:
            yield ObjectInfo(name, size)

    def delete(self, name: str) -> None:
        with self._lock:
            self._objects.pop(validate_name(name), None)
