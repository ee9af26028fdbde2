"""Checking pools and rebuilding their index and catalogue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from costor.db import catalogue
from costor.db.models import PackRow
from costor.db.session import session_scope
from costor.errors import CostorError, NotApplied
from costor.ops.audit import anchor_head, audited
from costor.ops.context import Context, snapshot_row
from costor.store.checker import CheckReport, Problem, check, reindex
from costor.store.progress import Progress
from costor.util.clock import utcnow


@dataclass(frozen=True)
class PoolNotChecked:
    """A pool ``check`` could not check: it could not be opened (missing, unreachable,
    wrong passphrase, foreign) or its storage failed part-way."""

    pool: str
    error: str
    error_type: str
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "error": self.error,
            "error_type": self.error_type,
            "exit_code": self.exit_code,
        }


@dataclass
class CheckOutcome:
    """Every pool checked (name, report), and those that could not be."""

    reports: list[tuple[str, CheckReport]] = field(default_factory=list)
    not_checked: list[PoolNotChecked] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        """Damage was found (or an error that means damage stopped a pool's check)."""
        return any(not report.ok for _name, report in self.reports) or any(
            failure.exit_code == 3 for failure in self.not_checked
        )

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.not_checked

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "damaged": self.damaged,
            "pools": [report.to_json() for _name, report in self.reports],
            "not_checked": [failure.to_json() for failure in self.not_checked],
        }


def check_all(
    ctx: Context,
    *,
    pool: str | None = None,
    read_data: bool = False,
    subset: float | None = None,
    progress: Progress | None = None,
) -> CheckOutcome:
    """Check ``pool``, or every pool: one that cannot be opened or read is recorded in
    the outcome and the others are still checked. A named pool that cannot be checked
    raises its error, as any command on one pool does."""
    outcome = CheckOutcome()
    for name in ctx.pool_names(pool):
        try:
            report = _check_one(ctx, name, read_data=read_data, subset=subset, progress=progress)
        except CostorError as error:
            if pool is not None:
                raise
            outcome.not_checked.append(
                PoolNotChecked(name, str(error), type(error).__name__, error.exit_code)
            )
            continue
        outcome.reports.append((name, report))
    if pool is None and ctx.working is not None:
        # Declared but never applied: nothing runs it, so it was not checked either.
        for name in sorted(set(ctx.working.pools) - set(ctx.inventory.pools)):
            unapplied = NotApplied(address=f"pool.{name}")
            outcome.not_checked.append(
                PoolNotChecked(name, str(unapplied), "NotApplied", unapplied.exit_code)
            )
    return outcome


def check_pools(
    ctx: Context,
    *,
    pool: str | None = None,
    read_data: bool = False,
    subset: float | None = None,
    progress: Progress | None = None,
) -> list[tuple[str, Any]]:
    """Returns (pool name, CheckReport) per pool; the first pool that cannot be checked
    raises (a scheduled check of one pool: its job fails with that error)."""
    return [
        (name, _check_one(ctx, name, read_data=read_data, subset=subset, progress=progress))
        for name in ctx.pool_names(pool)
    ]


def _check_one(
    ctx: Context,
    name: str,
    *,
    read_data: bool,
    subset: float | None,
    progress: Progress | None,
) -> CheckReport:
    detail = {"read_data": read_data, "subset": subset}
    with audited(ctx, "check", f"pool:{name}", detail=detail) as noted:
        report = _check(ctx, name, read_data=read_data, subset=subset, progress=progress)
        noted.update(problems=len(report.problems), packs_read=report.packs_read)
    anchor_head(ctx, name)
    return report


def _check(
    ctx: Context,
    name: str,
    *,
    read_data: bool,
    subset: float | None,
    progress: Progress | None,
) -> CheckReport:
    opened = ctx.open_pool(name, load_index=False)

    def order(packs: list[str], uuid: str = opened.uuid) -> list[str]:
        return _least_recently_verified(ctx, uuid, packs)

    with session_scope(ctx.engine, write=False) as session:
        catalogued = catalogue.catalogued_snapshots(session, opened.uuid)
    held = set(opened.snapshot_ids())
    report = check(opened, read_data=read_data, subset=subset, progress=progress, order=order)
    report.pool = name
    report.problems.extend(missing_snapshots(ctx, name, opened.uuid, catalogued, held))
    _record_verified(ctx, opened, report.verified)
    return report


def missing_snapshots(
    ctx: Context, name: str, pool_uuid: str, catalogued: dict[str, Any], held: set[str]
) -> list[Problem]:
    """Rollback evidence: snapshots the catalogue recorded in this pool that the pool no
    longer holds (manifests deleted outside CoStor, or the storage rolled back to an
    older state). Counted only if the catalogue still records them after the check: a
    forget that ran meanwhile removed its rows, and a backup that started meanwhile was
    not in the catalogue read before the pool was listed."""
    missing = set(catalogued) - held
    if not missing:
        return []
    with session_scope(ctx.engine, write=False) as session:
        still = set(catalogue.catalogued_snapshots(session, pool_uuid))
    problems = []
    for snapshot_id in sorted(missing & still):
        row = catalogued[snapshot_id]
        problems.append(
            Problem(
                "missing_snapshot",
                f"snapshots/{snapshot_id}",
                f"the state records snapshot {snapshot_id[:12]} of client {row.client} "
                f"({row.time[:19].replace('T', ' ')}) in pool {name}, which no longer holds "
                "it: it was deleted outside CoStor, or the storage was rolled back. If that "
                f"was intended, `costor pool reindex --pool {name}` accepts the pool as it is",
            )
        )
    return problems


def _least_recently_verified(ctx: Context, pool_uuid: str, packs: list[str]) -> list[str]:
    """Never verified first, then oldest verification first: successive subset checks
    cover the whole pool (5% a week: every pack within 20 weeks)."""
    with session_scope(ctx.engine, write=False) as session:
        last = catalogue.pack_verified_times(session, pool_uuid)
    return sorted(packs, key=lambda p: (last.get(p) is not None, last.get(p) or 0, p))


def _record_verified(ctx: Context, pool: Any, packs: list[str]) -> None:
    if not packs:
        return
    pool_uuid = pool.uuid
    now = utcnow()
    sizes: dict[str, int] = {}
    with session_scope(ctx.engine) as session:
        known = catalogue.pack_rows(session, pool_uuid, packs)
        for pack_id in packs:
            row = known.get(pack_id)
            if row is None:  # a pack the catalogue did not know (e.g. an adopted orphan)
                sizes = sizes or pool.list_packs()
                row = PackRow(pool_uuid=pool_uuid, pack_id=pack_id, size=sizes.get(pack_id, 0))
            row.last_verified = now
            session.add(row)


@dataclass(frozen=True)
class ReindexOutcome:
    """``costor pool reindex``: what the index and the catalogue were rebuilt from."""

    pool: str
    uuid: str
    packs: int
    blobs: int
    snapshots: int
    segments_removed: int
    unreadable_packs: list[str]
    reindexed_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "uuid": self.uuid,
            "packs": self.packs,
            "blobs": self.blobs,
            "snapshots": self.snapshots,
            "segments_removed": self.segments_removed,
            "unreadable_packs": self.unreadable_packs,
            "reindexed_at": self.reindexed_at,
        }


def reindex_pool(ctx: Context, name: str) -> ReindexOutcome:
    """Rebuild the pool's index from its packs, and the state's catalogue of its
    snapshots and packs from the pool alone (recorded in the audit log first: it
    replaces the index)."""
    with audited(ctx, "pool.reindex", f"pool:{name}", before=True) as noted:
        opened = ctx.open_pool(name, load_index=False)
        report = reindex(opened)
        snapshots = opened.list_snapshots()
        packs = opened.list_packs()
        with session_scope(ctx.engine) as session:
            catalogue.replace_pool_catalogue(
                session, opened.uuid, [snapshot_row(opened.uuid, s) for s in snapshots], packs
            )
        noted.update(packs=report.packs, segments_removed=report.segments_removed)
    return ReindexOutcome(
        pool=name,
        uuid=opened.uuid,
        packs=report.packs,
        blobs=report.blobs,
        snapshots=len(snapshots),
        segments_removed=report.segments_removed,
        unreadable_packs=list(report.unreadable_packs),
        reindexed_at=utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
