"""costor.db.catalogue on real SQLite or PostgreSQL: the snapshot and pack catalogue
(latest times, the pools holding a client's snapshots, owners, deletion, a reindex's
replacement, checks' verification times, a prune's pack changes)."""

from __future__ import annotations

from datetime import UTC

from support.rows import NOW, pool_row, snapshot_row

from costor.db import catalogue
from costor.db.models import PackRow
from costor.db.session import open_engine, session_scope


def test_snapshots_latest_pools_owners_and_deletion(state_url: str) -> None:
    engine = open_engine(state_url)
    with session_scope(engine) as session:
        session.add_all([pool_row("main", "u1"), pool_row("far", "u2"), pool_row("empty", "u3")])
        session.add_all(
            [
                snapshot_row("s1", "u1", "web", "2026-01-01T00:00:00.000000Z"),
                snapshot_row("s2", "u2", "web", "2026-01-02T00:00:00.000000Z"),
                snapshot_row("s3", "u1", "db", "2026-01-03T00:00:00.000000Z"),
            ]
        )
    with session_scope(engine, write=False) as session:
        assert catalogue.latest_snapshot_times(session) == {
            "web": "2026-01-02T00:00:00.000000Z",
            "db": "2026-01-03T00:00:00.000000Z",
        }
        assert catalogue.catalogued_pool_names(session) == ["far", "main"]
        assert catalogue.catalogued_pool_names(session, ["db"]) == ["main"]
        assert catalogue.catalogued_pool_names(session, ["nobody"]) == []
        assert catalogue.snapshot_owners(session, ["s1", "s3", "gone"]) == {
            "s1": "web",
            "s3": "db",
        }
    with session_scope(engine) as session:
        catalogue.delete_snapshot_rows(session, ["s1", "s2"])
    with session_scope(engine, write=False) as session:
        assert catalogue.snapshot_owners(session, ["s1", "s2", "s3"]) == {"s3": "db"}


def test_packs_reindex_verification_and_prune(state_url: str) -> None:
    engine = open_engine(state_url)
    with session_scope(engine) as session:
        session.add_all(
            [
                snapshot_row("old", "u1", "web", "2026-01-01T00:00:00.000000Z"),
                snapshot_row("other", "u2", "web", "2026-01-01T00:00:00.000000Z"),
                PackRow(pool_uuid="u1", pack_id="stale", size=1),
                PackRow(pool_uuid="u2", pack_id="p9", size=9),
            ]
        )
    with session_scope(engine) as session:
        catalogue.replace_pool_catalogue(
            session,
            "u1",
            [snapshot_row("new", "u1", "web", "2026-01-05T00:00:00.000000Z")],
            {"p1": 10, "p2": 20},
        )
    with session_scope(engine, write=False) as session:
        assert catalogue.snapshot_owners(session, ["old", "new", "other"]) == {
            "new": "web",
            "other": "web",
        }
        assert catalogue.pack_verified_times(session, "u1") == {"p1": None, "p2": None}
        assert catalogue.pack_verified_times(session, "u2") == {"p9": None}
    with session_scope(engine) as session:
        rows = catalogue.pack_rows(session, "u1", ["p1", "unknown"])
        assert list(rows) == ["p1"] and rows["p1"].size == 10
        rows["p1"].last_verified = NOW
        session.add(rows["p1"])
    with session_scope(engine, write=False) as session:
        verified = catalogue.pack_verified_times(session, "u1")
        assert verified["p2"] is None and verified["p1"] is not None
        assert verified["p1"].replace(tzinfo=UTC) == NOW
    with session_scope(engine) as session:
        catalogue.update_packs(session, "u1", deleted=["p2"], written={"p1": 11, "p3": 30})
        catalogue.update_packs(session, "u2", deleted=[], written={})
    with session_scope(engine, write=False) as session:
        assert sorted(catalogue.pack_verified_times(session, "u1")) == ["p1", "p3"]
        sizes = {p: r.size for p, r in catalogue.pack_rows(session, "u1", ["p1", "p3"]).items()}
        assert sizes == {"p1": 11, "p3": 30}
        assert catalogue.pack_verified_times(session, "u2") == {"p9": None}
