"""Queries on the pools the state knows (the ``pools`` table) and the catalogue rows
kept per pool (``snapshots`` and ``packs``): listing pools, finding one by UUID,
counting and deleting a pool's or a client's catalogued snapshots, and adding a
backup's bytes to its pool's totals."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, update
from sqlmodel import Session, delete, select

from costor.db.models import PackRow, PoolRow, SnapshotRow


def pool_rows(session: Session) -> list[PoolRow]:
    """Every pool row, in the database's own order."""
    return list(session.exec(select(PoolRow)))


def pool_by_uuid(session: Session, uuid: str) -> PoolRow | None:
    """The pool row recorded with ``uuid`` (the first, should there be several)."""
    return session.exec(select(PoolRow).where(PoolRow.uuid == uuid)).first()


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


def add_pool_bytes(session: Session, pool_uuid: str, *, raw: int, stored: int) -> None:
    """Add new data written to the pool, before (``raw``) and after compression
    (``stored``), to its totals: one statement, so concurrent backups both count."""
    session.execute(
        update(PoolRow)
        .where(PoolRow.uuid == pool_uuid)  # type: ignore[arg-type]
        .values(
            bytes_raw=PoolRow.bytes_raw + raw,
            bytes_stored=PoolRow.bytes_stored + stored,
        )
    )
