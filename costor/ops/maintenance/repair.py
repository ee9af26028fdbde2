"""``costor pool repair POOL [--from SRC]``: check a pool, put back what another copy of
it holds, store lost blobs again from it, and say what is still lost (docs/repair.md)."""

from __future__ import annotations

from costor.db import catalogue
from costor.db.session import session_scope
from costor.errors import UsageError
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.ops.maintenance.check import missing_snapshots
from costor.ops.maintenance.pool_copy import resolve_location
from costor.store.progress import Progress
from costor.store.repair import RepairReport, repair


def repair_pool(
    ctx: Context,
    name: str,
    *,
    source: str | None = None,
    like: str | None = None,
    read_data: bool = False,
    progress: Progress | None = None,
) -> RepairReport:
    """``source``: a declared pool's name or a location (as for ``pool copy``) holding a
    copy of this pool; ``like``: the declared S3 pool an ``s3://`` source takes its
    endpoint and credentials from. Recorded in the audit log before anything is put
    back (costor.ops.audit)."""
    detail = {"from": source, "read_data": read_data}
    with audited(ctx, "pool.repair", f"pool:{name}", detail=detail, before=True) as noted:
        report = _repair(
            ctx, name, source=source, like=like, read_data=read_data, progress=progress
        )
        assert report.remaining is not None
        noted["problems_left"] = len(report.remaining.problems)
    return report


def _repair(
    ctx: Context,
    name: str,
    *,
    source: str | None,
    like: str | None,
    read_data: bool,
    progress: Progress | None,
) -> RepairReport:
    pool = ctx.open_pool(name, load_index=False)
    backend = resolve_location(ctx, source, like=like) if source is not None else None
    if backend is not None and backend.location == pool.location:
        raise UsageError(message=f"--from {source}: that is pool {name} itself, not a copy of it")
    with session_scope(ctx.engine, write=False) as session:
        catalogued = catalogue.catalogued_snapshots(session, pool.uuid)
    held = set(pool.snapshot_ids())
    report = repair(
        pool,
        source=backend,
        read_data=read_data,
        snapshots=set(catalogued) - held,
        progress=progress,
    )
    report.pool = name
    assert report.remaining is not None
    report.found.pool = report.remaining.pool = name
    report.found.problems.extend(missing_snapshots(ctx, name, pool.uuid, catalogued, held))
    report.remaining.problems.extend(
        missing_snapshots(ctx, name, pool.uuid, catalogued, set(pool.snapshot_ids()))
    )
    return report
