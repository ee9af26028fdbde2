"""Profiles: shared client settings kept in ``profiles/NAME.toml``.

A profile file holds client keys at its top level (``exclude = […]``,
``one_file_system = true``). A client's ``profiles = ["a", "b"]`` are applied in order,
then the client's own keys: tables merge key by key (recursively), arrays and scalars are
replaced whole — so a client that sets ``exclude`` states its complete list, and no
special syntax is needed to drop an entry a profile brought in.

The merge also records, for every key it produces, which file supplied it, so that a
diagnostic about ``clients.web1.exclude[3]`` points into the profile file that wrote it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costor.config.positions import KeyPath, PositionMap

# Relative key path inside a client -> profile name that supplied it (None: the client).
Origins = dict[KeyPath, str | None]


@dataclass(frozen=True)
class Profile:
    name: str
    file: str  # as shown in diagnostics
    path: Path  # absolute
    data: dict[str, Any]
    positions: PositionMap


def find_profile_files(directories: list[Path]) -> list[tuple[str, Path]]:
    """``(name, file)`` for each ``*.toml`` in ``directories``, in search order.

    A name found in an earlier directory hides the same name in a later one, like a
    command on ``$PATH``; the caller reports the hidden ones.
    """
    found: list[tuple[str, Path]] = []
    for directory in directories:
        if directory.is_dir():
            found.extend((file.stem, file) for file in sorted(directory.glob("*.toml")))
    return found


def merge_client(client: dict[str, Any], profiles: list[Profile]) -> tuple[dict[str, Any], Origins]:
    """The client's table with ``profiles`` applied under it, and where each key came from."""
    merged: dict[str, Any] = {}
    origins: Origins = {}
    for profile in profiles:
        _merge_into(merged, profile.data, origins, profile.name, ())
    _merge_into(merged, client, origins, None, ())
    return merged, origins


def _merge_into(
    target: dict[str, Any],
    source: dict[str, Any],
    origins: Origins,
    origin: str | None,
    prefix: KeyPath,
) -> None:
    for key, value in source.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            # Both sides have a table: merge inside it. The table itself now belongs to
            # the later source (a missing key in it is reported there); keys already in
            # it keep their own origins.
            origins[path] = origin
            _merge_into(target[key], value, origins, origin, path)
            continue
        for stale in [p for p in origins if p[: len(path)] == path]:
            del origins[stale]
        target[key] = copy.deepcopy(value)
        _record_origins(value, path, origins, origin)


def _record_origins(value: Any, path: KeyPath, origins: Origins, origin: str | None) -> None:
    origins[path] = origin
    if isinstance(value, dict):
        for key, item in value.items():
            _record_origins(item, (*path, key), origins, origin)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _record_origins(item, (*path, index), origins, origin)
