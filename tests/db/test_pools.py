"""costor.db.pools and the catalogue's counts (costor.db.catalogue) on real SQLite or
PostgreSQL: pools by UUID, snapshot counts per pool and per client, a pool's catalogue
dropped, a backup's bytes added."""

from __future__ import annotations

from support.rows import pool_row, snapshot_row

from costor.db.catalogue import (
    delete_pool_catalogue,
    snapshot_count,
    snapshot_counts_by_pool,
    snapshots_of_clients,
)
from costor.db.models import PackRow, PoolRow
from costor.db.pools import add_pool_bytes, pool_by_uuid, pool_rows
from costor.db.session import open_engine, session_scope


def test_pool_queries(state_url: str) -> None:
    engine = open_engine(state_url)
    with session_scope(engine) as session:
        session.add(pool_row("hq", "u-hq"))
        session.add(pool_row("dr", "u-dr"))
        session.add(snapshot_row("s1", "u-hq", "web1"))
        session.add(snapshot_row("s2", "u-hq", "web0"))  # web1's earlier name
        session.add(snapshot_row("s3", "u-dr", "web1"))
        session.add(snapshot_row("s4", "u-gone", "web1"))  # a pool no longer recorded
        session.add(snapshot_row("s5", "u-dr", "db1"))
        session.add(PackRow(pool_uuid="u-dr", pack_id="p1", size=10))
        session.add(PackRow(pool_uuid="u-hq", pack_id="p2", size=20))

    with session_scope(engine, write=False) as session:
        assert sorted(row.name for row in pool_rows(session)) == ["dr", "hq"]
        found = pool_by_uuid(session, "u-dr")
        assert found is not None and found.name == "dr"
        assert pool_by_uuid(session, "u-none") is None
        assert snapshot_count(session) == 5
        assert snapshot_count(session, pool_uuid="u-hq") == 2
        assert snapshot_count(session, client=["web1"]) == 3
        assert snapshot_count(session, pool_uuid="u-dr", client=["web1", "web0"]) == 1
        assert sorted(snapshot_counts_by_pool(session, ["web1", "web0"]), key=str) == [
            ("dr", 1),
            ("hq", 2),
            (None, 1),
        ]
        assert sorted(s.id for s in snapshots_of_clients(session, ["web0", "db1"])) == [
            "s2",
            "s5",
        ]

    with session_scope(engine) as session:
        delete_pool_catalogue(session, "u-dr")
        add_pool_bytes(session, "u-hq", raw=100, stored=40)
        add_pool_bytes(session, "u-hq", raw=1, stored=2)

    with session_scope(engine, write=False) as session:
        assert sorted(s.id for s in snapshots_of_clients(session, ["web1", "web0", "db1"])) == [
            "s1",
            "s2",
            "s4",
        ]
        assert session.get(PackRow, ("u-dr", "p1")) is None
        assert session.get(PackRow, ("u-hq", "p2")) is not None
        hq = session.get(PoolRow, "hq")
        assert hq is not None and (hq.bytes_raw, hq.bytes_stored) == (101, 42)
        assert session.get(PoolRow, "dr") is not None  # its row stays
