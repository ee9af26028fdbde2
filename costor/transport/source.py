"""What a walk of a host feeds: the engine's host stream
(:class:`costor.store.backup.stream.Ingest`) is one, known here only by this shape
(the transport knows nothing of pools)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from costor.protocol import Entry


class ContentWriter(Protocol):
    """Takes one file's content as it arrives (``digest``: the digest it is proven by)."""

    digest: Any

    def write(self, data: bytes) -> None: ...

    def finish(self, end: dict[str, Any]) -> None: ...


class Consumer(Protocol):
    """Takes a walk's entries in order; for an entry answered with
    :data:`costor.protocol.DATA_FOLLOWS` the content goes to ``content(path)``."""

    key: bytes

    def parent_files(self) -> Iterable[Any]: ...

    def entry(self, entry: Entry) -> str: ...

    def content(self, path: str) -> ContentWriter: ...
