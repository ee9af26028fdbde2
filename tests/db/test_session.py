"""The state database on real SQLite or PostgreSQL (the PostgreSQL pass of the suite):
migrations and concurrent writers."""

from __future__ import annotations

import json
import threading

from sqlmodel import select

from costor.db.models import SnapshotRow
from costor.db.session import HEAD_REVISION, current_revision, open_engine, session_scope


def test_migrates_once_and_reopens(state_url: str) -> None:
    url = state_url
    engine = open_engine(url)
    with engine.connect() as connection:
        assert current_revision(connection) == HEAD_REVISION
    again = open_engine(url)  # already at head: nothing to do, no error
    with again.connect() as connection:
        assert current_revision(connection) == HEAD_REVISION


def test_concurrent_writers_all_succeed(state_url: str) -> None:
    """Writers that read before writing (as session.merge does) must wait for each
    other, not fail with "database is locked"."""
    url = state_url
    open_engine(url)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        engine = open_engine(url)  # its own connection pool, as another process has
        try:
            for i in range(15):
                with session_scope(engine) as session:
                    session.merge(
                        SnapshotRow(
                            id=f"{number:02d}-{i:02d}",
                            pool_uuid="p",
                            client=f"c{number}",
                            time="t",
                            tree="x",
                            paths=json.dumps([]),
                            counters="{}",
                        )
                    )
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_scope(open_engine(url), write=False) as session:
        assert len(session.exec(select(SnapshotRow)).all()) == 8 * 15


def test_upgrades_a_database_from_the_first_schema(state_url: str) -> None:
    """A state database made by 0.1's first schema is migrated in place, rows kept."""
    from sqlalchemy import create_engine, text

    from costor.db.session import upgrade

    url = state_url
    old = create_engine(url)
    upgrade(old, "0001")
    with old.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO pools (name, uuid, backend, location, encryption, created_at, "
                "updated_at) VALUES ('main', 'u', 'local', '/p', 'none', '2026-01-01', '2026-01-01')"
            )
        )
    engine = open_engine(url)
    with engine.connect() as connection:
        assert current_revision(connection) == HEAD_REVISION
        row = connection.execute(text("SELECT name, bytes_raw, bytes_stored FROM pools")).one()
    assert tuple(row) == ("main", 0, 0)


def test_database_urls_in_messages_hide_credentials() -> None:
    from costor.db.session import describe_url

    shown = describe_url("postgresql+psycopg://costor:s3cret@db/costor?sslpassword=s3cret")
    assert "s3cret" not in shown and "db/costor" in shown
