"""What a walk of a host feeds: the engine's host stream
(:class:`costor.store.backup.stream.Ingest`) is one, known here only by this shape
(the transport knows nothing of pools)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from costor.protocol import Entry


class ContentWriter(Protocol):
    """Takes one file's content as it arrives (``digest``: the digest it is proven by):
    whole (``write``) or, for a delta, changed blocks at their offsets (``block``)."""

    digest: Any
    ingest: Any  # the Consumer it writes for
    path: str
    limit: int | None  # an image's size: its content is never longer (None: a file's)

    def write(self, data: bytes) -> None: ...

    def block(self, offset: int, data: bytes) -> None: ...

    def finish(self, end: dict[str, Any]) -> None: ...


class Consumer(Protocol):
    """Takes a walk's entries in order; for an entry answered with
    :data:`costor.protocol.DATA_FOLLOWS` the content goes to ``content(path)``. After
    the walk, ``missing`` is what it still needs (deltas, whole files, ``retry``), asked
    for by ``delta_request`` and received through ``restart``."""

    client: str
    key: bytes
    retry: list[str]

    def parent_files(self) -> Iterable[Any]: ...

    def entry(self, entry: Entry) -> str: ...

    def content(self, path: str) -> ContentWriter: ...

    def changed_while_read(self, path: str, facts: list[int]) -> None: ...

    def omitted(self, files: int, size: int, dirs: int) -> None: ...

    def carry(
        self, fingerprints: bytes, seen: bytes, dir_hashes: bytes, dirs_seen: bytes
    ) -> None: ...

    def missing(self) -> Any: ...

    def delta_request(self, path: str) -> list[Any]: ...

    def restart(self, entry: Entry) -> ContentWriter | None: ...
