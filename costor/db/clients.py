"""Queries on the clients the state knows (the ``clients`` table): every client row,
current and retired, and moving clients from one pool name to another."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, select

from costor.db.models import ClientRow


def client_rows(session: Session) -> list[ClientRow]:
    """Every client row, retired ones too, in the database's own order."""
    return list(session.exec(select(ClientRow)))


def move_clients_to_pool(session: Session, old_pool: str, new_pool: str) -> None:
    """Every client recorded in pool ``old_pool`` is in ``new_pool`` now (a renamed
    pool), retired clients too: their snapshots are found through this name."""
    session.execute(
        update(ClientRow)
        .where(ClientRow.pool == old_pool)  # type: ignore[arg-type]
        .values(pool=new_pool)
    )
