"""Compression management: known-compressed content is sealed without a zstd attempt."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from support.fixtures import make_pool, open_pool

from costor.store.backup.walk import Archiver
from costor.store.compressibility import worth_compressing


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        (b"notes.txt", b"hello", True),
        (b"photo.JPG", b"anything", False),
        (b"backup.tar.zst", b"anything", False),
        (b"no-extension", b"\x1f\x8b\x08\x00", False),  # gzip by its magic
        (b"image", b"\x89PNG\r\n\x1a\n....", False),
        (b"archive.bin", b"PK\x03\x04rest", False),
        (b"data.bin", b"\x00\x01\x02", True),
        (b"caf\xe9.log", b"text", True),  # non-UTF-8 names are fine
    ],
)
def test_worth_compressing(name: bytes, head: bytes, expected: bool) -> None:
    assert worth_compressing(name, head) is expected


def test_backup_skips_compressing_compressed_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "log.txt").write_text("the same line again\n" * 50_000)
    (src / "log.txt.gz").write_bytes(gzip.compress(os.urandom(300_000)))
    (src / "big.zst").write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(3 * 1024 * 1024))
    pool = make_pool(tmp_path / "pool")
    snapshot = Archiver(pool, client="c", paths=[str(src)]).run()
    counters = snapshot.counters
    # the .gz file (1 blob) and the .zst file (several chunks) skip zstd; the text does not
    assert counters["blobs_not_compressed"] >= 2
    assert counters["bytes_added_raw"] > counters["bytes_added"]  # the text compressed
    reopened = open_pool(tmp_path / "pool")
    assert reopened.list_snapshots()[0].counters == counters
