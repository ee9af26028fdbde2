"""The CLI end to end, as an administrator or a pipeline drives it."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from support.fixtures import Site, tree_digest

from costor.store.pack import pack_name

DESIGN_BACKUP_FIELDS = {
    "snapshot_id",
    "client",
    "files_new",
    "files_changed",
    "files_unmodified",
    "bytes_read",
    "bytes_added",
    "bytes_transferred",
    "duration_s",
}


def test_apply_is_idempotent(site: Site) -> None:
    first = site.cli("apply", "--auto-approve", "--json")
    assert first.code == 0, first.stderr
    applied = {c["address"] for c in first.json()["applied"]}
    assert applied == {"site.hq", "pool.main", "client.alpha"}
    assert (site.pool_path / "costor-pool.json").is_file()
    second = site.cli("apply", "--auto-approve", "--json").json()
    assert (second["applied"], second["changes"]) == ([], 0)


def test_apply_refuses_without_approval_when_not_a_terminal(site: Site) -> None:
    result = site.run_process("apply")
    assert result.code == 1
    assert "--auto-approve" in result.stderr
    assert not site.pool_path.exists()


def test_backup_snapshots_ls_diff_restore(applied: Site, source: Path, tmp_path: Path) -> None:
    backup = applied.cli("backup", "alpha", "--json")
    assert backup.code == 0, backup.stderr
    document = backup.json()
    assert set(document) >= DESIGN_BACKUP_FIELDS
    assert document["compression_ratio"] > 1  # the text compressed, the random data did not
    [(raw, stored)] = applied.sql("SELECT bytes_raw, bytes_stored FROM pools")
    assert raw == document["bytes_added_raw"] and stored == document["bytes_added"]
    assert document["files_new"] == 3 and document["bytes_added"] > 0

    (source / "docs" / "new.txt").write_text("new file")
    (source / "empty").unlink()
    second = applied.cli("backup", "alpha", "--json").json()
    assert second["files_new"] == 1 and second["files_unmodified"] == 2

    listing = applied.cli("snapshots", "--json").json()
    assert [s["id"] for s in listing] == [document["snapshot_id"], second["snapshot_id"]]
    for entry in listing:
        assert {"id", "client", "time", "paths", "files_new", "bytes_added"} <= set(entry)

    ls = applied.cli("ls", "alpha:latest", str(source / "docs"), "--json").json()
    paths = {e["path"] for e in ls}
    assert str(source / "docs" / "new.txt") in paths

    prefix = document["snapshot_id"][:10]
    diff = applied.cli("diff", prefix, "alpha:latest", "--json").json()
    assert {(c["change"], c["path"]) for c in diff["changes"]} >= {
        ("added", str(source / "docs" / "new.txt")),
        ("removed", str(source / "empty")),
    }
    human = applied.cli("diff", prefix, "alpha:latest")
    assert f"+    {source / 'docs' / 'new.txt'}" in human.stdout

    target = tmp_path / "restored"
    restored = applied.cli("restore", "alpha:latest", "--target", str(target), "--json")
    assert restored.code == 0, restored.stderr
    assert tree_digest(target / str(source).lstrip("/")) == tree_digest(source)

    archive = tmp_path / "out.tar.zst"
    assert (
        applied.cli("restore", "alpha:latest", str(source / "docs"), "--archive", str(archive)).code
        == 0
    )
    assert archive.stat().st_size > 0


def test_restore_to_stdout_is_a_tar(applied: Site, source: Path, tmp_path: Path) -> None:
    assert applied.cli("backup", "alpha").code == 0
    result = applied.process("restore", "alpha:latest", str(source / "docs"), "--archive", "-")
    out, err = result.communicate(timeout=120)
    assert result.returncode == 0, err
    tar_path = tmp_path / "stdout.tar"
    tar_path.write_bytes(out)
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert any(name.endswith("docs/readme.txt") for name in names)


def test_wrong_passphrase_exit_code(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    result = applied.run_process("snapshots", env={"COSTOR_TEST_PASSPHRASE": "wrong"})
    assert result.code == 1
    assert "Wrong passphrase" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_passphrase_is_a_clear_error(applied: Site) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COSTOR_TEST_PASSPHRASE"}
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "costor", "snapshots", "-c", str(applied.inventory)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert "COSTOR_TEST_PASSPHRASE" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_finds_corruption_names_pack_and_affected_file(
    applied: Site, source: Path, tmp_path: Path
) -> None:
    assert applied.cli("backup", "alpha").code == 0
    assert applied.cli("check", "--read-data").code == 0
    packs = sorted(applied.pool_path.glob("packs/*/*/*"), key=lambda p: p.stat().st_size)
    data_pack = packs[-1]  # the big random file lives in the largest pack
    damaged = bytearray(data_pack.read_bytes())
    damaged[100] ^= 0x40
    data_pack.write_bytes(bytes(damaged))
    structural = applied.cli("check")
    assert structural.code == 0  # structure intact: only reading data finds it
    result = applied.cli("check", "--read-data", "--json")
    assert result.code == 3
    report = result.json()
    assert report["ok"] is False
    problem = report["pools"][0]["problems"][0]
    assert problem["object"] == data_pack.name
    assert any(a["path"].endswith("data.bin") for a in problem["affected"])
    human = applied.cli("check", "--read-data")
    assert human.code == 3 and data_pack.name in human.stdout and "data.bin" in human.stdout
    restore = applied.cli("restore", "alpha:latest", "--target", str(tmp_path / "r"))
    assert restore.code == 3
    assert data_pack.name in restore.stderr


def test_check_subset_reads_some_packs(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    report = applied.cli("check", "--read-data-subset", "50%", "--json").json()
    pool = report["pools"][0]
    assert 1 <= pool["packs_read"] < pool["packs"] or pool["packs"] == 1
    assert applied.cli("check", "--read-data-subset", "150%").code == 1


def test_reindex_rebuilds_index_and_catalogue(applied: Site, tmp_path: Path, source: Path) -> None:
    assert applied.cli("backup", "alpha").code == 0
    shutil.rmtree(applied.pool_path / "index")
    applied.lose_state()
    # What runs is what was applied: a lost state is applied again first (the pool is
    # adopted as it is), then rebuilt from the pool.
    refused = applied.cli("pool", "reindex", "--pool", "main")
    assert refused.code == 1 and "pool.main is declared but not applied yet" in refused.stderr
    assert applied.cli("apply", "--auto-approve").code == 0
    result = applied.cli("pool", "reindex", "--pool", "main", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["snapshots"] == 1
    assert applied.cli("check", "--read-data").code == 0
    restored = applied.cli("restore", "alpha:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    assert tree_digest(tmp_path / "r" / str(source).lstrip("/")) == tree_digest(source)


def test_foreign_pool_is_refused(applied: Site, tmp_path: Path) -> None:
    """A pool replaced behind CoStor's back (another UUID) is reported, not used."""
    shutil.rmtree(applied.pool_path)
    from support.fixtures import make_pool

    make_pool(applied.pool_path)
    result = applied.cli("snapshots")
    assert result.code == 1
    assert "UUID" in result.stderr


def test_add_key_slot(applied: Site) -> None:
    result = applied.run_process(
        "pool",
        "add-key",
        "--pool",
        "main",
        "--new-passphrase-env",
        "NEWPW",
        env={"NEWPW": "another one"},
    )
    assert result.code == 0, result.stderr
    assert applied.run_process("snapshots", env={"COSTOR_TEST_PASSPHRASE": "another one"}).code == 0


def test_unknown_client_and_snapshot(applied: Site) -> None:
    assert applied.cli("backup", "nobody").code == 1
    missing = applied.cli("ls", "ffffffff")
    assert missing.code == 1 and "No snapshot" in missing.stderr


def test_pack_layout(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    for pack in applied.pool_path.glob("packs/*/*/*"):
        assert pack.relative_to(applied.pool_path).as_posix() == pack_name(pack.name)


def test_apply_refuses_a_location_holding_other_data(site: Site) -> None:
    site.pool_path.mkdir()
    (site.pool_path / "precious.txt").write_text("not a pool")
    result = site.cli("apply", "--auto-approve")
    assert result.code == 1 and "holds other data" in result.stderr
    assert (site.pool_path / "precious.txt").read_text() == "not a pool"
    assert not (site.pool_path / "costor-pool.json").exists()
