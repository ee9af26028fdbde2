"""Opening the state database and keeping its schema current.

SQLite (the embedded default) runs in WAL mode with a busy timeout, so a backup and a
CLI listing, or two backups, can use it at once. Migrations run automatically when the
schema is behind: Alembic is imported only then, so everyday commands don't pay for it.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from costor.errors import StateError

# Engine and Session are re-exported: the rest of CoStor names them from here, never from
# sqlalchemy or sqlmodel (only costor.db imports those).
__all__ = [
    "Engine",
    "Session",
    "describe_url",
    "migrate",
    "open_engine",
    "read_status",
    "session_scope",
    "upgrade",
    "upgrade_if_needed",
]

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD_REVISION = "0008"


def open_engine(url: str, *, upgrade_schema: bool = True) -> Engine:
    engine = _create(url)
    if not upgrade_schema:
        return engine
    try:
        upgrade_if_needed(engine)
    except Exception as error:
        raise StateError(message=f"cannot open state database {_safe_url(url)}: {error}") from error
    return engine


def _create(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        _private_database_file(Path(url.removeprefix("sqlite:///")))
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # pysqlite runs DDL outside transactions; take transaction control back so
            # a migration killed half-way rolls back whole (SQLAlchemy's documented
            # recipe for pysqlite).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            immediate = connection.get_execution_options().get("sqlite_immediate")
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
    else:
        # Every session in UTC: timestamps are stored as UTC, and a column without a time
        # zone must not be shifted by the server's or the role's TimeZone setting.
        # TCP keepalives: the session of a host that vanished (and the state lock it
        # held) is dropped by the server within about a minute, not hours.
        engine = create_engine(
            url,
            pool_pre_ping=True,
            connect_args={
                "options": "-c timezone=UTC",
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
    return engine


def current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _private_database_file(path: Path) -> None:
    """A SQLite state is readable by its owner only (0600): it holds the plan-signing
    key. Created so before SQLite opens it (SQLite gives its -wal and -shm files the
    database's mode); an existing file of this user's, and its -wal and -shm, are
    tightened (a state made before this rule)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # made before (or by another process starting at the same moment)
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            status = file.stat()
        except FileNotFoundError:
            continue
        if status.st_uid == os.getuid() and status.st_mode & 0o077:
            file.chmod(stat.S_IMODE(status.st_mode) & 0o600)


def upgrade_if_needed(engine: Engine) -> None:
    # Two processes opening a new SQLite state at once: the one that did not create it
    # can meet "database is locked" while the file is being switched to WAL, which the
    # busy timeout does not cover. Trying again a moment later sees the finished file.
    for attempt in range(5):
        try:
            with engine.connect() as connection:
                if current_revision(connection) == HEAD_REVISION:
                    return
            upgrade(engine)
            return
        except OperationalError as error:
            if "database is locked" not in str(error) or attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


# Any constant: PostgreSQL advisory lock key serialising migrations across instances.
MIGRATION_LOCK_KEY = 0x636F7374  # "cost"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate in one transaction that holds the database's write lock (SQLite: BEGIN
    IMMEDIATE; PostgreSQL: an advisory lock), so two processes starting at once migrate
    once, and a process killed mid-way leaves the old schema intact."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with (
        engine.connect().execution_options(sqlite_immediate=True) as connection,
        connection.begin(),
    ):
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
        if revision == "head" and current_revision(connection) == HEAD_REVISION:
            return
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def migrate(url: str) -> tuple[str | None, str]:
    """``costor db upgrade``: (revision before, revision after)."""
    engine = open_engine(url, upgrade_schema=False)
    try:
        with engine.connect() as connection:
            before = current_revision(connection)
        upgrade(engine)
        with engine.connect() as connection:
            after = current_revision(connection)
    except Exception as error:
        raise StateError(message=f"cannot upgrade {_safe_url(url)}: {error}") from error
    finally:
        engine.dispose()
    return before, after or HEAD_REVISION


def read_status(url: str) -> dict[str, object]:
    """Schema revision and state identity, read without changing anything."""
    engine = open_engine(url, upgrade_schema=False)
    status: dict[str, object] = {"database": _safe_url(url), "revision": None}
    try:
        with engine.connect() as connection:
            status["revision"] = current_revision(connection)
            if inspect(connection).has_table("state_meta"):
                rows: dict[str, str] = dict(
                    connection.execute(text("SELECT key, value FROM state_meta")).all()
                )
                status["lineage"] = rows.get("lineage")
                status["serial"] = int(rows["serial"]) if "serial" in rows else None
    except Exception as error:
        raise StateError(message=f"cannot read {_safe_url(url)}: {error}") from error
    finally:
        engine.dispose()
    return status


def describe_url(url: str) -> str:
    return _safe_url(url)


@contextmanager
def session_scope(engine: Engine, *, write: bool = True) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error; the
    caller owns the transaction (one per use case).

    On SQLite a writing transaction starts with BEGIN IMMEDIATE: a deferred one that
    reads first and writes later cannot wait for another writer (SQLite answers
    "database is locked" at once instead of using the busy timeout), which two
    concurrent backups hit when recording their snapshots."""
    bind = engine.execution_options(sqlite_immediate=True) if write else engine
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _safe_url(url: str) -> str:
    """The URL for messages: a password in it is never printed (SQLAlchemy's masking)."""
    try:
        parsed = make_url(url)
        # Query values may carry credentials too (?password=…, ?sslpassword=…).
        shown = parsed.set(query={key: "***" for key in parsed.query})
        return shown.render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show only its scheme
        return url.split("://", 1)[0] + "://…"
