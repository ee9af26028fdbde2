"""The Bloom filter of a pool's whole-file digests (ops/backup/digest_index.py): kept in the state
directory between pulls, extended by each pull's new digests, made again from the
table when its row count no longer matches (another process added digests)."""

from __future__ import annotations

import os

from support.fixtures import Site

from costor.ops.backup.digest_index import StateDigestIndex
from costor.ops.context import Context
from costor.protocol import Bloom, bloom_add, bloom_filter

POOL = "0" * 32


def digests(count: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(count)]


def recorded(ctx: Context, items: list[bytes]) -> StateDigestIndex:
    index = StateDigestIndex(ctx, POOL)
    for digest in items:
        index.record(digest, [digest], 1, None)
    index.save()
    return index


def test_the_kept_filter_follows_the_table(applied: Site) -> None:
    ctx = Context(applied.inventory)
    first = digests(500)
    recorded(ctx, first)
    index = StateDigestIndex(ctx, POOL)
    payload = index.bloom()  # made from the table, and kept
    path = applied.root / ".costor" / "cache" / POOL / "bloom"
    assert path.exists() and payload == bloom_filter(index.digests())
    assert all(Bloom(payload).may_contain(d) for d in first)

    second = digests(300)  # this pull's new digests, added to the kept filter
    for digest in second:
        index.record(digest, [digest], 1, None)
    index.save()
    kept = StateDigestIndex(ctx, POOL).bloom()
    assert all(Bloom(kept).may_contain(d) for d in first + second)
    assert kept != bloom_filter(first + second)  # extended, not made again
    assert kept == bloom_add(payload, second)

    # Another backup (one that never asked for the filter) extends it too.
    other = StateDigestIndex(ctx, POOL)
    third = digests(50)
    for digest in third:
        other.record(digest, [digest], 1, None)
    other.save()
    index = StateDigestIndex(ctx, POOL)
    again = index.bloom()
    assert all(Bloom(again).may_contain(d) for d in first + second + third)
    # A digest the filter rules out is answered without the table; one it may hold, from it.
    absent = next(d for d in digests(100) if not Bloom(again).may_contain(d))
    assert index.lookup(absent) is None
    assert index.lookup(third[0]) == ([third[0]], 1)


def test_a_stale_count_makes_the_filter_again(applied: Site) -> None:
    ctx = Context(applied.inventory)
    recorded(ctx, digests(100))
    StateDigestIndex(ctx, POOL).bloom()
    # Rows added behind the kept filter's back (its file left as it was).
    path = applied.root / ".costor" / "cache" / POOL / "bloom"
    before = path.read_bytes()
    late = digests(10)
    recorded(ctx, late)
    after = StateDigestIndex(ctx, POOL).bloom()
    assert all(Bloom(after).may_contain(d) for d in late)
    path.write_bytes(before)  # a filter for 100 rows, with 110 in the table
    rebuilt = StateDigestIndex(ctx, POOL).bloom()
    assert all(Bloom(rebuilt).may_contain(d) for d in late)
