"""State-database rows for tests of the query modules (tests/db): a pool and a
catalogued snapshot with only what a test cares about set."""

from __future__ import annotations

from datetime import UTC, datetime

from costor.db.models import PoolRow, SnapshotRow

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def pool_row(name: str, uuid: str) -> PoolRow:
    return PoolRow(
        name=name,
        uuid=uuid,
        backend="local",
        location=f"/pools/{name}",
        encryption="none",
        created_at=NOW,
        updated_at=NOW,
    )


def snapshot_row(snapshot_id: str, pool_uuid: str, client: str, time: str = "t") -> SnapshotRow:
    return SnapshotRow(
        id=snapshot_id,
        pool_uuid=pool_uuid,
        client=client,
        time=time,
        tree="t",
        paths="[]",
        counters="{}",
    )
