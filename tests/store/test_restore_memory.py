"""A restore's memory does not grow with the number of files (issue 22).

Restoring a 1,000,000-file snapshot once took 3.0 GB: every entry of the snapshot was
listed before the first was written, and every file kept a future (with its lock) until
the end. The restore now walks the trees as it writes and hands files to the writers in
bounded batches. Measured here with tracemalloc (the Python allocations of the restore
alone, after the index is loaded), between 2,500 and 10,000 files (both more than the
~2,000 files the walk queues ahead of the writers, walk.py): holding every entry and a
future per file cost ~3,200 bytes a file more; what may still grow is the pool's cache of
read windows, which holds the whole of so small a pool (~110-150 bytes a file here). A
bound on memory within one process, never a time, so it cannot flake with load.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from support.fixtures import make_pool, open_pool

from costor.store.backup.walk import Archiver
from costor.store.restore.directory import Restorer

FILES_PER_DIR = 50


def _tree(root: Path, files: int) -> None:
    for number in range(files):
        directory = root / f"d{number // FILES_PER_DIR:04d}"
        if number % FILES_PER_DIR == 0:
            directory.mkdir(parents=True)
        (directory / f"f{number:06d}").write_bytes(b"%d" % number)


def _restore_peak(tmp_path: Path, files: int) -> int:
    source = tmp_path / f"src-{files}"
    _tree(source, files)
    make_pool(tmp_path / f"pool-{files}")
    snapshot = Archiver(
        open_pool(tmp_path / f"pool-{files}"), client="c", paths=[str(source)]
    ).run()
    pool = open_pool(tmp_path / f"pool-{files}")
    target = tmp_path / f"out-{files}"
    tracemalloc.start()
    try:
        result = Restorer(pool, workers=2).restore(snapshot, str(target))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.files == files
    restored = target / str(source).lstrip("/")
    assert sum(len(names) for _d, _s, names in os.walk(restored)) == files
    return peak


def test_restore_memory_does_not_grow_with_the_number_of_files(tmp_path: Path) -> None:
    small = _restore_peak(tmp_path, 2_500)
    large = _restore_peak(tmp_path, 10_000)
    per_file = (large - small) / 7_500
    assert per_file < 1_000, (
        f"peak {large:,} B for 10,000 files vs {small:,} B for 2,500: {per_file:,.0f} B a file"
    )
