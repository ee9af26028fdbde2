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

        def order(packs: list[str], uuid: str = opened.uuid) -> list[str]:
            return _least_recently_verified(ctx, uuid, packs)

        report = check(opened, read_data=read_data, subset=subset, progress=progress, order=order)
        report.pool = name
        _record_verified(ctx, opened, report.verified)
        reports.append((name, report))
    return reports


def _least_recently_verified(ctx: Context, pool_uuid: str, packs: list[str]) -> list[str]:
    """Never verified first, then oldest verification first: successive subset checks
    cover the whole pool (5% a week: every pack within 20 weeks)."""
    from sqlmodel import col, select

    from costor.db.models import PackRow
    from costor.db.session import session_scope

    with session_scope(ctx.engine, write=False) as session:
        rows = session.exec(
            select(PackRow.pack_id, PackRow.last_verified).where(
                col(PackRow.pool_uuid) == pool_uuid
            )
        ).all()
    last = {pack_id: verified for pack_id, verified in rows}
    return sorted(packs, key=lambda p: (last.get(p) is not None, last.get(p) or 0, p))


def _record_verified(ctx: Context, pool: Any, packs: list[str]) -> None:
    if not packs:
        return
    pool_uuid = pool.uuid
    from sqlmodel import col, select

    from costor.db.models import PackRow
    from costor.db.session import session_scope

    now = utcnow()
    sizes: dict[str, int] = {}
    with session_scope(ctx.engine) as session:
        known = {
            row.pack_id: row
            for row in session.exec(
                select(PackRow).where(
                    col(PackRow.pool_uuid) == pool_uuid, col(PackRow.pack_id).in_(packs)
                )
            ).all()
        }
        for pack_id in packs:
            row = known.get(pack_id)
            if row is None:  # a pack the catalogue did not know (e.g. an adopted orphan)
                sizes = sizes or pool.list_packs()
                row = PackRow(pool_uuid=pool_uuid, pack_id=pack_id, size=sizes.get(pack_id, 0))
            row.last_verified = now
            session.add(row)


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
