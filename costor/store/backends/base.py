"""The backend protocol: what the pool needs from storage, and nothing more.

Contract (every implementation passes ``tests/store/backends/test_contract.py``):

* **Names** are relative, ``/``-separated paths (``packs/6e/fa/6efa…``); no ``..``, no
  leading ``/``, no empty component. ``validate_name`` enforces this.
* **put(name, data)** is atomic: a reader sees either nothing or the whole object, never a
  prefix, even if the writer is killed mid-way. It is idempotent: putting the same bytes
  under the same name again succeeds and changes nothing. Objects in a pool are immutable
  and content-named, so putting *different* bytes under an existing name is a caller bug;
  backends may overwrite or keep the old object.
* **get / get_range** raise :class:`costor.errors.ObjectNotFound` for a missing object.
  ``get_range`` returns exactly ``length`` bytes or raises ``BackendError`` (a short read
  is :class:`costor.errors.ObjectTruncated`, damage: never silently fewer bytes).
* **list(prefix)** yields every object whose name starts with ``prefix`` with its size,
  in no particular order. An object whose ``put`` completed before ``list`` began is
  included.
* **delete(name)** removes an object; deleting a missing object is not an error.
* Storage running out of space raises :class:`costor.errors.StorageFull`; any other
  failure raises :class:`costor.errors.BackendError` with the object name.
* Implementations are safe to call from several threads at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from costor.errors import BackendError


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Backend(Protocol):
    """Raw object storage. See the module docstring for the contract."""

    location: str

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None: ...

    def get(self, name: str) -> bytes: ...

    def get_range(self, name: str, offset: int, length: int) -> bytes: ...

    def exists(self, name: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...


def validate_name(name: str) -> str:
    """Refuse names that could escape the pool (``..``, absolute, empty parts)."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise BackendError(name=name, reason="invalid object name")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise BackendError(name=name, reason="invalid object name")
    return name


class ForwardingBackend:
    """Base for wrappers ("wrap, don't flag"): every operation goes to ``inner``
    unchanged; a wrapper overrides only what it changes."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self.inner.put(name, data)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(name, offset, length)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)
