"""A file that changes while the walk reads it is stored with a warning naming it (its
copy may mix old and new contents; the next backup reads it again), not silently
(issue 19, item 13)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.fixtures import appending, make_pool

from costor.store.backup.common import changed_while_read
from costor.store.backup.walk import Archiver


def test_the_rule_on_real_file_status(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    before = os.lstat(path)
    assert changed_while_read(b"f", 100, before.st_mtime_ns, 100, os.stat(path)) is None
    time.sleep(0.01)
    with open(path, "ab") as handle:
        handle.write(b"more")
    grown = changed_while_read(b"f", 100, before.st_mtime_ns, 100, os.stat(path))
    assert grown is not None and grown["severity"] == "warning"
    assert "changed while it was being read" in grown["error"]
    short = changed_while_read(b"f", 100, before.st_mtime_ns, 60, os.stat(path))
    assert short is not None and "100 bytes before, 60 read" in short["error"]


def test_a_file_appended_to_during_the_backup_is_named(tmp_path: Path) -> None:
    """A real writer appends to a large file while the backup reads it."""
    source = tmp_path / "src"
    source.mkdir()
    busy = source / "busy.log"
    busy.write_bytes(os.urandom(64 * 1024 * 1024))
    pool = make_pool(tmp_path / "pool")
    archiver = Archiver(pool, client="alpha", paths=[str(source)], workers=2)
    with appending(busy):
        snapshot = archiver.run()
    warnings = [e for e in archiver.errors if e.get("severity") == "warning"]
    assert [w["path"] for w in warnings] == [str(busy)]
    assert snapshot.counters["files_failed"] == 0  # stored: a warning, not a failure
