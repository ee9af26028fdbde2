"""costor pool copy: whole pools between places, incremental and verified."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.fixtures import PASSPHRASE, Site, make_pool, open_pool, tree_digest
from support.inventory import (
    BASE_TABLES,
    client_table,
    file_secret,
    local_pool,
    s3_pool,
    site_table,
    write_tables,
)
from support.s3servers import S3Server, make_s3_backend, moto_server  # noqa: F401  (fixture)

from costor.store.restore.directory import Restorer


def _objects(root: Path) -> dict[str, bytes]:
    """The pool's objects, but the audit anchors its site's commands leave in it (each
    place's own, not copied: docs/format.md)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith("anchors/")
    }


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


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _copy_site(root: Path, pool_path: Path) -> Site:
    """Another site's CoStor that declares the copy as its pool (and adopts it)."""
    root.mkdir()
    inventory = write_tables(root, site_table(), local_pool(path=str(pool_path)))
    site = Site(root, inventory, pool_path)
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def test_verify_existing_heals_a_damaged_copy(applied: Site, tmp_path: Path) -> None:
    assert applied.cli("backup", "alpha").code == 0
    copy_dir = tmp_path / "copy"
    first = applied.cli("pool", "copy", "main", str(copy_dir), "--json")
    assert first.code == 0, first.stderr
    other_site = _copy_site(tmp_path / "other-site", copy_dir)
    pack = max(copy_dir.glob("packs/*/*/*"), key=lambda p: p.stat().st_size)
    _damage(pack)
    snapshot = next(copy_dir.glob("snapshots/*"))
    _damage(snapshot)
    assert other_site.cli("check", "--read-data").code == 3
    [slot] = copy_dir.glob("keys/*")
    _damage(slot)  # same size: not noticed by a copy that compares sizes

    # A plain copy goes by names: the damage stays.
    plain = applied.cli("pool", "copy", "main", str(copy_dir), "--json")
    assert plain.code == 0 and plain.json()["copied"] == 0
    assert _objects(copy_dir) != _objects(applied.pool_path)

    healed = applied.cli("pool", "copy", "main", str(copy_dir), "--verify-existing", "--json")
    assert healed.code == 0, healed.stderr
    report = healed.json()
    assert report["replaced"] == 3 and report["copied"] == 0
    assert sorted(report["replaced_objects"]) == sorted(
        str(p.relative_to(copy_dir)) for p in (pack, snapshot, slot)
    )
    assert report["verified"] == len(_objects(applied.pool_path)) - 1 - 3  # not the identity
    # The copy's own check recorded the damage it found (damaged/: not copied, each
    # place's own); once the pack is sound again, its next check drops the record.
    healed_copy = _objects(copy_dir)
    assert [name for name in healed_copy if name.startswith("damaged/")]
    assert {n: b for n, b in healed_copy.items() if not n.startswith("damaged/")} == _objects(
        applied.pool_path
    )
    rechecked = other_site.cli("check", "--read-data", "--json")
    assert rechecked.code == 0, rechecked.stdout
    assert rechecked.json()["pools"][0]["damage_cleared"] >= 1
    assert _objects(copy_dir) == _objects(applied.pool_path)
    human = applied.cli("pool", "copy", "main", str(copy_dir), "--verify-existing")
    assert human.code == 0 and "0 damaged object(s) replaced" in human.stdout


def _s3_pool(name: str, server: S3Server, bucket: str, prefix: str = "") -> str:
    """An S3 pool whose credentials are the files s3-access and s3-secret."""
    return s3_pool(
        name,
        server.endpoint,
        bucket,
        prefix=prefix,
        access_key=file_secret("s3-access"),
        secret_key=file_secret("s3-secret"),
    )


def test_s3_destination_like_a_declared_pool_heals(
    moto_server: S3Server,  # noqa: F811
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--like cloud``: endpoint, region, path style and credentials of the declared S3
    pool ``cloud`` (its secrets are files), none from the environment."""
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "COSTOR_S3_ENDPOINT",
        "COSTOR_S3_PATH_STYLE",
    ):
        monkeypatch.delenv(var, raising=False)
    for name, value in (
        ("s3-access", moto_server.access_key),
        ("s3-secret", moto_server.secret_key),
    ):
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
    cloud = _s3_pool("cloud", moto_server, moto_server.new_bucket())
    site = Site(
        tmp_path,
        write_tables(tmp_path, *BASE_TABLES, cloud, client_table("alpha", [source])),
        tmp_path / "pool",
    )
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    bucket = moto_server.new_bucket()
    location = f"s3://{bucket}/replica"
    first = site.cli("pool", "copy", "main", location, "--like", "cloud", "--json")
    assert first.code == 0, first.stderr
    assert first.json()["copied"] == len(_objects(site.pool_path)) - 1
    assert first.json()["destination"].startswith(f"s3://{bucket}/replica")

    replica = make_s3_backend(moto_server, bucket, "replica")
    pack = max(replica.list("packs/"), key=lambda info: info.size).name
    damaged = bytearray(replica.get(pack))
    damaged[100] ^= 0xFF
    moto_server.client().put_object(Bucket=bucket, Key=f"replica/{pack}", Body=bytes(damaged))
    index = next(iter(replica.list("index/"))).name
    moto_server.client().delete_object(Bucket=bucket, Key=f"replica/{index}")

    healed = site.cli(
        "pool", "copy", "main", location, "--like", "cloud", "--verify-existing", "--json"
    )
    assert healed.code == 0, healed.stderr
    assert healed.json()["replaced_objects"] == [pack] and healed.json()["copied"] == 1
    assert replica.get(pack) == (site.pool_path / pack).read_bytes()

    # The healed replica passes check, declared at another site with the same server.
    other = tmp_path / "other-site"
    other.mkdir()
    declared = _s3_pool("replica", moto_server, bucket, prefix="replica")
    for name in ("s3-access", "s3-secret"):
        (other / name).write_text((tmp_path / name).read_text())
    inventory = write_tables(other, site_table(), declared)
    other_site = Site(other, inventory, other / "unused")
    assert other_site.cli("apply", "--auto-approve").code == 0
    checked = other_site.cli("check", "--read-data", "--json")
    assert checked.code == 0, checked.stdout + checked.stderr
    assert checked.json()["pools"][0]["packs_read"] == len(list(replica.list("packs/")))


def test_like_needs_an_s3_pool(applied: Site, tmp_path: Path) -> None:
    result = applied.cli("pool", "copy", "main", "s3://bucket/x", "--like", "main")
    assert result.code == 1 and "not an S3 pool" in result.stderr
    local = applied.cli("pool", "copy", "main", str(tmp_path / "c"), "--like", "main")
    assert local.code == 1 and "--like" in local.stderr
