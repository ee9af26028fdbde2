"""costor.db.clients on real SQLite or PostgreSQL: every client row, retired ones too,
and clients moved to a renamed pool."""

from __future__ import annotations

from datetime import UTC, datetime

from costor.db.clients import client_rows, move_clients_to_pool
from costor.db.models import ClientRow
from costor.db.session import open_engine, session_scope

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _client(name: str, pool: str, *, retired: bool = False) -> ClientRow:
    return ClientRow(
        name=name,
        pool=pool,
        transport="local",
        config_digest="d",
        created_at=NOW,
        updated_at=NOW,
        retired_at=NOW if retired else None,
    )


def test_client_queries(state_url: str) -> None:
    engine = open_engine(state_url)
    with session_scope(engine) as session:
        session.add(_client("web1", "old"))
        session.add(_client("web2", "old", retired=True))
        session.add(_client("db1", "other"))

    with session_scope(engine) as session:
        move_clients_to_pool(session, "old", "new")

    with session_scope(engine, write=False) as session:
        rows = {row.name: row.pool for row in client_rows(session)}
    assert rows == {"web1": "new", "web2": "new", "db1": "other"}
