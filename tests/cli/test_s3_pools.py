"""S3 pools declared in the inventory, driven through the CLI, on both S3 servers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from support.fixtures import Site, tree_digest
from support.inventory import client_table, s3_pool, site_table, write_tables
from support.s3servers import (  # noqa: F401  (moto_server, rclone_server: fixtures)
    REGION,
    S3Server,
    dead_endpoint,
    moto_server,
    rclone_server,
)


def s3_site(
    root: Path, source: Path, endpoint: str, bucket: str, *, prefix: str = "costor"
) -> Site:
    inventory = write_tables(
        root,
        site_table(),
        s3_pool(
            "cloud",
            endpoint,
            bucket,
            "pack_size_mib = 4",
            "rate_limit = { requests = 500, per_seconds = 1 }",
            "verify_writes = true",
            prefix=prefix,
        ),
        client_table("alpha", [source], pool="cloud", transport=None),
    )
    return Site(root, inventory, root / "unused")


@pytest.fixture(params=["moto", "rclone"])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    monkeypatch.setenv("TEST_S3_ACCESS_KEY", server.access_key)
    monkeypatch.setenv("TEST_S3_SECRET_KEY", server.secret_key)
    return server


def test_s3_pool_end_to_end(server: S3Server, source: Path, tmp_path: Path) -> None:
    (source / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    site = s3_site(tmp_path, source, server.endpoint, server.new_bucket())
    applied = site.cli("apply", "--auto-approve", "--json")
    assert applied.code == 0, applied.stderr
    assert site.cli("apply", "--auto-approve", "--json").json()["changes"] == 0
    backup = site.cli("backup", "alpha", "--json")
    assert backup.code == 0, backup.stderr
    assert backup.json()["files_new"] == 4
    assert site.cli("check", "--read-data").code == 0
    target = tmp_path / "restored"
    assert site.cli("restore", "alpha:latest", "--target", str(target)).code == 0
    assert tree_digest(target / str(source).lstrip("/")) == tree_digest(source)
    secret = server.secret_key
    for result in (applied, backup):
        assert secret not in result.stdout + result.stderr


def test_copy_between_local_and_s3(
    server: S3Server, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = s3_site(tmp_path, source, server.endpoint, server.new_bucket())
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    local_copy = tmp_path / "local-copy"
    to_local = site.cli("pool", "copy", "cloud", str(local_copy), "--json")
    assert to_local.code == 0, to_local.stderr
    # ... and on to another bucket given as a location, credentials from the environment.
    monkeypatch.setenv("COSTOR_S3_ENDPOINT", server.endpoint)
    monkeypatch.setenv("COSTOR_S3_PATH_STYLE", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_REGION", REGION)
    other = server.new_bucket()
    to_s3 = site.cli("pool", "copy", str(local_copy), f"s3://{other}/copied", "--json")
    assert to_s3.code == 0, to_s3.stderr
    assert to_s3.json()["copied"] == to_local.json()["copied"]
    # The second copy restores with the same passphrase.
    (tmp_path / "second").mkdir()
    copied_site = s3_site(tmp_path / "second", source, server.endpoint, other, prefix="copied")
    # A new site runs what it applied: apply adopts the copied pool (docs/disaster-recovery.md).
    adopted = copied_site.cli("apply", "--auto-approve")
    assert adopted.code == 0, adopted.stderr
    target = tmp_path / "restored"
    restored = copied_site.cli("restore", "alpha:latest", "--target", str(target))
    assert restored.code == 0, restored.stderr
    assert tree_digest(target / str(source).lstrip("/")) == tree_digest(source)


def test_unreachable_s3_pool_is_a_clear_error(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_S3_ACCESS_KEY", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("TEST_S3_SECRET_KEY", "secret-example-secret-example")
    site = s3_site(tmp_path, source, dead_endpoint(), "nowhere")
    result = site.cli("apply", "--auto-approve")
    assert result.code == 1, result.stdout
    assert "Temporary storage failure" in result.stderr or "unreachable" in result.stderr
    assert "secret-example" not in result.stderr
    # Never applied, so never run: check says so instead of checking nothing silently.
    result = site.cli("check")
    assert result.code == 1, result.stdout
    assert "pool.cloud is declared but not applied yet" in result.stderr


def test_foreign_s3_pool_is_refused(server: S3Server, source: Path, tmp_path: Path) -> None:
    bucket = server.new_bucket()
    site = s3_site(tmp_path, source, server.endpoint, bucket)
    assert site.cli("apply", "--auto-approve").code == 0
    # Someone replaces the pool with another one under the same prefix.
    from support.s3servers import make_s3_backend

    from costor.store.pool import IDENTITY_NAME

    backend = make_s3_backend(server, bucket, "costor")
    identity = backend.get(IDENTITY_NAME).replace(b'"uuid": "', b'"uuid": "0', 1)
    backend.put(IDENTITY_NAME, identity)
    result = site.cli("check")
    assert result.code == 1 and "UUID" in result.stderr


def test_missing_bucket_is_blocked_or_created_with_create_bucket(
    server: S3Server, source: Path, tmp_path: Path
) -> None:
    """A pool whose bucket does not exist does not abort the plan: it is blocked with
    the reason, in an otherwise complete plan; with ``create_bucket = true`` the plan
    shows the bucket made, and apply makes it and initialises the pool there."""
    from support.s3servers import make_s3_backend

    from costor.store.pool import IDENTITY_NAME

    bucket = f"costor-missing-{uuid.uuid4().hex[:12]}"
    site = s3_site(tmp_path, source, server.endpoint, bucket)

    def buckets() -> list[str]:
        return [b["Name"] for b in server.client().list_buckets()["Buckets"]]

    plan = site.cli("plan", "--json", "--detailed-exitcode")
    assert plan.code == 4, plan.stderr
    changes = {c["address"]: c for c in plan.json()["resource_changes"]}
    assert set(changes) == {"site.hq", "pool.cloud", "client.alpha"}
    pool = changes["pool.cloud"]
    assert pool["change"]["actions"] == ["create"]
    assert pool["blocked"] == (
        f"pool.cloud: bucket {bucket} does not exist at {server.endpoint}; create it, or "
        "set create_bucket = true"
    )
    text = site.cli("plan")
    assert text.code == 4
    assert f"Blocked: pool.cloud: bucket {bucket} does not exist" in text.stdout
    assert "+ client.alpha" in text.stdout
    refused = site.cli("apply", "--auto-approve")
    assert refused.code == 1 and "set create_bucket = true" in refused.stderr
    assert bucket not in buckets()

    site.inventory.write_text(
        site.inventory.read_text().replace(
            "verify_writes = true", "verify_writes = true\ncreate_bucket = true"
        )
    )
    plan = site.cli("plan", "--detailed-exitcode")
    assert plan.code == 2, plan.stdout + plan.stderr
    assert f"bucket {bucket} does not exist at {server.endpoint}; apply creates it" in plan.stdout
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    assert bucket in buckets()
    assert make_s3_backend(server, bucket, "costor").exists(IDENTITY_NAME)
    assert site.cli("backup", "alpha").code == 0
    assert site.cli("plan", "--detailed-exitcode").code == 0
