"""Finding snapshots across the declared pools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from costor.errors import AmbiguousSnapshot, PoolNotFound, SnapshotNotFound
from costor.ops.context import Context

if TYPE_CHECKING:
    from costor.store.pool import Pool
    from costor.store.snapshot import Snapshot


def list_snapshots(
    ctx: Context, *, client: str | None = None, pool: str | None = None
) -> list[tuple[str, Snapshot]]:
    names = ctx.pool_names(pool)
    client_names: list[str] | None = None
    if client is not None:
        names = [ctx.client_pool(client)] if pool is None else names
        client_names = ctx.client_names(client)
    renamed = ctx.current_client_names()
    result: list[tuple[str, Snapshot]] = []
    for name in names:
        try:
            opened = ctx.open_pool(name, load_index=False)
        except PoolNotFound:
            if pool is not None or client is not None:
                raise
            continue  # a declared pool not yet applied holds no snapshots
        for snapshot in opened.list_snapshots(client_names):
            if snapshot.client in renamed:
                # Shown under the client's name now; the manifest keeps the old one.
                snapshot.taken_as = snapshot.client
                snapshot.client = renamed[snapshot.client]
            result.append((name, snapshot))
    return sorted(result, key=lambda item: (item[1].time, item[1].id))


def resolve(
    ctx: Context, ref: str, *, pool: str | None = None, load_index: bool = True
) -> tuple[str, Pool, Snapshot]:
    """``ref`` is a full id, a unique prefix, or ``CLIENT:latest``."""
    client_names = None
    if ref.endswith(":latest"):
        client = ref[: -len(":latest")]
        pool = pool or ctx.client_pool(client)
        client_names = ctx.client_names(client)
    found: list[tuple[str, Pool, Snapshot]] = []
    for name in ctx.pool_names(pool):
        try:
            opened = ctx.open_pool(name, load_index=False)
            snapshot = opened.find_snapshot(ref, client_names=client_names)
        except (SnapshotNotFound, PoolNotFound):
            continue
        found.append((name, opened, snapshot))
    if not found:
        raise SnapshotNotFound(ref=ref)
    if len(found) > 1:
        raise AmbiguousSnapshot(ref=ref, count=len(found))
    name, opened, snapshot = found[0]
    if load_index:
        opened.load_index()
    return name, opened, snapshot
