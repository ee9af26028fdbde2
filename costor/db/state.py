"""The control-plane state: its identity (lineage, serial), the resources as last
applied, and the state lock that keeps two applies from interleaving.

Everything here takes a session or an engine and returns plain rows; what a resource
*means* is decided by ``costor.plan``, and what apply does by ``costor.ops``.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from costor.db.models import ResourceRow, StateLockRow, StateMetaRow
from costor.db.session import session_scope
from costor.errors import StateError, StateLocked
from costor.util.processes import holder_gone, host_id, process_started

LOCK_NAME = "state"
# PostgreSQL session advisory lock key of the state lock (any constant; distinct from
# the migration lock). Held on a dedicated connection for the whole apply, so a killed
# apply releases it the moment its connection drops.
STATE_LOCK_KEY = 0x636F7375  # "cosu"


@dataclass(frozen=True)
class StateMeta:
    lineage: str
    serial: int
    plan_key: bytes


def _now() -> datetime:
    return datetime.now(UTC)


def read_meta(session: Session) -> StateMeta | None:
    """The state's identity, or None for a state that was never written by apply."""
    rows = {row.key: row.value for row in session.exec(select(StateMetaRow))}
    if "lineage" not in rows:
        return None
    return StateMeta(rows["lineage"], int(rows["serial"]), bytes.fromhex(rows["plan_key"]))


def ensure_meta(engine: Engine) -> StateMeta:
    """The state's identity, created on first use (a new lineage and signing key)."""
    with session_scope(engine, write=False) as session:
        meta = read_meta(session)
    if meta is not None:
        return meta
    try:
        with session_scope(engine) as session:
            if read_meta(session) is None:
                session.add(StateMetaRow(key="lineage", value=str(uuid.uuid4())))
                session.add(StateMetaRow(key="serial", value="0"))
                session.add(StateMetaRow(key="plan_key", value=secrets.token_hex(32)))
    except IntegrityError:
        pass  # another process created it first; theirs is the state's identity
    with session_scope(engine, write=False) as session:
        meta = read_meta(session)
    assert meta is not None
    return meta


def bump_serial(session: Session) -> int:
    """Count one committed control-plane change, in the caller's transaction."""
    row = session.get(StateMetaRow, "serial")
    if row is None:
        raise StateError(message="the state has no serial; it was not initialised")
    row.value = str(int(row.value) + 1)
    session.add(row)
    return int(row.value)


def resource_rows(session: Session) -> list[ResourceRow]:
    return list(session.exec(select(ResourceRow).order_by(ResourceRow.address)))


def resource_rows_as_stored(session: Session) -> list[ResourceRow]:
    """Every resource row in the database's own order (no ORDER BY): the order the
    applied configuration has always been read in."""
    return list(session.exec(select(ResourceRow)))


# --- the state lock ----------------------------------------------------------------------


@dataclass(frozen=True)
class LockInfo:
    lock_id: str
    operation: str
    who: str
    host: str
    pid: int
    created_at: datetime
    host_id: str = ""
    started: int | None = None

    def describe(self) -> str:
        return (
            f"lock {self.lock_id} held by {self.who} (pid {self.pid}) for "
            f"{self.operation!r} since {self.created_at:%Y-%m-%d %H:%M:%S} UTC"
        )


def lock_holder(engine: Engine) -> LockInfo | None:
    with session_scope(engine, write=False) as session:
        row = session.get(StateLockRow, LOCK_NAME)
        return _info(row) if row else None


def _info(row: StateLockRow) -> LockInfo:
    return LockInfo(
        row.lock_id,
        row.operation,
        row.who,
        row.host,
        row.pid,
        row.created_at,
        row.host_id,
        row.started,
    )


def _holder_is_dead(row: StateLockRow) -> bool:
    """A lock row left by a process of this host that no longer runs (killed -9).

    Only this host can tell (same hostname, boot and PID namespace): a holder elsewhere
    is trusted until it releases the lock or someone runs ``costor force-unlock``. A PID
    that now belongs to a process started at another time is a reused PID: dead holder.
    """
    return holder_gone(row.host_id, row.pid, row.started)


@contextmanager
def state_lock(engine: Engine, operation: str, *, timeout: float = 0.0) -> Iterator[LockInfo]:
    """Hold the state lock for the ``with`` block; wait up to ``timeout`` seconds.

    SQLite: a row in ``state_lock``, inserted in a write transaction (so only one
    process can insert it); a row whose holder is a dead process of this host is taken
    over. PostgreSQL: a session advisory lock on a connection kept open for the block
    (released by the server if this process dies), plus the same row so that a waiting
    process can say who holds it. Raises :class:`StateLocked` naming the holder.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    me = LockInfo(
        lock_id=str(uuid.uuid4()),
        operation=operation,
        who=f"{_user()}@{socket.gethostname()}",
        host=socket.gethostname(),
        pid=os.getpid(),
        created_at=_now().replace(microsecond=0),
        host_id=host_id(),
        started=process_started(os.getpid()),
    )
    advisory: Connection | None = None
    if engine.dialect.name == "postgresql":
        advisory = engine.connect()
    try:
        delay = 0.05
        while True:
            holder = _try_lock(engine, advisory, me)
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise StateLocked(holder=holder.describe(), lock_id=holder.lock_id)
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 2, 1.0)
        try:
            yield me
        finally:
            with session_scope(engine) as session:
                row = session.get(StateLockRow, LOCK_NAME)
                if row is not None and row.lock_id == me.lock_id:
                    session.delete(row)
    finally:
        if advisory is not None:
            # This connection exists only for the lock: release whatever it holds (also
            # when something failed between taking the lock and the block) before it goes
            # back to the pool, where a session lock would otherwise live on.
            try:
                advisory.execute(text("SELECT pg_advisory_unlock_all()"))
                advisory.commit()
            finally:
                advisory.close()


def _try_lock(engine: Engine, advisory: Connection | None, me: LockInfo) -> LockInfo | None:
    """Take the lock (None) or return who holds it."""
    if advisory is not None:
        got = advisory.execute(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": STATE_LOCK_KEY}
        ).scalar()
        advisory.commit()
        if not got:
            return lock_holder(engine) or LockInfo(
                "unknown", "unknown", "another session", "?", 0, _now()
            )
    try:
        with session_scope(engine) as session:
            row = session.get(StateLockRow, LOCK_NAME)
            if row is not None:
                # On PostgreSQL we hold the advisory lock, so a row is a dead session's.
                if advisory is None and not _holder_is_dead(row):
                    return _info(row)
                session.delete(row)
                session.flush()
            session.add(StateLockRow(name=LOCK_NAME, **_row_fields(me)))
    except IntegrityError:
        return lock_holder(engine) or me  # lost a race; report the winner next round
    return None


def _row_fields(info: LockInfo) -> dict[str, Any]:
    return {
        "lock_id": info.lock_id,
        "operation": info.operation,
        "who": info.who,
        "host": info.host,
        "host_id": info.host_id,
        "pid": info.pid,
        "started": info.started,
        "created_at": info.created_at,
    }


def force_unlock(engine: Engine, lock_id: str) -> LockInfo:
    """Remove the lock if it has ``lock_id`` (the id the refused command printed).

    On PostgreSQL the lock is held by a database session: that session is ended
    (``pg_terminate_backend``), or the lock would live on with a frozen or unreachable
    holder's connection.
    """
    if engine.dialect.name == "postgresql":
        holder = lock_holder(engine)
        if holder is not None and holder.lock_id == lock_id:
            with engine.connect() as connection:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE "
                        "locktype = 'advisory' AND classid = 0 AND objid = :key AND granted "
                        "AND pid <> pg_backend_pid()"
                    ),
                    {"key": STATE_LOCK_KEY},
                )
                connection.commit()
    with session_scope(engine) as session:
        row = session.get(StateLockRow, LOCK_NAME)
        if row is None:
            raise StateError(message="the state is not locked")
        if row.lock_id != lock_id:
            raise StateError(
                message=f"the state is locked by {row.lock_id}, not {lock_id}; "
                "give the id the refused command printed"
            )
        info = _info(row)
        session.delete(row)
    return info


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
