"""Queries on the catalogue of what the pools hold (the ``snapshots`` and ``packs``
tables), the state's index of the pools, rebuilt from them by ``costor pool reindex``;
which pools (``pools``) hold a client's snapshots, and how many snapshots a pool or
a client has."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, delete, select

from costor.db.models import PackRow, PoolRow, SnapshotRow


def latest_snapshot_times(session: Session) -> dict[str, str]:
    """Client name (as each snapshot was taken) -> the time of its newest snapshot, in
    any pool. Times are RFC 3339 UTC with microseconds, so the greatest string is the
    latest time."""
    rows = session.exec(
        select(SnapshotRow.client, func.max(SnapshotRow.time)).group_by(col(SnapshotRow.client))
    ).all()
    return {client: time for client, time in rows if time is not None}


def catalogued_pool_names(
    session: Session, client_names: Collection[str] | None = None
) -> list[str]:
    """Names of the pools the catalogue records as holding snapshots (of one of
    ``client_names``, when given), sorted."""
    query = select(PoolRow.name).join(SnapshotRow, col(SnapshotRow.pool_uuid) == PoolRow.uuid)
    if client_names is not None:
        query = query.where(col(SnapshotRow.client).in_(list(client_names)))
    return sorted(set(session.exec(query.distinct()).all()))


def snapshot_owners(session: Session, snapshot_ids: Collection[str]) -> dict[str, str]:
    """Snapshot id -> the client it was taken as, for the ids the catalogue has."""
    return dict(
        session.exec(
            select(SnapshotRow.id, SnapshotRow.client).where(
                col(SnapshotRow.id).in_(list(snapshot_ids))
            )
        ).all()
    )


def catalogued_snapshots(session: Session, pool_uuid: str) -> dict[str, SnapshotRow]:
    """Snapshot id -> its catalogue row, for the snapshots recorded in one pool."""
    rows = session.exec(select(SnapshotRow).where(col(SnapshotRow.pool_uuid) == pool_uuid))
    return {row.id: row for row in rows}


def delete_snapshot_rows(session: Session, snapshot_ids: Collection[str]) -> None:
    session.exec(delete(SnapshotRow).where(col(SnapshotRow.id).in_(snapshot_ids)))


def snapshot_count(
    session: Session, *, pool_uuid: str | None = None, client: Sequence[str] | None = None
) -> int:
    """Catalogued snapshots, of one pool and/or taken under any of the names in
    ``client``; no filter counts them all."""
    query = select(func.count()).select_from(SnapshotRow)
    if pool_uuid is not None:
        query = query.where(SnapshotRow.pool_uuid == pool_uuid)
    if client is not None:
        query = query.where(SnapshotRow.client.in_(client))  # type: ignore[attr-defined]
    return int(session.exec(query).one())


def logical_bytes_by_pool(session: Session) -> dict[str, int]:
    """pool uuid -> the sum of its catalogued snapshots' ``bytes_processed`` (what each
    snapshot holds, before deduplication): the numerator of a pool's dedup ratio. Reads
    the counters column only."""
    totals: dict[str, int] = {}
    for pool_uuid, counters in session.exec(select(SnapshotRow.pool_uuid, SnapshotRow.counters)):
        try:
            processed = int(json.loads(counters).get("bytes_processed", 0))
        except (ValueError, TypeError, AttributeError):
            processed = 0  # a catalogue row is the state's own; a bad one counts nothing
        totals[pool_uuid] = totals.get(pool_uuid, 0) + max(processed, 0)
    return totals


def snapshot_counts_by_pool(
    session: Session, clients: Sequence[str]
) -> list[tuple[str | None, int]]:
    """(pool name, number) of the snapshots taken under any of the names in
    ``clients``, per pool; the name is None for snapshots of a pool no longer recorded."""
    query = (
        select(PoolRow.name, func.count())
        .select_from(SnapshotRow)
        .join(PoolRow, PoolRow.uuid == SnapshotRow.pool_uuid, isouter=True)  # type: ignore[arg-type]
        .where(SnapshotRow.client.in_(clients))  # type: ignore[attr-defined]
        .group_by(PoolRow.name)
    )
    return [(pool, int(number)) for pool, number in session.exec(query)]


def snapshots_of_clients(session: Session, clients: Sequence[str]) -> list[SnapshotRow]:
    """The catalogued snapshots taken under any of the names in ``clients``."""
    query = select(SnapshotRow).where(SnapshotRow.client.in_(clients))  # type: ignore[attr-defined]
    return list(session.exec(query))


def delete_pool_catalogue(session: Session, pool_uuid: str) -> None:
    """Remove a pool's snapshots and packs from the catalogue (its row stays)."""
    session.exec(delete(SnapshotRow).where(SnapshotRow.pool_uuid == pool_uuid))  # type: ignore[arg-type]
    session.exec(delete(PackRow).where(PackRow.pool_uuid == pool_uuid))  # type: ignore[arg-type]


def replace_pool_catalogue(
    session: Session,
    pool_uuid: str,
    snapshots: Iterable[SnapshotRow],
    packs: Mapping[str, int],
) -> None:
    """The pool's snapshot and pack rows become ``snapshots`` and ``packs`` (pack id ->
    size), as read from the pool: ``costor pool reindex``."""
    delete_pool_catalogue(session, pool_uuid)
    for row in snapshots:
        session.add(row)
    for pack_id, size in packs.items():
        session.add(PackRow(pool_uuid=pool_uuid, pack_id=pack_id, size=size))


def pack_verified_times(session: Session, pool_uuid: str) -> dict[str, datetime | None]:
    """Pack id -> when a check last read it whole (None: never), of the pool's
    catalogued packs."""
    rows = session.exec(
        select(PackRow.pack_id, PackRow.last_verified).where(col(PackRow.pool_uuid) == pool_uuid)
    ).all()
    return {pack_id: verified for pack_id, verified in rows}


def pack_rows(session: Session, pool_uuid: str, pack_ids: Collection[str]) -> dict[str, PackRow]:
    """The catalogue rows of the pool's packs ``pack_ids`` that it has, by pack id."""
    return {
        row.pack_id: row
        for row in session.exec(
            select(PackRow).where(
                col(PackRow.pool_uuid) == pool_uuid, col(PackRow.pack_id).in_(list(pack_ids))
            )
        ).all()
    }


def update_packs(
    session: Session, pool_uuid: str, *, deleted: Collection[str], written: Mapping[str, int]
) -> None:
    """After a prune: the ``deleted`` packs' rows go, the ``written`` ones (pack id ->
    size) are added or updated."""
    if deleted:
        session.execute(
            delete(PackRow).where(
                PackRow.pool_uuid == pool_uuid,  # type: ignore[arg-type]
                PackRow.pack_id.in_(list(deleted)),  # type: ignore[attr-defined]
            )
        )
    for pack_id, size in written.items():
        session.merge(PackRow(pool_uuid=pool_uuid, pack_id=pack_id, size=size))
