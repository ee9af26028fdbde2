"""Registers the shared fixtures (tests/support) for every test; helpers are imported
from ``support.<module>``, never from here.

Parallel runs (pytest-xdist: ``scripts/test.sh`` runs ``-n 2 --dist loadgroup``): each
test file runs whole on one worker, so that its module-scoped servers and sites are set
up once, and every file that uses block devices (loop devices, LVM, device-mapper, file
systems made with mkfs) runs on one and the same worker, one file after the other:
loop devices, volume groups and mounts are global on the machine. A file counts as one
when its text names one of :data:`DEVICE_WORDS`. Files start longest first
(:data:`LONG_FILES`, measured), so that no long file is left to start last.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["support.inventory", "support.fixtures"]

TESTS = Path(__file__).resolve().parent

DEVICE_WORDS = re.compile(
    rb"loopdev|loop_device|losetup|/dev/loop|/dev/mapper|dmsetup|lvcreate|vgcreate|pvcreate"
    rb'|mkfs|fsfreeze|"u?mount"|\bmount\('
)
DEVICES = "devices"

# The slowest files (relative to tests/), slowest first: they start first. The devices
# group starts first of all.
LONG_FILES: tuple[str, ...] = ()


def _group(path: Path, cache: dict[Path, str]) -> str:
    if path not in cache:
        try:
            uses_devices = DEVICE_WORDS.search(path.read_bytes()) is not None
        except OSError:
            uses_devices = False
        cache[path] = DEVICES if uses_devices else str(path.relative_to(TESTS))
    return cache[path]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # not an xdist worker: nothing to group
    cache: dict[Path, str] = {}
    groups = {item: _group(item.path, cache) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    first = {name: rank for rank, name in enumerate((DEVICES, *LONG_FILES))}
    items.sort(key=lambda item: first.get(groups[item], len(first)))  # stable: else as collected
