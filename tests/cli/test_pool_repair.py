"""``costor pool repair`` (issue 19, item 7): what another copy of the pool holds is put
back whole or blob by blob; what nothing holds is listed with the snapshots it affects
and is stored again by the next backup of a source that still has it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures import Site, tree_digest


@pytest.fixture
def backed_up(site: Site) -> Site:
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    return site


def _copy(site: Site) -> Path:
    copy = site.root / "copy"
    result = site.cli("pool", "copy", "main", str(copy))
    assert result.code == 0, result.stderr
    return copy


def _largest_pack(pool: Path) -> Path:
    packs = [p for p in (pool / "packs").rglob("*") if p.is_file()]
    return max(packs, key=lambda p: p.stat().st_size)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _restores(site: Site, source: Path, name: str) -> None:
    target = site.root / name
    result = site.cli("restore", "alpha:latest", "--target", str(target))
    assert result.code == 0, result.stdout + result.stderr
    assert tree_digest(target / source.relative_to("/")) == tree_digest(source)


def test_a_damaged_pack_is_put_back_from_a_copy(backed_up: Site, source: Path) -> None:
    copy = _copy(backed_up)
    pack = _largest_pack(backed_up.pool_path)
    _flip(pack, 100)

    repaired = backed_up.cli("pool", "repair", "main", "--from", str(copy), "--read-data", "--json")
    assert repaired.code == 0, repaired.stdout + repaired.stderr
    doc = repaired.json()
    assert doc["ok"] and not doc["found"]["ok"]
    assert [name.rsplit("/", 1)[-1] for name in doc["replaced"]] == [pack.name]
    assert doc["remaining"]["problems"] == [] and doc["remaining"]["healed"] == []
    assert backed_up.cli("check", "--read-data").code == 0
    assert not list((backed_up.pool_path / "damaged").iterdir()), "the replaced pack is sound"
    _restores(backed_up, source, "out")


def test_missing_pack_manifest_and_index_segment_are_put_back(
    backed_up: Site, source: Path
) -> None:
    copy = _copy(backed_up)
    _largest_pack(backed_up.pool_path).unlink()
    (snapshot,) = (backed_up.pool_path / "snapshots").iterdir()
    snapshot.write_bytes(b"garbage")
    segment = next((backed_up.pool_path / "index").iterdir())
    _flip(segment, 10)
    assert backed_up.cli("check").code == 3

    repaired = backed_up.cli("pool", "repair", "main", "--from", "copy-of-main", "--like", "x")
    assert repaired.code != 0  # not a declared pool, not an s3:// location: a usage error
    repaired = backed_up.cli("pool", "repair", "main", "--from", str(copy))
    assert repaired.code == 0, repaired.stdout + repaired.stderr
    assert "put back from" in repaired.stdout and "repaired; nothing is lost" in repaired.stdout
    assert backed_up.cli("check", "--read-data").code == 0
    _restores(backed_up, source, "out")


def test_a_snapshot_deleted_from_the_pool_is_put_back(backed_up: Site) -> None:
    copy = _copy(backed_up)
    for snapshot in (backed_up.pool_path / "snapshots").iterdir():
        snapshot.unlink()
    assert backed_up.cli("check").code == 3  # rollback evidence

    repaired = backed_up.cli("pool", "repair", "main", "--from", str(copy), "--json")
    assert repaired.code == 0, repaired.stdout + repaired.stderr
    assert any(name.startswith("snapshots/") for name in repaired.json()["replaced"])
    assert backed_up.cli("check").code == 0


def test_blobs_are_stored_again_from_a_copy_damaged_elsewhere(
    backed_up: Site, source: Path
) -> None:
    """The copy's version of the pack is damaged too, in another blob: the pack cannot be
    put back whole, but the blob this pool lost is read from the copy's pack."""
    copy = _copy(backed_up)
    pack = _largest_pack(backed_up.pool_path)
    _flip(pack, 100)
    copied_pack = copy / pack.relative_to(backed_up.pool_path)
    _flip(copied_pack, copied_pack.stat().st_size - 5000)

    repaired = backed_up.cli("pool", "repair", "main", "--from", str(copy), "--read-data", "--json")
    assert repaired.code == 0, repaired.stdout + repaired.stderr
    doc = repaired.json()
    assert doc["replaced"] == [] and doc["blobs_stored"] >= 1
    assert [p["object"] for p in doc["remaining"]["healed"]] == [pack.name]
    _restores(backed_up, source, "out")


def test_without_a_copy_repair_lists_the_loss_and_a_backup_heals_it(
    backed_up: Site, source: Path
) -> None:
    _flip(_largest_pack(backed_up.pool_path), 100)

    repaired = backed_up.cli("pool", "repair", "main", "--read-data")
    assert repaired.code == 3, repaired.stdout + repaired.stderr
    assert "still damaged as above" in repaired.stdout
    assert "affects alpha snapshot" in repaired.stdout
    assert "back up alpha again" in repaired.stdout
    # A structural repair (no reading) still knows the recorded damage.
    again = backed_up.cli("pool", "repair", "main")
    assert again.code == 3 and "damaged_blob" in again.stdout, again.stdout

    assert backed_up.cli("backup", "alpha").code == 0
    healed = backed_up.cli("pool", "repair", "main")
    assert healed.code == 0, healed.stdout
    assert "`costor prune` removes the damaged copies" in healed.stdout
    _restores(backed_up, source, "out")


def test_repair_refuses_a_source_that_is_another_pool(backed_up: Site, tmp_path: Path) -> None:
    other = tmp_path / "other"
    from support.fixtures import make_pool

    make_pool(other)
    refused = backed_up.cli("pool", "repair", "main", "--from", str(other))
    assert refused.code != 0 and "UUID" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    itself = backed_up.cli("pool", "repair", "main", "--from", "main")
    assert itself.code == 1 and "itself" in itself.stderr, itself.stderr
