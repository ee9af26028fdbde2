"""Make the declared pools and clients real (first slice of plan/apply).

``changes`` compares the inventory with the state and the pools it observes, and returns
what would change, each with a reason; ``apply`` carries those changes out. Running
``apply`` twice changes nothing the second time. The later plan/apply issue turns the
change list into a saved, serialisable plan; this module is where it plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from costor.errors import PoolError, PoolMismatch, PoolNotFound
from costor.ops.context import Context, utcnow


@dataclass(frozen=True)
class Change:
    address: str  # "pool.main", "client.web1"
    action: str  # create | update | adopt | no-op
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "action": self.action,
            "reason": self.reason,
            **self.details,
        }


def changes(ctx: Context) -> list[Change]:
    from costor.db.models import ClientRow, PoolRow
    from costor.db.session import session_scope
    from costor.store.pool import read_identity

    result: list[Change] = []
    with session_scope(ctx.engine, write=False) as session:
        for name in ctx.pool_names():
            address = f"pool.{name}"
            row = session.get(PoolRow, name)
            try:
                identity = read_identity(ctx.backend(name))
            except PoolNotFound:
                identity = None
            if identity is None:
                result.append(Change(address, "create", "no pool at the declared location"))
            elif row is None:
                result.append(
                    Change(
                        address,
                        "adopt",
                        "a pool exists at the location but is not in the state",
                        {"uuid": identity.uuid},
                    )
                )
            elif row.uuid != identity.uuid:
                raise PoolMismatch(
                    location=ctx.backend(name).location, found=identity.uuid, expected=row.uuid
                )
            else:
                result.append(Change(address, "no-op", "pool present with the recorded UUID"))
        for name, client in sorted(ctx.inventory.clients.items()):
            address = f"client.{name}"
            digest = _client_digest(client)
            crow = session.get(ClientRow, name)
            if crow is None:
                result.append(Change(address, "create", "client is not registered"))
            elif crow.config_digest != digest:
                result.append(Change(address, "update", "client configuration changed"))
            else:
                result.append(Change(address, "no-op", "client registered and unchanged"))
    return result


def apply(ctx: Context, planned: list[Change]) -> list[Change]:
    """Carry out ``planned`` (from :func:`changes`); returns the changes made."""
    done: list[Change] = []
    for change in planned:
        if change.action == "no-op":
            continue
        kind, name = change.address.split(".", 1)
        if kind == "pool":
            _apply_pool(ctx, name, change)
        else:
            _apply_client(ctx, name)
        done.append(change)
    return done


def _apply_pool(ctx: Context, name: str, change: Change) -> None:
    from costor.db.models import PoolRow
    from costor.db.session import session_scope
    from costor.store.pool import Pool

    config = ctx.pool_config(name)
    backend = ctx.backend(name)
    passphrase = ctx.passphrase(name)
    if change.action == "create":
        # An init killed half-way leaves only keys/ (the identity file is written
        # last); anything else means someone else's data.
        foreign = next((i.name for i in backend.list("") if not i.name.startswith("keys/")), None)
        if foreign is not None:
            raise PoolError(
                message=f"pool {name}: {backend.location} is not empty (found {foreign}) and "
                "holds no CoStor pool; refusing to initialise over other data"
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
    else:  # adopt: prove the passphrase opens it before recording it
        pool = Pool.open(backend, passphrase)
    now = utcnow()
    with session_scope(ctx.engine) as session:
        session.merge(
            PoolRow(
                name=name,
                uuid=pool.uuid,
                backend=config.backend,
                location=backend.location,
                encryption=pool.identity.encryption,
                created_at=now,
                updated_at=now,
            )
        )


def _apply_client(ctx: Context, name: str) -> None:
    from costor.db.models import ClientRow
    from costor.db.session import session_scope

    client = ctx.client_config(name)
    now = utcnow()
    with session_scope(ctx.engine) as session:
        row = session.get(ClientRow, name)
        if row is None:
            row = ClientRow(
                name=name,
                pool=client.pool,
                site=client.site,
                transport=client.transport,
                config_digest=_client_digest(client),
                created_at=now,
                updated_at=now,
            )
        else:
            row.pool, row.site, row.transport = client.pool, client.site, client.transport
            row.config_digest, row.updated_at = _client_digest(client), now
        session.add(row)


def _client_digest(client: Any) -> str:
    import hashlib

    return hashlib.sha256(client.model_dump_json().encode()).hexdigest()
