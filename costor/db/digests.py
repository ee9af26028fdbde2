"""Queries on the whole-file digest index (the ``content_digests`` table), one pool at a
time: how many digests a pool has, which, the blobs one stands for, the block hashes
recorded for some content, and a backup's new digests written in one go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, select

from costor.db.models import ContentDigestRow

# Digests per DELETE statement when new ones replace old ones (bound parameters per
# statement stay well below SQLite's limit).
BATCH = 500


def count_digests(session: Session, pool_uuid: str) -> int:
    """How many digests the pool has."""
    query = select(func.count()).where(ContentDigestRow.pool_uuid == pool_uuid)
    return int(session.exec(query).one())


def pool_digests(session: Session, pool_uuid: str) -> list[str]:
    """Every digest of the pool, hex."""
    query = select(ContentDigestRow.digest).where(ContentDigestRow.pool_uuid == pool_uuid)
    return list(session.exec(query))


def digest_row(session: Session, pool_uuid: str, digest: str) -> ContentDigestRow | None:
    """The pool's entry for ``digest`` (hex), if any."""
    return session.get(ContentDigestRow, (pool_uuid, digest))


def content_blocks(session: Session, pool_uuid: str, content_key: str) -> str | None:
    """The first non-empty block hashes (base64) recorded in the pool for content with
    ``content_key``, or None."""
    query = select(ContentDigestRow.blocks).where(
        ContentDigestRow.pool_uuid == pool_uuid,
        ContentDigestRow.content_key == content_key,
    )
    for blocks in session.exec(query):
        if blocks:
            return blocks
    return None


def replace_digests(
    session: Session, pool_uuid: str, digests: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    """Write ``rows`` (one dict of column values per digest), replacing the pool's
    entries for ``digests``: one statement for all (a merge per row took 0.4 ms each:
    0.8 s for 2,000)."""
    table = ContentDigestRow.__table__  # type: ignore[attr-defined]
    for start in range(0, len(digests), BATCH):
        session.execute(
            delete(table).where(
                table.c.pool_uuid == pool_uuid,
                table.c.digest.in_(digests[start : start + BATCH]),
            )
        )
    session.execute(table.insert(), rows)
