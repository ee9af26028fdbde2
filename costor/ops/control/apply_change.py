"""Carrying out one planned change: the resource type's own work (a pool initialised or
adopted, a client registered with its host key, a user's password hash), then one
transaction that records it in the state and bumps the serial. Called by
:func:`costor.ops.control.apply.apply_plan`, in the plan's order; never re-decides.

Storage is always touched before the state records it: a killed apply leaves at most an
initialised pool the next plan adopts.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from costor.config import resolve_secret
from costor.config.model import PoolConfig
from costor.db.catalogue import delete_pool_catalogue, delete_snapshot_rows, snapshots_of_clients
from costor.db.clients import move_clients_to_pool
from costor.db.hostkeys import move_host_key
from costor.db.models import ClientRow, PoolRow, ResourceRow, UserRow
from costor.db.pools import pool_by_uuid
from costor.db.session import Session, session_scope
from costor.db.state import bump_serial
from costor.errors import PlanStale, PoolError, PoolMismatch, PoolNotFound
from costor.ops.context import Context, snapshot_row
from costor.ops.control.hosts import forget_host_key, record_host_key
from costor.ops.control.plan import s3_backend_of
from costor.plan.resources import canonical, digest
from costor.store.pool import (
    IDENTITY_NAME,
    Pool,
    count_snapshots,
    foreign_object,
    read_identity,
)
from costor.util.clock import utcnow
from costor.util.passwords import hash_password

if TYPE_CHECKING:
    from costor.plan.model import ResourceChange


class ChangeExecutor:
    def __init__(
        self, ctx: Context, change: ResourceChange, desired: dict[str, dict[str, Any]]
    ) -> None:
        self.ctx = ctx
        self.change = change
        self.declared = desired  # address -> desired attributes, from the inventory
        self.now = utcnow()

    def run(self) -> int:
        handler = getattr(self, f"_{self.change.type}", None) or self._generic
        return int(handler())

    # --- shared pieces ---------------------------------------------------------------------

    def desired(self) -> dict[str, Any]:
        """The desired attributes from the inventory, proven to be what was planned."""
        address = self.change.address
        attributes = self.declared.get(address)
        if attributes is None:
            raise PlanStale(path="the plan", reason=f"{address} is no longer declared")
        if digest(attributes) != self.change.after_digest:
            raise PlanStale(path="the plan", reason=f"{address} changed")
        return attributes

    def commit(self, work: Callable[[Session], None] | None = None, *, record: bool = True) -> int:
        """One transaction: rename (a move), the type's own rows, the resource row, serial."""
        change = self.change
        with session_scope(self.ctx.engine) as session:
            created = self.now
            if change.previous_address:
                old = session.get(ResourceRow, change.previous_address)
                if old is not None:
                    created = old.created_at
                    session.delete(old)
                    session.flush()
            if work is not None:
                work(session)
            row = session.get(ResourceRow, change.address)
            if record and change.operation != "refresh":
                attributes = canonical(self.desired())
                if row is None:
                    row = ResourceRow(
                        address=change.address,
                        type=change.type,
                        name=change.name,
                        attributes=attributes,
                        applied=attributes,
                        created_at=created,
                        updated_at=self.now,
                    )
                else:
                    row.attributes = row.applied = attributes
                    row.updated_at = self.now
                session.add(row)
            elif record and row is not None:  # refresh: what is there becomes what was applied
                row.applied = row.attributes
                row.updated_at = self.now
                session.add(row)
            elif not record and row is not None:
                session.delete(row)
            return bump_serial(session)

    # --- generic resources (site, role, group, policy) ---------------------------------------

    def _generic(self) -> int:
        if self.change.operation in ("delete", "forget"):
            return self.commit(record=False)
        return self.commit()

    # --- users ---------------------------------------------------------------------------------

    def _user(self) -> int:
        change = self.change
        if change.operation in ("delete", "forget"):

            def drop(session: Session) -> None:
                row = session.get(UserRow, change.name)
                if row is not None:
                    session.delete(row)

            return self.commit(drop, record=False)
        if change.operation == "refresh":
            return self.commit()
        user = self.ctx.inventory.users[change.name]
        password_hash = hash_password(
            resolve_secret(user.password, f"users.{change.name}.password")
        )

        def store(session: Session) -> None:
            if change.previous_address:
                old = session.get(UserRow, change.previous_address.split(".", 1)[1])
                if old is not None:
                    session.delete(old)
                    session.flush()
            row = session.get(UserRow, change.name) or UserRow(
                name=change.name, password_hash=password_hash, updated_at=self.now
            )
            row.password_hash, row.updated_at = password_hash, self.now
            session.add(row)

        return self.commit(store)

    # --- clients -------------------------------------------------------------------------------

    def _client(self) -> int:
        change = self.change
        if change.operation in ("retire", "destroy", "forget", "delete"):
            if change.operation == "destroy":
                self._delete_client_snapshots()

            def retire(session: Session) -> None:
                row = session.get(ClientRow, change.name)
                if row is not None:
                    row.retired_at = self.now
                    session.add(row)
                forget_host_key(session, change.name)

            return self.commit(retire, record=False)
        if change.operation == "refresh":
            return self.commit()
        client = self.ctx.client_config(change.name)
        config_digest = _client_digest(client)

        def register(session: Session) -> None:
            former: list[str] = []
            created = self.now
            if change.previous_address:
                old_name = change.previous_address.split(".", 1)[1]
                old = session.get(ClientRow, old_name)
                if old is not None:
                    former = [*json.loads(old.former_names), old_name]
                    created = old.created_at
                    session.delete(old)
                    session.flush()
            row = session.get(ClientRow, change.name)
            if row is None:
                row = ClientRow(
                    name=change.name,
                    pool=client.pool,
                    transport=client.transport,
                    config_digest=config_digest,
                    created_at=created,
                    updated_at=self.now,
                )
            else:
                former = former or json.loads(row.former_names)
            row.pool, row.site, row.transport = client.pool, client.site, client.transport
            row.policy, row.config_digest = client.policy, config_digest
            row.former_names, row.retired_at, row.updated_at = json.dumps(former), None, self.now
            session.add(row)
            self._host_key(session, client)

        return self.commit(register)

    def _host_key(self, session: Session, client: Any) -> None:
        """Move a renamed client's host key; record the key the plan showed (first
        contact) — exactly that one: a different key now made the plan stale."""
        if self.change.previous_address:
            move_host_key(session, self.change.previous_address.split(".", 1)[1], client.name)
        planned = self.change.details.get("host_key")
        if planned and client.transport == "ssh":
            # Here, not at the top: it imports asyncssh, which only an SSH client needs (a
            # local-only apply never imports it: tests/cli/test_quiet_local.py).
            from costor.transport.ssh import HostKey

            record_host_key(session, client, HostKey.parse(planned))

    def _delete_client_snapshots(self) -> None:
        """``[[removed]] destroy = true`` on a client: delete its snapshot manifests in
        every pool that has some (the packs they alone used become unreferenced; prune
        reclaims them)."""
        name = self.change.name
        by_pool: dict[str, list[str]] = defaultdict(list)
        pools: dict[str, tuple[str, str | None]] = {}
        with session_scope(self.ctx.engine, write=False) as session:
            row = session.get(ClientRow, name)
            names = [name, *json.loads(row.former_names)] if row else [name]
            for snapshot in snapshots_of_clients(session, names):
                by_pool[snapshot.pool_uuid].append(snapshot.id)
            for pool_uuid, ids in by_pool.items():
                pool_row = pool_by_uuid(session, pool_uuid)
                if pool_row is None:
                    raise PoolError(
                        message=f"{len(ids)} of {name}'s snapshots are in pool {pool_uuid}, "
                        "which the state no longer knows; nothing was deleted"
                    )
                resource = session.get(ResourceRow, f"pool.{pool_row.name}")
                pools[pool_uuid] = (pool_row.name, resource.attributes if resource else None)
        for pool_uuid, snapshot_ids in by_pool.items():
            backend = self._pool_backend(*pools[pool_uuid])
            for snapshot_id in snapshot_ids:
                backend.delete(f"snapshots/{snapshot_id}")
            with session_scope(self.ctx.engine) as session:
                delete_snapshot_rows(session, snapshot_ids)

    # --- pools ---------------------------------------------------------------------------------

    def _pool(self) -> int:
        operation = self.change.operation
        if operation in ("create", "adopt"):
            return self._pool_create()
        if operation in ("update", "relocate", "none"):
            return self._pool_update()
        if operation == "replace":
            self._destroy_storage(self._recorded_backend())
            return self._pool_create(drop_catalogue=True)
        if operation in ("delete", "destroy"):
            self._destroy_storage(self._recorded_backend())
            return self.commit(self._drop_pool_rows, record=False)
        if operation == "forget":  # state only: the storage is not touched
            return self.commit(self._drop_pool_rows, record=False)
        if operation == "refresh":
            return self._pool_refresh()
        raise PoolError(message=f"unknown pool operation {operation!r}")

    def _pool_create(self, *, drop_catalogue: bool = False) -> int:
        name = self.change.name
        config = self.ctx.pool_config(name)
        self.desired()  # proves the inventory entry is the planned one before touching storage
        backend = self.ctx.backend(name)
        passphrase = self.ctx.passphrase(name)
        if self.change.operation == "adopt":
            pool = Pool.open(backend, passphrase)  # proves the passphrase opens it
            expected = (self.change.importing or {}).get("uuid")
            if pool.uuid != expected:
                raise PoolMismatch(location=backend.location, found=pool.uuid, expected=expected)
        else:
            if self.change.details.get("create_bucket"):
                s3 = s3_backend_of(backend)
                if s3 is not None:
                    s3.create_bucket()  # the plan said so: create_bucket = true
            foreign = next(
                (i.name for i in backend.list("") if not i.name.startswith("keys/")), None
            )
            if foreign is not None:
                raise PoolError(
                    message=f"pool {name}: {backend.location} is not empty (found {foreign}) "
                    "and holds no CoStor pool; refusing to initialise over other data"
                )
            pool = Pool.init(
                backend,
                passphrase=passphrase,
                encryption=config.encryption,
                kdf=config.kdf,
                compression_level=config.compression.level
                if config.compression.algorithm == "zstd"
                else None,
                pack_size=config.pack_size_mib * 1024 * 1024,
                chunk_avg=config.chunk_avg_kib * 1024 if config.chunk_avg_kib else None,
            )

        snapshots = pool.list_snapshots() if self.change.operation == "adopt" else []

        def record(session: Session) -> None:
            if drop_catalogue:
                self._drop_pool_rows(session)
            self._write_pool_row(
                session, config, pool.uuid, backend.location, pool.identity.encryption
            )
            _catalogue(session, pool.uuid, snapshots)

        return self.commit(record)

    def _pool_update(self) -> int:
        config = self.ctx.pool_config(self.change.name)
        location = self.ctx.backend(self.change.name).location

        def record(session: Session) -> None:
            old_name = (self.change.previous_address or self.change.address).split(".", 1)[1]
            row = session.get(PoolRow, old_name)
            if row is None:  # recorded by the first apply slice under this name
                row = session.get(PoolRow, self.change.name)
            if row is None:
                raise PoolError(message=f"pool {self.change.name} has no row in the state")
            uuid, encryption, created = row.uuid, row.encryption, row.created_at
            raw, stored = row.bytes_raw, row.bytes_stored
            if old_name != self.change.name:
                session.delete(row)
                session.flush()
                # Retired clients too: their snapshots are found through this name.
                move_clients_to_pool(session, old_name, self.change.name)
            self._write_pool_row(session, config, uuid, location, encryption, created, raw, stored)

        return self.commit(record)

    def _pool_refresh(self) -> int:
        """Accept the pool found at the location (drift): prove the passphrase opens it,
        then record its UUID."""
        name = self.change.name
        backend = self.ctx.backend(name)
        pool = Pool.open(backend, self.ctx.passphrase(name))
        snapshots = pool.list_snapshots()

        def record(session: Session) -> None:
            row = session.get(PoolRow, name)
            if row is not None:
                # The catalogue of the pool that was there goes; the one found is listed.
                created = row.created_at
                self._drop_pool_rows(session)
                self._write_pool_row(
                    session,
                    self.ctx.pool_config(name),
                    pool.uuid,
                    backend.location,
                    pool.identity.encryption,
                    created,
                )
            _catalogue(session, pool.uuid, snapshots)

        return self.commit(record)

    def _write_pool_row(
        self,
        session: Session,
        config: PoolConfig,
        uuid: str,
        location: str,
        encryption: str,
        created: Any = None,
        raw: int = 0,
        stored: int = 0,
    ) -> None:
        row = session.get(PoolRow, config.name)
        if row is None:
            row = PoolRow(
                name=config.name,
                uuid=uuid,
                backend=config.backend,
                location=location,
                encryption=encryption,
                created_at=created or self.now,
                updated_at=self.now,
                bytes_raw=raw,
                bytes_stored=stored,
            )
        row.uuid, row.backend, row.location = uuid, config.backend, location
        row.encryption, row.updated_at = encryption, self.now
        session.add(row)

    def _drop_pool_rows(self, session: Session) -> None:
        row = session.get(PoolRow, self.change.name)
        if row is None:
            return
        delete_pool_catalogue(session, row.uuid)
        session.delete(row)
        session.flush()

    def _recorded_backend(self) -> Any:
        with session_scope(self.ctx.engine, write=False) as session:
            row = session.get(ResourceRow, self.change.previous_address or self.change.address)
            attributes = row.attributes if row else None
        return self._pool_backend(self.change.name, attributes)

    def _pool_backend(self, name: str, attributes: str | None) -> Any:
        """The storage of a pool as recorded at its last apply (the inventory may no
        longer declare it, or declare it somewhere else)."""
        if attributes is None:
            if name in self.ctx.inventory.pools:
                return self.ctx.backend(name)
            raise PoolError(message=f"pool {name}: the state does not record where it is")
        config = PoolConfig.from_recorded(name, json.loads(attributes), self.ctx.inventory.base_dir)
        return self.ctx.backend_for(config)

    def _destroy_storage(self, backend: Any) -> None:
        """Delete every object of the pool: the identity file first (from then on the
        location holds no pool, so nothing uses a half-deleted one), key slots last.

        Checked again just before, because nothing holds a backup off between plan and
        here: the location must still hold the recorded pool (same UUID) with exactly the
        snapshots the plan counted; anything else stops the apply with nothing deleted.
        """
        with session_scope(self.ctx.engine, write=False) as session:
            old_name = (self.change.previous_address or self.change.address).split(".", 1)[1]
            row = session.get(PoolRow, old_name)
            recorded_uuid = row.uuid if row else None
        planned = int(self.change.details.get("snapshots", 0))
        try:
            identity = read_identity(backend)
        except PoolNotFound:
            leftover = foreign_object(backend)
            if leftover is not None:
                raise PoolError(
                    message=f"{backend.location} holds {leftover} and no pool identity; "
                    "refusing to delete anything there"
                ) from None
            identity = None
        if identity is not None:
            if identity.uuid != recorded_uuid:
                raise PoolMismatch(
                    location=backend.location, found=identity.uuid, expected=recorded_uuid
                )
            found = count_snapshots(backend)
            if found != planned:
                raise PlanStale(
                    path="the plan",
                    reason=f"{backend.location} now holds {found} snapshot(s), the plan "
                    f"counted {planned}; nothing was deleted",
                )
        backend.delete(IDENTITY_NAME)
        names = [info.name for info in backend.list("")]
        for name in sorted(names, key=lambda n: n.startswith("keys/")):
            backend.delete(name)


def _catalogue(session: Session, pool_uuid: str, snapshots: list[Any]) -> None:
    """Record a pool's snapshots in the catalogue (an adopted pool's, say), so that its
    counts and listings include them."""
    for snapshot in snapshots:
        session.merge(snapshot_row(pool_uuid, snapshot))


def _client_digest(client: Any) -> str:
    return hashlib.sha256(client.model_dump_json().encode()).hexdigest()
