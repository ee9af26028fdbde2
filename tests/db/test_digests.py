"""costor.db.digests on real SQLite or PostgreSQL: a pool's digests counted, listed,
looked up, their block hashes found by content key, and replaced in batches."""

from __future__ import annotations

from typing import Any

from costor.db import digests
from costor.db.session import open_engine, session_scope


def _row(
    pool_uuid: str, digest: str, *, blocks: str | None = None, key: str = "ck"
) -> dict[str, Any]:
    return {
        "pool_uuid": pool_uuid,
        "digest": digest,
        "size": 1,
        "content": "ab" * 32,
        "content_key": key,
        "blocks": blocks,
    }


def test_digest_queries(state_url: str) -> None:
    engine = open_engine(state_url)
    many = [f"{n:064x}" for n in range(digests.BATCH + 10)]  # more than one DELETE batch
    with session_scope(engine) as session:
        digests.replace_digests(session, "p", many, [_row("p", d) for d in many])
        digests.replace_digests(session, "q", ["d1"], [_row("q", "d1", blocks="QkxL", key="k")])

    with session_scope(engine) as session:
        # The same digests again (another backup found them too): replaced, not doubled.
        again = [many[0], many[-1]]
        rows = [
            _row("p", again[0], blocks="", key="k"),
            _row("p", again[1], blocks="Qg==", key="k"),
        ]
        digests.replace_digests(session, "p", again, rows)

    with session_scope(engine, write=False) as session:
        assert digests.count_digests(session, "p") == len(many)
        assert digests.count_digests(session, "q") == 1
        assert digests.count_digests(session, "none") == 0
        assert sorted(digests.pool_digests(session, "p")) == sorted(many)
        row = digests.digest_row(session, "q", "d1")
        assert row is not None and (row.size, row.blocks) == (1, "QkxL")
        assert digests.digest_row(session, "p", "d1") is None
        assert digests.content_blocks(session, "p", "k") == "Qg=="  # the empty one skipped
        assert digests.content_blocks(session, "q", "k") == "QkxL"
        assert digests.content_blocks(session, "p", "ck") is None
