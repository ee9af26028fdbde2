"""Finding snapshots across the pools.

A client's snapshots are one set, whichever pools hold them: a client moved from pool A
to pool B (and perhaps back) keeps the snapshots it left in A, and they are listed,
resolved (``CLIENT:latest`` is the newest in any pool) and forgotten with the others.
So a client filter searches every pool: the declared ones, and the pools the state's
catalogue records as holding snapshots (``SnapshotRow.pool_uuid`` ↔ ``PoolRow``).

A client need not be declared, nor known to the state at all: on a disaster-recovery
server whose inventory declares only a surviving pool, ``files:latest`` is found by the
client name the snapshot manifests carry.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import TYPE_CHECKING

from costor.config.model import PoolConfig
from costor.db import catalogue
from costor.db.models import PoolRow, ResourceRow
from costor.db.session import session_scope
from costor.errors import (
    AmbiguousSnapshot,
    ObjectDamaged,
    PoolError,
    PoolNotFound,
    SnapshotNotFound,
    SnapshotRolledBack,
    UnknownResource,
)
from costor.ops.context import Context
from costor.store.pool import Pool

if TYPE_CHECKING:
    from costor.store.snapshot import Snapshot


def home_pool(ctx: Context, client: str) -> str | None:
    """The pool a declared (or retired) client backs up into; None for a client neither
    declared nor recorded (its snapshots may still be in any pool)."""
    try:
        return ctx.client_pool(client)
    except UnknownResource:
        return None


def catalogued_pools(ctx: Context, client_names: Collection[str] | None = None) -> list[str]:
    """The pools the state's catalogue records as holding snapshots (of one of
    ``client_names``, when given)."""
    with session_scope(ctx.engine, write=False) as session:
        return catalogue.catalogued_pool_names(session, client_names)


def search_pools(ctx: Context, client_names: Collection[str] | None = None) -> list[str]:
    """Every pool that may hold snapshots (of ``client_names``): the declared pools,
    then those only the catalogue knows."""
    declared = ctx.pool_names()
    return declared + [name for name in catalogued_pools(ctx, client_names) if name not in declared]


def open_named_pool(ctx: Context, name: str, *, load_index: bool = False) -> Pool:
    """A declared pool, or one only the state records (its location and secrets as
    recorded at its last apply)."""
    if name in ctx.inventory.pools:
        return ctx.open_pool(name, load_index=load_index)
    with session_scope(ctx.engine, write=False) as session:
        row = session.get(PoolRow, name)
        resource = session.get(ResourceRow, f"pool.{name}")
        attributes = json.loads(resource.attributes) if resource is not None else None
        uuid, backend_kind, location = (row.uuid, row.backend, row.location) if row else (None,) * 3
    if attributes is None:
        if backend_kind != "local" or location is None:
            raise PoolError(message=f"pool {name}: the state does not record where it is")
        attributes = {"site": "-", "backend": "local", "path": location, "encryption": "none"}
    config = PoolConfig.from_recorded(name, attributes, ctx.inventory.base_dir)
    backend = ctx.backend_for(config)
    opened = Pool.open(backend, ctx.passphrase_for(config), expected_uuid=uuid)
    if load_index:
        ctx.load_index(opened)
    return opened


def list_snapshots(
    ctx: Context, *, client: str | None = None, pool: str | None = None
) -> list[tuple[str, Snapshot]]:
    """(pool name, snapshot), oldest first: every pool's (or ``pool``'s), of every
    client (or of ``client``, under every name it had)."""
    client_names: list[str] | None = None
    home: str | None = None
    if client is not None:
        client_names = ctx.client_names(client)
        home = home_pool(ctx, client)
    names = ctx.pool_names(pool) if pool is not None else search_pools(ctx, client_names)
    renamed = ctx.current_client_names()
    result: list[tuple[str, Snapshot]] = []
    for name in names:
        try:
            opened = open_named_pool(ctx, name)
        except PoolNotFound:
            if pool is not None or name == home:
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
    """``ref`` is a full id, a unique prefix, or ``CLIENT:latest`` (the client's newest
    snapshot in any pool). The same snapshot in several pools (a copied pool) is one
    snapshot: the client's own pool is preferred, else the first declared."""
    client_names = None
    home = None
    if ref.endswith(":latest"):
        client = ref[: -len(":latest")]
        client_names = ctx.client_names(client)
        home = home_pool(ctx, client)
    names = ctx.pool_names(pool) if pool is not None else search_pools(ctx, client_names)
    found: list[tuple[str, Pool, Snapshot]] = []
    searched: list[Pool] = []
    for name in names:
        try:
            opened = open_named_pool(ctx, name)
            searched.append(opened)
            snapshot = opened.find_snapshot(ref, client_names=client_names)
        except (SnapshotNotFound, PoolNotFound):
            continue
        found.append((name, opened, snapshot))
    if not found:
        raise SnapshotNotFound(ref=ref)
    if client_names is None:
        distinct = {snapshot.id for _n, _p, snapshot in found}
        if len(distinct) > 1:
            raise AmbiguousSnapshot(ref=ref, count=len(distinct))
        home = home_pool(ctx, found[0][2].client)
    # The newest; among copies of one snapshot, the one in the client's own pool, then
    # the first searched (max keeps the first of equals).
    name, opened, snapshot = max(
        found, key=lambda item: (item[2].time, item[2].id, item[0] == home)
    )
    if client_names is not None:
        _refuse_rolled_back(ctx, ref, client_names, searched, snapshot)
    if load_index:
        ctx.load_index(opened)
    return name, opened, snapshot


def _refuse_rolled_back(
    ctx: Context, ref: str, client_names: Collection[str], pools: list[Pool], newest: Snapshot
) -> None:
    """Rollback evidence (issue 19, item 8): ``CLIENT:latest`` must not quietly resolve
    to an older snapshot when the catalogue records a newer one of the client in a pool
    that no longer holds it (its manifest deleted, or the storage rolled back). The
    older snapshot stays restorable by its id; `costor check` reports the missing one."""
    # The catalogue first, then the pools: a backup that ends meanwhile writes its
    # manifest before its catalogue row, so a row read here has its manifest listed below.
    with session_scope(ctx.engine, write=False) as session:
        rows = [
            (snapshot_id, row)
            for pool in pools
            for snapshot_id, row in catalogue.catalogued_snapshots(session, pool.uuid).items()
            if row.client in client_names and row.time > newest.time
        ]
    if not rows:
        return
    held = {snapshot_id for pool in pools for snapshot_id in pool.snapshot_ids()}
    unreadable = {sid: why for pool in pools for sid, why in pool.unreadable_snapshots.items()}
    for snapshot_id, row in rows:
        if snapshot_id not in held:
            raise SnapshotRolledBack(
                ref=ref,
                missing=snapshot_id[:12],
                time=row.time[:19].replace("T", " "),
                found=newest.id[:12],
            )
        if snapshot_id in unreadable:
            raise ObjectDamaged(
                name=f"snapshots/{snapshot_id}",
                reason=f"{ref} would be snapshot {newest.id[:12]}, but the newer snapshot "
                f"{snapshot_id[:12]} ({row.time[:19].replace('T', ' ')}) cannot be read "
                f"({unreadable[snapshot_id]}); restore {newest.id[:12]} by its id if that "
                "is what you want, or put the newer one back with `costor pool repair "
                "--from` a copy of the pool",
            )
