"""Checking pools and rebuilding their index and catalogue."""

from __future__ import annotations

from typing import Any

from costor.ops.context import Context, snapshot_row, utcnow
from costor.store.progress import Progress


def check_pools(
    ctx: Context,
    *,
    pool: str | None = None,
    read_data: bool = False,
    subset: float | None = None,
    progress: Progress | None = None,
) -> list[tuple[str, Any]]:
    """Returns (pool name, CheckReport) per pool."""
    from costor.store.checker import check

    reports = []
    for name in ctx.pool_names(pool):
        opened = ctx.open_pool(name, load_index=False)
        report = check(opened, read_data=read_data, subset=subset, progress=progress)
        report.pool = name
        reports.append((name, report))
    return reports


def reindex_pool(ctx: Context, name: str) -> dict[str, Any]:
    """Rebuild the pool's index from its packs, and the state's catalogue of its
    snapshots and packs from the pool alone."""
    from sqlmodel import delete

    from costor.db.models import PackRow, SnapshotRow
    from costor.db.session import session_scope
    from costor.store.checker import reindex

    opened = ctx.open_pool(name, load_index=False)
    report = reindex(opened)
    snapshots = opened.list_snapshots()
    packs = opened.list_packs()
    with session_scope(ctx.engine) as session:
        session.exec(delete(SnapshotRow).where(SnapshotRow.pool_uuid == opened.uuid))  # type: ignore[arg-type]
        session.exec(delete(PackRow).where(PackRow.pool_uuid == opened.uuid))  # type: ignore[arg-type]
        for snapshot in snapshots:
            session.add(snapshot_row(opened.uuid, snapshot))
        for pack_id, size in packs.items():
            session.add(PackRow(pool_uuid=opened.uuid, pack_id=pack_id, size=size))
    return {
        "pool": name,
        "uuid": opened.uuid,
        "packs": report.packs,
        "blobs": report.blobs,
        "snapshots": len(snapshots),
        "segments_removed": report.segments_removed,
        "unreadable_packs": report.unreadable_packs,
        "reindexed_at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
