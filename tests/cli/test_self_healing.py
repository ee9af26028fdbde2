"""A damaged blob heals (issue 19, item 7): once a check or a restore has found it, the
next backup of a source that still holds the content stores a good copy instead of
deduplicating against the damaged one; every snapshot naming the blob restores again,
and prune removes the damaged copy."""

from __future__ import annotations

import json
from pathlib import Path

from support.fixtures import Site, open_pool, tree_digest
from support.sshd import Sshd, make_tree, remote_dir, ssh_site, sshd  # noqa: F401  (fixtures)


def _flip_a_data_byte(site: Site) -> Path:
    """Flip one byte inside the first blob of the largest pack (data.bin's content)."""
    packs = [p for p in (site.pool_path / "packs").rglob("*") if p.is_file()]
    largest = max(packs, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[100] ^= 0xFF
    largest.write_bytes(bytes(data))
    return largest


def _restore(site: Site, ref: str, name: str) -> tuple[int, Path, str]:
    target = site.root / name
    result = site.cli("restore", ref, "--target", str(target))
    return result.code, target, result.stdout + result.stderr


def test_check_records_the_damage_and_the_next_backup_heals_it(site: Site, source: Path) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    first = site.cli("backup", "alpha", "--json")
    assert first.code == 0, first.stderr
    first_id = first.json()["snapshot_id"]
    damaged_pack = _flip_a_data_byte(site)

    checked = site.cli("check", "--read-data", "--json")
    assert checked.code == 3, checked.stdout + checked.stderr
    report = checked.json()["pools"][0]
    assert report["damage_recorded"] >= 1
    assert any(p["kind"] == "damaged_pack" for p in report["problems"])
    assert list((site.pool_path / "damaged").iterdir()), "the damage is recorded in the pool"

    # The source is intact and unchanged: the backup reads data.bin again (its parent
    # version needs a damaged blob) and stores a good copy.
    second = site.cli("backup", "alpha", "--json")
    assert second.code == 0, second.stdout + second.stderr
    assert second.json()["files_unmodified"] == 2  # data.bin was read again

    code, target, output = _restore(site, "alpha:latest", "latest")
    assert code == 0, output
    assert tree_digest(target / source.relative_to("/")) == tree_digest(source)
    # The older snapshot names the same blob: it restores again too.
    code, target, output = _restore(site, first_id, "first")
    assert code == 0, output
    assert tree_digest(target / source.relative_to("/")) == tree_digest(source)

    healed = site.cli("check", "--read-data", "--json")
    assert healed.code == 0, healed.stdout + healed.stderr
    report = healed.json()["pools"][0]
    assert report["problems"] == []
    assert [p["object"] for p in report["healed"]] == [damaged_pack.name]
    human = site.cli("check", "--read-data")
    assert "healed damaged_pack" in human.stdout

    pruned = site.cli("prune", "--safety-window", "0", "--json")
    assert pruned.code == 0, pruned.stdout + pruned.stderr
    assert not damaged_pack.exists()
    final = site.cli("check", "--read-data", "--json")
    assert final.code == 0, final.stdout
    assert final.json()["pools"][0]["healed"] == []
    assert not list((site.pool_path / "damaged").iterdir()), "records of deleted packs are dropped"
    code, target, output = _restore(site, first_id, "after-prune")
    assert code == 0, output
    assert tree_digest(target / source.relative_to("/")) == tree_digest(source)


def test_a_restore_that_meets_damage_records_it_for_the_next_backup(
    site: Site, source: Path
) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    _flip_a_data_byte(site)

    code, _target, output = _restore(site, "alpha:latest", "broken")
    assert code == 3, output
    assert (site.pool_path / "damaged").is_dir()

    assert site.cli("backup", "alpha").code == 0
    code, target, output = _restore(site, "alpha:latest", "healed")
    assert code == 0, output
    assert tree_digest(target / source.relative_to("/")) == tree_digest(source)


def test_a_damage_record_cannot_be_planted_or_break_a_backup(site: Site) -> None:
    """Records are sealed under the pool's key: one written by someone who can write
    the storage is passed over, and a backup and a check still work."""
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    planted = site.pool_path / "damaged"
    planted.mkdir(exist_ok=True)
    doc = {"version": 1, "copies": [{"blob": "00" * 32, "pack": "ff" * 32, "since": 0}]}
    (planted / ("ab" * 32)).write_text(json.dumps(doc))
    assert open_pool(site.pool_path).damage == {}
    backup = site.cli("backup", "alpha")
    assert backup.code == 0, backup.stderr
    checked = site.cli("check", "--json")
    assert checked.code == 0, checked.stdout


def test_an_ssh_pull_heals_too(sshd: Sshd, remote_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    """Over the helper, an unchanged file in an unchanged directory is not even sent (a
    sparse walk): the server must not take the parent's node for it when that node
    needs a damaged blob."""
    src = make_tree(remote_dir)
    site = ssh_site(tmp_path, sshd, {"web": {"paths": [src]}})
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "web").code == 0
    _flip_a_data_byte(site)
    assert site.cli("check", "--read-data").code == 3

    healing = site.cli("backup", "web", "--json")
    assert healing.code == 0, healing.stdout + healing.stderr
    doc = healing.json()
    assert doc["files_changed"] == 1, doc  # big.bin, sent again
    assert doc["bytes_transferred"] > 1024 * 1024
    target = tmp_path / "restored"
    restored = site.cli("restore", "web:latest", "--target", str(target))
    assert restored.code == 0, restored.stdout + restored.stderr
    assert tree_digest(target / str(src).lstrip("/")) == tree_digest(src)
    assert site.cli("check", "--read-data").code == 0
