"""Registers the shared fixtures (tests/support) for every test; helpers are imported
from ``support.<module>``, never from here.

Parallel runs (pytest-xdist: ``scripts/test.sh`` runs ``-n 2 --dist loadfile``; plain
``-n N`` is scheduled the same way): each test file runs whole on one worker, so that
its module-scoped servers and sites are set up once, and every file that uses block
devices (loop devices, LVM, device-mapper, file systems made with mkfs, mounts) runs on
one and the same worker, one file after the other: loop devices, volume groups and
mounts are global on the machine. A file counts as one when its text names one of
:data:`DEVICE_WORDS`. The device files start first, then :data:`LONG_FILES` (the
slowest, measured), so that no long file starts last.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["support.inventory", "support.fixtures"]

TESTS = Path(__file__).resolve().parent

DEVICE_WORDS = re.compile(
    rb"loopdev|loop_device|losetup|/dev/loop|/dev/mapper|dmsetup|lvcreate|vgcreate|pvcreate"
    rb'|mkfs|fsfreeze|"u?mount"|\bmount\('
)
DEVICES = "devices"

# The slowest files (relative to tests/), slowest first: they start right after the
# device files. Measured (`--durations`, 2 workers, 2026-12): 15-45 s each; a file
# missing here only starts in its collection order.
LONG_FILES: tuple[str, ...] = (
    "cli/test_daemon.py",
    "ui/test_ui_e2e.py",
    "server/test_remote_cli.py",
    "server/test_events.py",
    "transport/test_ssh_pull.py",
    "server/test_objects.py",
    "cli/test_plan_apply.py",
    "server/test_actions.py",
    "transport/test_busy_host.py",
    "store/test_retention.py",
    "server/test_downloads.py",
    "transport/test_sparse_walk.py",
)

_groups: dict[Path, str] = {}


def group_of(path: Path) -> str:
    """The worker group of a test file: "devices", or the file (relative to tests/)."""
    path = path.resolve()
    if path not in _groups:
        try:
            uses_devices = DEVICE_WORDS.search(path.read_bytes()) is not None
        except OSError:
            uses_devices = False
        relative = path.relative_to(TESTS) if path.is_relative_to(TESTS) else path
        _groups[path] = DEVICES if uses_devices else str(relative)
    return _groups[path]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the files in the order they are to start (the controller's
    scheduler hands out groups in the order of the workers' collection)."""
    if not hasattr(config, "workerinput"):
        return
    first = {name: rank for rank, name in enumerate((DEVICES, *LONG_FILES))}
    items.sort(key=lambda item: first.get(group_of(item.path), len(first)))  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` (and plain ``-n N``, whose default is ``load``: device tests
    must not run side by side however the suite is started), with the device files as
    one unit, in the order of the workers' collection (see the module's note). Not
    xdist's ``loadgroup``: with pytest 9 its marks no longer reach the scheduler."""
    if config.getvalue("dist") not in ("load", "loadfile"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # our order, not the largest file first

    root = Path(str(config.rootpath))

    class FileOrDevices(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(root / nodeid.split("::", 1)[0])

    return FileOrDevices(config, log)
