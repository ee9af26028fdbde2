# ruff: noqa: F811  (``src`` is a fixture imported from test_filters and used as an argument)
"""The fault cases of test_filters.py, injected over the REAL S3 backend on both
servers (moto and rclone serve s3): every backup either completes (check --read-data
clean, restore byte-identical) or fails with a clear error and leaves a pool that
checks clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.faults import FaultyBackend
from support.fixtures import PASSPHRASE, tree_digest
from support.s3servers import (  # noqa: F401  (moto_server, rclone_server: fixtures)
    S3Server,
    UploadCutter,
    make_s3_backend,
    moto_server,
    rclone_server,
)
from test_filters import FAULT_CASES, backup_through, src  # noqa: F401  (src: fixture)

from costor.store.backends.filters import wrap
from costor.store.checker import check
from costor.store.pool import Pool
from costor.store.restore.directory import Restorer
from costor.store.snapshot import Snapshot

# A partial object under a temporary name is a local-filesystem failure mode; an S3 PUT
# is atomic (and an aborted multipart upload leaves no object), so that case is skipped.
S3_CASES = {name: case for name, case in FAULT_CASES.items() if name != "reset_mid_upload"}
MIB = 1024 * 1024


@pytest.mark.parametrize("kind", ["moto", "rclone"])
@pytest.mark.parametrize("case_name", S3_CASES.keys())
def test_backup_to_s3_through_faults(
    kind: str,
    case_name: str,
    request: pytest.FixtureRequest,
    src: Path,
    tmp_path: Path,
) -> None:
    case = S3_CASES[case_name]
    server: S3Server = request.getfixturevalue(f"{kind}_server")
    bucket = server.new_bucket()

    def plain() -> Any:
        return make_s3_backend(server, bucket, "pool")

    Pool.init(plain(), passphrase=PASSPHRASE, pack_size=4 * MIB)
    faulty = FaultyBackend(plain(), **case.faults())
    stack = wrap(faulty, **case.filters)
    outcome = backup_through(stack, src)
    assert getattr(faulty, case.injected) > 0, "the fault was never injected"
    assert isinstance(outcome, case.expect), outcome

    checked = Pool.open(plain(), PASSPHRASE)
    report = check(checked, read_data=True)
    assert report.ok, [problem.message for problem in report.problems]
    if isinstance(outcome, Snapshot):
        assert checked.snapshot_ids() == [outcome.id]
        checked.load_index()
        Restorer(checked).restore(outcome, str(tmp_path / "restored"))
        assert tree_digest(tmp_path / "restored" / str(src).lstrip("/")) == tree_digest(src)
    else:
        assert str(outcome) and checked.snapshot_ids() == []
    if case.also is not None:
        case.also(stack, faulty)


@pytest.mark.parametrize("kind", ["moto", "rclone"])
def test_backup_survives_real_connection_resets_mid_upload(
    kind: str,
    request: pytest.FixtureRequest,
    src: Path,
    tmp_path: Path,
) -> None:
    """Real TCP resets in the middle of pack uploads (a relay cuts the first two
    connections that carry more than 1 MiB): retried, the backup completes and the pool
    is whole."""
    server: S3Server = request.getfixturevalue(f"{kind}_server")
    bucket = server.new_bucket()
    Pool.init(make_s3_backend(server, bucket, "pool"), passphrase=PASSPHRASE, pack_size=4 * MIB)
    cutter = UploadCutter(server.endpoint, cuts=2, after_bytes=1 * MIB)
    try:
        through_cutter = make_s3_backend(server, bucket, "pool", endpoint=cutter.endpoint)
        outcome = backup_through(wrap(through_cutter, retry=True, retry_base_delay=0.02), src)
    finally:
        cutter.close()
    assert cutter.cut == 2, "no upload was cut"
    assert isinstance(outcome, Snapshot), outcome
    direct = Pool.open(make_s3_backend(server, bucket, "pool"), PASSPHRASE)
    assert check(direct, read_data=True).ok
    direct.load_index()
    Restorer(direct).restore(outcome, str(tmp_path / "restored"))
    assert tree_digest(tmp_path / "restored" / str(src).lstrip("/")) == tree_digest(src)
