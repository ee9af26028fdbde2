"""Profiles: shared client settings kept in ``profiles/NAME.toml``.

Where they are looked up: the directories of ``[costor] profile_paths`` (default
``profiles`` next to the inventory), in order, then the profiles shipped with CoStor
(``costor/profiles/``: ``linux-server``, ``postgresql``, ``mysql``), so that an installed
CoStor has them without copying them. A file of the same name in a searched directory
replaces a shipped one.

A profile file holds client keys at its top level (``exclude = […]``,
``one_file_system = true``). A client's ``profiles = ["a", "b"]`` are applied in order,
then the client's own keys:

- tables merge key by key (recursively);
- scalars are replaced: the last one written wins, the client's own over any profile's;
- arrays compose: ``exclude``, ``paths``, ``images``, ``hooks.before``, ``hooks.after`` from the
  profiles and the client are concatenated in that order, and an entry already there
  is not added again (the first one keeps its place). ``profiles = ["linux-server",
  "postgresql"]`` excludes both profiles' paths and runs both profiles' hooks, then the
  client's;
- an entry ``"!X"`` removes the entry ``X`` that an earlier profile brought in
  (``exclude = ["!/var/tmp"]`` backs up /var/tmp although ``linux-server`` excludes it);
  the entry ``"!"`` alone drops everything brought in before it, so ``exclude = ["!",
  "*.tmp"]`` states the complete list. Removal compares the entries' text exactly (it
  is not a pattern match, and not a re-include of paths below an excluded directory;
  an ``images`` entry written as a table is removed by its ``path``);
  a ``"!X"`` that removes nothing is reported as a warning (a typo, or a profile that no
  longer has ``X``). An entry that really starts with ``!`` is written ``\\!`` (TOML
  ``"\\\\!name"`` or ``'\\!name'``), as in ``.gitignore``; ``!`` followed by a space is
  not special, so a shell hook ``"! test -e /x"`` is an ordinary command.

Why this rule: whoever combines ``linux-server`` with ``postgresql`` means both lists, as
borgmatic (the usual front end of Borg) appends lists from included files, Ansible's
``combine(list_merge="append_rp")`` appends without duplicates and Kubernetes'
strategic merge patch merges lists of names. The way to drop one inherited entry
follows borgmatic's ``!omit`` and ``.gitignore``'s ``!``; the lone ``"!"`` is rsync's
filter rule that clears the list. TOML has no tags (borgmatic's ``!omit``/``!retain``
are YAML tags), so the marker lives in the string, and a new key (``replace = […]``)
was not needed. The ``profiles`` key itself is taken as written.

The merge also records, for every key and array element it produces, which file
supplied it and where in that file it is (an element moves when arrays are
concatenated), so that a diagnostic about ``clients.web1.exclude[14]`` points at the
``exclude`` entry in the profile file that wrote it (:meth:`Origins.source_path`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costor.config.positions import KeyPath, PositionMap

# The profiles shipped with CoStor (package data): searched after the inventory's own.
SHIPPED_PROFILES = Path(__file__).parent.parent / "profiles"

# Keys of a client that are not composed: taken as the client wrote them.
_NOT_COMPOSED = frozenset({"profiles"})

# "!X" (X not starting with white space) removes X; "!" alone removes everything.
_REMOVE = re.compile(r"^!(?!\s)")


class Origins(dict[KeyPath, str | None]):
    """Relative key path inside a client -> profile name that supplied it (None: the
    client's own table in the inventory).

    ``moved`` maps the array elements whose place in the file that wrote them differs
    from their place in the merged client (concatenation, duplicates, removals) to the
    path they have in that file.
    """

    def __init__(self) -> None:
        super().__init__()
        self.moved: dict[KeyPath, KeyPath] = {}

    def source_path(self, path: KeyPath) -> KeyPath:
        """Where ``path`` (relative to the merged client) is in the file that wrote it,
        relative to the client's table there (a profile file's top level)."""
        for end in range(len(path), 0, -1):
            moved = self.moved.get(path[:end])
            if moved is not None:
                return (*moved, *path[end:])
        return path


@dataclass(frozen=True)
class MergeProblem:
    """A finding of the merge, placed where it was written: ``origin`` is the profile
    (None: the client's table) and ``path`` the key path inside it."""

    origin: str | None
    path: KeyPath
    message: str
    severity: str = "warning"


@dataclass(frozen=True)
class Profile:
    name: str
    file: str  # as shown in diagnostics
    path: Path  # absolute
    data: dict[str, Any]
    positions: PositionMap


def find_profile_files(
    directories: list[Path], *, shipped: Path | None = None
) -> list[tuple[str, Path]]:
    """``(name, file)`` for each ``*.toml`` in ``directories``, in search order; then,
    with ``shipped`` (:data:`SHIPPED_PROFILES`), each file there whose name no directory
    has.

    A name found in an earlier directory hides the same name in a later one, like a
    command on ``$PATH``; the caller reports the hidden ones. A shipped profile is a
    fallback, not a directory of the user's: one of the same name replaces it without a
    word (that is how a site adapts ``linux-server``).
    """
    found: list[tuple[str, Path]] = []
    for directory in directories:
        if directory.is_dir():
            found.extend((file.stem, file) for file in sorted(directory.glob("*.toml")))
    if shipped is not None and shipped.is_dir():
        names = {name for name, _file in found}
        found.extend(
            (file.stem, file) for file in sorted(shipped.glob("*.toml")) if file.stem not in names
        )
    return found


def merge_client(
    client: dict[str, Any],
    profiles: list[Profile],
    problems: list[MergeProblem] | None = None,
) -> tuple[dict[str, Any], Origins]:
    """The client's table with ``profiles`` applied under it, and where each key came from.

    Findings (a ``"!X"`` that removes nothing) are appended to ``problems`` if given.
    """
    merged: dict[str, Any] = {}
    origins = Origins()
    found: list[MergeProblem] = []
    for profile in profiles:
        _merge_into(merged, profile.data, origins, profile.name, (), found)
    _merge_into(merged, client, origins, None, (), found)
    _finish_arrays(merged, origins, ())
    if problems is not None:
        problems.extend(found)
    return merged, origins


class _Composed(list[Any]):
    """An array being composed: its elements, each with the origin and the path in that
    origin's file that wrote it (replaced by a plain list when the merge is done)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[str | None, KeyPath]] = []


def _merge_into(
    target: dict[str, Any],
    source: dict[str, Any],
    origins: Origins,
    origin: str | None,
    prefix: KeyPath,
    problems: list[MergeProblem],
) -> None:
    for key, value in source.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            # A table: merged into the one already there (or a new one), so that arrays
            # in it compose too. The table itself now belongs to the later source (a
            # missing key in it is reported there); keys already in it keep their own
            # origins.
            if not isinstance(target.get(key), dict):
                _forget(origins, path)
                target[key] = {}
            origins[path] = origin
            _merge_into(target[key], value, origins, origin, path, problems)
            continue
        if isinstance(value, list) and path[0] not in _NOT_COMPOSED:
            composed = target.get(key)
            if not isinstance(composed, _Composed):
                composed = _Composed()
                _forget(origins, path)
                target[key] = composed
            _compose(composed, value, origin, path, problems)
            origins[path] = origin  # the array as a whole: its latest writer
            continue
        _forget(origins, path)
        target[key] = copy.deepcopy(value)
        _record_origins(value, path, origins, origin)


def _compose(
    composed: _Composed,
    entries: list[Any],
    origin: str | None,
    path: KeyPath,
    problems: list[MergeProblem],
) -> None:
    """Add ``entries`` (written by ``origin`` at ``path``) to ``composed``."""
    for index, entry in enumerate(entries):
        where = (*path, index)
        if isinstance(entry, str) and _REMOVE.match(entry):
            removed = entry[1:]
            if not removed:
                del composed[:], composed.written[:]
                continue
            kept = [i for i, item in enumerate(composed) if not _names(item, removed)]
            if len(kept) == len(composed):
                problems.append(
                    MergeProblem(
                        origin,
                        where,
                        f"{entry!r} removes nothing: nothing before it brings in "
                        f"{removed!r} (an entry that starts with a real '!' is written '\\!')",
                    )
                )
                continue
            composed[:] = [composed[i] for i in kept]
            composed.written[:] = [composed.written[i] for i in kept]
            continue
        if isinstance(entry, str) and entry.startswith("\\!"):
            entry = entry[1:]
        if entry in composed:
            continue
        composed.append(copy.deepcopy(entry))
        composed.written.append((origin, where))


def _names(item: Any, removed: str) -> bool:
    """Whether ``"!removed"`` removes ``item``: an entry of that text, or a table entry
    of that ``path`` (``images = [{ path = "/dev/x", … }]`` is removed by ``"!/dev/x"``)."""
    return item == removed or (isinstance(item, dict) and item.get("path") == removed)


def _finish_arrays(target: dict[str, Any], origins: Origins, prefix: KeyPath) -> None:
    """Composed arrays become plain lists; each element's origin is recorded."""
    for key, value in target.items():
        path = (*prefix, key)
        if isinstance(value, dict):
            _finish_arrays(value, origins, path)
        elif isinstance(value, _Composed):
            for index, (origin, written) in enumerate(value.written):
                merged_path = (*path, index)
                _record_origins(value[index], merged_path, origins, origin)
                if written != merged_path:
                    origins.moved[merged_path] = written
            target[key] = list(value)


def _forget(origins: Origins, path: KeyPath) -> None:
    for stale in [p for p in origins if p[: len(path)] == path]:
        del origins[stale]
    for stale in [p for p in origins.moved if p[: len(path)] == path]:
        del origins.moved[stale]


def _record_origins(value: Any, path: KeyPath, origins: Origins, origin: str | None) -> None:
    origins[path] = origin
    if isinstance(value, dict):
        for key, item in value.items():
            _record_origins(item, (*path, key), origins, origin)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _record_origins(item, (*path, index), origins, origin)
