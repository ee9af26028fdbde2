"""costor.db.hostkeys on real SQLite or PostgreSQL: a host key recorded, replaced,
moved with a renamed client (never over one recorded already), forgotten."""

from __future__ import annotations

from datetime import UTC, datetime

from costor.db.hostkeys import forget_host_key, host_key_row, move_host_key, record_host_key
from costor.db.session import open_engine, session_scope

FIRST = datetime(2026, 1, 1, tzinfo=UTC)
LATER = datetime(2026, 2, 1, tzinfo=UTC)


def test_host_key_queries(state_url: str) -> None:
    engine = open_engine(state_url)
    with session_scope(engine) as session:
        record_host_key(session, "web1", host="h1", port=22, key="k1", fingerprint="f1", now=FIRST)
        record_host_key(session, "db1", host="h2", port=22, key="k2", fingerprint="f2", now=FIRST)
    with session_scope(engine) as session:
        record_host_key(
            session, "web1", host="h1b", port=2222, key="k3", fingerprint="f3", now=LATER
        )

    with session_scope(engine, write=False) as session:
        row = host_key_row(session, "web1")
        assert row is not None
        assert (row.host, row.port, row.key, row.fingerprint) == ("h1b", 2222, "k3", "f3")
        assert row.recorded_at.replace(tzinfo=UTC) == LATER
        assert host_key_row(session, "nobody") is None

    with session_scope(engine) as session:
        move_host_key(session, "web1", "web9")  # a rename: the key goes with it
        move_host_key(session, "db1", "web9")  # web9 has one already: nothing moves
    with session_scope(engine, write=False) as session:
        assert host_key_row(session, "web1") is None
        moved = host_key_row(session, "web9")
        assert moved is not None and moved.fingerprint == "f3"
        assert moved.recorded_at.replace(tzinfo=UTC) == LATER
        kept = host_key_row(session, "db1")
        assert kept is not None and kept.fingerprint == "f2"

    with session_scope(engine) as session:
        forget_host_key(session, "web9")
        forget_host_key(session, "nobody")  # nothing recorded: nothing to do
    with session_scope(engine, write=False) as session:
        assert host_key_row(session, "web9") is None
