"""Queries on the running ``costor serve`` instances (the ``instances`` table): each
registers at start, beats a heartbeat every few seconds and unregisters when it stops."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete, select, update

from costor.db.models import InstanceRow
from costor.db.session import session_scope
from costor.util.clock import utcnow


def register(engine: Engine, instance_id: str, *, hostname: str, pid: int) -> None:
    """Record instance ``instance_id`` as started now (its first heartbeat too)."""
    now = utcnow()
    with session_scope(engine) as session:
        session.add(
            InstanceRow(
                id=instance_id, hostname=hostname, pid=pid, started_at=now, heartbeat_at=now
            )
        )


def heartbeat(engine: Engine, instance_id: str, *, stopping: bool) -> None:
    """The instance is alive now (and whether it is stopping)."""
    with session_scope(engine) as session:
        session.execute(
            update(InstanceRow)
            .where(col(InstanceRow.id) == instance_id)
            .values(heartbeat_at=utcnow(), stopping=stopping)
        )


def unregister(engine: Engine, instance_id: str) -> None:
    with session_scope(engine) as session:
        session.execute(delete(InstanceRow).where(col(InstanceRow.id) == instance_id))


def all_instances(session: Session) -> list[InstanceRow]:
    """Every registered instance, alive or not (its heartbeat tells)."""
    return list(session.exec(select(InstanceRow)).all())
