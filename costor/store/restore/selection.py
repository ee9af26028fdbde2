"""Which entries of a snapshot a restore (or an archive) keeps: restic-like
``--include``/``--exclude`` on paths inside the snapshot."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence

from costor.errors import UsageError


class Selection:
    """restic-like ``--include``/``--exclude`` on paths inside the snapshot.

    A pattern is cut at ``/`` into components, each matched with shell wildcards
    (``*``, ``?``, ``[...]``, which never match ``/``); ``**`` matches any number of
    components. A pattern starting with ``/`` is anchored at the snapshot's root; any
    other matches at any depth (``*.log`` is ``/**/*.log``). A pattern that matches a
    directory matches everything in it. An entry is selected when no exclude matches
    it and, if there are includes, one of them does; the directories leading to a
    selected entry are restored too.
    """

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.include = [self._parse(p) for p in include]
        self.exclude = [self._parse(p) for p in exclude]

    @property
    def everything(self) -> bool:
        return not self.include and not self.exclude

    @staticmethod
    def _parse(pattern: str) -> list[bytes]:
        raw = os.fsencode(pattern)
        parts = [part for part in raw.split(b"/") if part]
        if not parts:
            raise UsageError(message=f"empty pattern {pattern!r}")
        return parts if raw.startswith(b"/") else [b"**", *parts]

    def selected(self, path: bytes) -> bool:
        """``path``: absolute, inside the snapshot (``b"/srv/www/index.html"``)."""
        parts = [part for part in path.split(b"/") if part]
        if any(_matches(pattern, parts) for pattern in self.exclude):
            return False
        return not self.include or any(_matches(pattern, parts) for pattern in self.include)


def _matches(pattern: Sequence[bytes], parts: Sequence[bytes]) -> bool:
    """Does ``pattern`` match ``parts`` or a directory above it (a prefix of it)?"""

    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return True  # the pattern matched parts[:j]: parts is that or inside it
        if pattern[i] == b"**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pattern[i]) and match(i + 1, j + 1)

    return match(0, 0)
