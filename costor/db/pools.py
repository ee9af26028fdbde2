"""Queries on the pools the state knows (the ``pools`` table): listing them, finding
one by UUID, and adding a backup's bytes to its pool's totals. What a pool holds (its
snapshots and packs) is the catalogue's (:mod:`costor.db.catalogue`)."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, select

from costor.db.models import PoolRow


def pool_rows(session: Session) -> list[PoolRow]:
    """Every pool row, in the database's own order."""
    return list(session.exec(select(PoolRow)))


def pool_by_uuid(session: Session, uuid: str) -> PoolRow | None:
    """The pool row recorded with ``uuid`` (the first, should there be several)."""
    return session.exec(select(PoolRow).where(PoolRow.uuid == uuid)).first()


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
