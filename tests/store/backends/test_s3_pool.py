"""A real pool on both S3 servers: init, backup, reopen, restore, check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fixtures import PASSPHRASE, tree_digest
from support.s3servers import (  # noqa: F401  (moto_server, rclone_server: fixtures)
    S3Server,
    make_s3_backend,
    moto_server,
    rclone_server,
)

from costor.store.backup.walk import Archiver
from costor.store.checker import check
from costor.store.pool import READ_WINDOW, Pool
from costor.store.restore.directory import Restorer

MIB = 1024 * 1024
# Packs of up to 8 MiB with a 5 MiB multipart threshold: some packs go up in parts.
SMALL_PARTS = {"multipart_threshold": 5 * MIB, "multipart_chunk": 5 * MIB}


@pytest.mark.parametrize("kind", ["moto", "rclone"])
def test_pool_on_s3_backs_up_restores_and_checks(
    kind: str, request: pytest.FixtureRequest, source: Path, tmp_path: Path
) -> None:
    server: S3Server = request.getfixturevalue(f"{kind}_server")
    bucket = server.new_bucket()
    (source / "big.bin").write_bytes(os.urandom(9 * MIB))
    (source / "docs" / "copy.txt").write_text("hello costor\n" * 100)  # dedups

    pool = Pool.init(
        make_s3_backend(server, bucket, "pools/main", **SMALL_PARTS),
        passphrase=PASSPHRASE,
        pack_size=8 * MIB,
    )
    snapshot = Archiver(pool, client="c", paths=[str(source)]).run()
    assert pool.packs_written >= 2
    assert max(pool.list_packs().values()) > SMALL_PARTS["multipart_threshold"]  # multipart

    # A second backend object, as a later process would have: nothing is cached.
    reopened = Pool.open(make_s3_backend(server, bucket, "pools/main"), PASSPHRASE)
    reopened.load_index()
    target = tmp_path / "restored"
    Restorer(reopened).restore(reopened.find_snapshot(snapshot.id[:8]), str(target))
    assert tree_digest(target / source.relative_to("/")) == tree_digest(source)
    # Object storage reads blobs through 4 MiB windows (a GET serves many blobs),
    # whatever wraps the backend; a local disk reads each blob on its own.
    assert reopened._windows.size == READ_WINDOW
    assert 0 < reopened._windows.reads < len(reopened.index)

    report = check(reopened, read_data=True)
    assert report.ok, report.to_json()
    assert reopened.uuid == pool.uuid and reopened.location == f"s3://{bucket}/pools/main"
