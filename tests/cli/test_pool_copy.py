"""costor pool copy: whole pools between places, incremental and verified."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import PASSPHRASE, Site, make_pool, open_pool, tree_digest

from costor.store.restorer import Restorer


def _objects(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_copy_is_complete_incremental_and_restorable(
    applied: Site, source: Path, tmp_path: Path
) -> None:
    assert applied.cli("backup", "alpha").code == 0
    copy_dir = tmp_path / "copy"
    first = applied.cli("pool", "copy", "main", str(copy_dir), "--json")
    assert first.code == 0, first.stderr
    report = first.json()
    assert report["copied"] > 0 and report["skipped"] == 0
    assert _objects(copy_dir) == _objects(applied.pool_path)  # byte-identical copy

    (source / "docs" / "added.txt").write_text("after the first copy")
    assert applied.cli("backup", "alpha").code == 0
    second = applied.cli("pool", "copy", "main", f"file://{copy_dir}", "--json").json()
    # Everything now in the pool but the first copy's objects and the identity file.
    new_objects = len(_objects(applied.pool_path)) - report["copied"] - 1
    assert second["copied"] == new_objects  # only what the copy lacked
    assert second["skipped"] == report["copied"]
    again = applied.cli("pool", "copy", "main", str(copy_dir), "--json").json()
    assert again["copied"] == 0

    # The copy is a pool of its own, opened with the same passphrase.
    pool = open_pool(copy_dir)
    latest = pool.list_snapshots("alpha")[-1]
    Restorer(pool).restore(latest, str(tmp_path / "restored"))
    assert tree_digest(tmp_path / "restored" / str(source).lstrip("/")) == tree_digest(source)
    assert pool.uuid == open_pool(applied.pool_path).uuid


def test_copy_between_plain_locations_needs_no_inventory(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "a")
    from costor.store.pack import BlobType

    blob = pool.put_blob(BlobType.DATA, os.urandom(1000))
    pool.flush()
    site = Site(tmp_path, tmp_path / "no-inventory.toml", tmp_path / "a")
    result = site.run_process("pool", "copy", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.code == 0, result.stderr
    assert open_pool(tmp_path / "b").read_blob(blob)
    assert PASSPHRASE  # same key slots: same passphrase


def test_copy_refuses_a_foreign_destination(applied: Site, tmp_path: Path) -> None:
    make_pool(tmp_path / "other")
    result = applied.cli("pool", "copy", "main", str(tmp_path / "other"))
    assert result.code == 1 and "UUID" in result.stderr


def test_damaged_source_object_is_not_spread(applied: Site, tmp_path: Path) -> None:
    assert applied.cli("backup", "alpha").code == 0
    pack = max(applied.pool_path.glob("packs/*/*/*"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[10] ^= 1
    pack.write_bytes(bytes(data))
    result = applied.cli("pool", "copy", "main", str(tmp_path / "copy"))
    assert result.code == 3 and pack.name in result.stderr
    assert not (tmp_path / "copy" / pack.relative_to(applied.pool_path)).exists()
    assert not (tmp_path / "copy" / "costor-pool.json").exists()  # not a pool: incomplete
    shutil.rmtree(tmp_path / "copy")
