"""Making a plan: gather the actual state (database rows and facts observed at plan
time), bind it to what it was made from, and let :mod:`costor.plan` decide.

Observing is "prepare" in pyinfra's sense and changes nothing, with one exception: a
state database that no apply has touched yet gets its schema and its identity (lineage,
serial 0, the plan-signing key) so that even the first plan can be saved and checked.

Facts per resource (what the reconciler may base a decision on):

- pool: ``location``; ``status`` of the identity file there — ``pool`` (with its
  ``uuid``), ``absent`` (nothing, or only the key slots of an interrupted init),
  ``foreign`` (other data, ``found`` names one object); ``state_uuid`` recorded at the
  last apply; ``snapshots`` in the catalogue. An unreachable location is an error;
- client: ``snapshots`` in the catalogue under its name and its earlier names;
- user: ``password`` — ``matches`` / ``differs`` the recorded hash, or ``missing``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costor.errors import PoolNotFound, UsageError
from costor.ops.context import Context

if TYPE_CHECKING:
    from sqlmodel import Session

    from costor.plan.model import Plan
    from costor.plan.reconcile import Recorded
    from costor.plan.resources import Resource


def make_plan(ctx: Context, *, targets: tuple[str, ...] = (), refresh_only: bool = False) -> Plan:
    from costor import __version__
    from costor.db.state import ensure_meta
    from costor.plan.model import Binding
    from costor.plan.reconcile import Options, reconcile, resolve_moves
    from costor.plan.resources import desired_resources

    desired = desired_resources(ctx.inventory)
    meta = ensure_meta(ctx.engine)
    recorded, client_names = load_recorded(ctx)
    _check_targets(targets, desired, recorded)
    moved = [(block.from_, block.to) for block in ctx.inventory.moved]
    moves, _errors = resolve_moves(recorded, moved)
    facts = gather_facts(ctx, desired, recorded, moves, client_names)
    binding = Binding(
        lineage=meta.lineage,
        serial=meta.serial,
        sources=source_digests(ctx),
        inventory_digest=ctx.inventory.digest(),
        secrets_digest=secrets_digest(ctx, meta.plan_key),
    )
    return reconcile(
        desired,
        recorded,
        facts,
        binding=binding,
        timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        moved=moved,
        removed={block.from_: block.destroy for block in ctx.inventory.removed},
        options=Options(targets=targets, refresh_only=refresh_only),
        costor_version=__version__,
    )


def _check_targets(
    targets: tuple[str, ...], desired: list[Resource], recorded: dict[str, Recorded]
) -> None:
    known = {r.address for r in desired} | set(recorded)
    for target in targets:
        if target not in known:
            raise UsageError(
                message=f"--target {target}: no such resource in the inventory or the state "
                "(an address is TYPE.NAME, e.g. client.web1)"
            )


# --- the recorded state --------------------------------------------------------------------


def load_recorded(ctx: Context) -> tuple[dict[str, Recorded], dict[str, list[str]]]:
    """Recorded resources by address, and every client's names (current first)."""
    from sqlmodel import select

    from costor.db.models import ClientRow, PoolRow
    from costor.db.session import session_scope
    from costor.db.state import resource_rows
    from costor.plan.reconcile import Recorded

    recorded: dict[str, Recorded] = {}
    client_names: dict[str, list[str]] = {}
    with session_scope(ctx.engine, write=False) as session:
        for row in resource_rows(session):
            recorded[row.address] = Recorded(
                row.type, row.name, json.loads(row.attributes), json.loads(row.applied)
            )
        # Rows written by the first apply slice (before resources were recorded).
        for pool in session.exec(select(PoolRow)):
            recorded.setdefault(f"pool.{pool.name}", Recorded("pool", pool.name, None))
        for client in session.exec(select(ClientRow)):
            client_names[client.name] = [client.name, *json.loads(client.former_names)]
            if client.retired_at is None:
                recorded.setdefault(f"client.{client.name}", Recorded("client", client.name, None))
    return recorded, client_names


# --- facts -----------------------------------------------------------------------------------


def gather_facts(
    ctx: Context,
    desired: list[Resource],
    recorded: dict[str, Recorded],
    moves: dict[str, str],
    client_names: dict[str, list[str]],
) -> dict[str, dict[str, Any]]:
    from costor.db.session import session_scope

    facts: dict[str, dict[str, Any]] = {}
    with session_scope(ctx.engine, write=False) as session:
        for resource in desired:
            was = moves.get(resource.address, resource.address)
            was_name = was.split(".", 1)[1]
            if resource.type == "pool":
                facts[resource.address] = pool_facts(ctx, session, resource.name, was_name)
            elif resource.type == "client":
                names = client_names.get(was_name, [was_name])
                facts[resource.address] = {"snapshots": _snapshot_count(session, client=names)}
            elif resource.type == "user" and was in recorded:
                facts[resource.address] = {
                    "password": _password_fact(ctx, session, resource, was_name)
                }
        declared = {r.address for r in desired} | set(moves.values())
        for address, record in recorded.items():
            if address in declared:
                continue
            if record.type == "pool":
                facts[address] = recorded_pool_facts(session, record.name, record.attributes)
            elif record.type == "client":
                names = client_names.get(record.name, [record.name])
                facts[address] = {"snapshots": _snapshot_count(session, client=names)}
    return facts


def pool_facts(ctx: Context, session: Session, name: str, state_name: str) -> dict[str, Any]:
    from costor.db.models import PoolRow
    from costor.store.pool import IDENTITY_NAME, read_identity

    backend = ctx.backend(name)
    row = session.get(PoolRow, state_name)
    facts: dict[str, Any] = {"location": backend.location, "state_uuid": row.uuid if row else None}
    try:
        identity = read_identity(backend)
        facts.update(status="pool", uuid=identity.uuid)
    except PoolNotFound:
        # An init killed half-way leaves only keys/ (the identity file is written last).
        found = next(
            (
                i.name
                for i in backend.list("")
                if not i.name.startswith("keys/") and i.name != IDENTITY_NAME
            ),
            None,
        )
        facts.update(status="foreign" if found else "absent", uuid=None)
        if found:
            facts["found"] = found
    facts["snapshots"] = _snapshot_count(session, pool_uuid=row.uuid) if row else 0
    return facts


def recorded_pool_facts(
    session: Session, name: str, attributes: dict[str, Any] | None
) -> dict[str, Any]:
    """A pool no longer declared: what the state knows (its storage is not visited; the
    inventory no longer says how to reach it, only the recorded attributes do)."""
    from costor.db.models import PoolRow

    row = session.get(PoolRow, name)
    return {
        "location": row.location if row else (attributes or {}).get("path"),
        "state_uuid": row.uuid if row else None,
        "snapshots": _snapshot_count(session, pool_uuid=row.uuid) if row else 0,
    }


def _snapshot_count(
    session: Session, *, pool_uuid: str | None = None, client: list[str] | None = None
) -> int:
    from sqlalchemy import func
    from sqlmodel import select

    from costor.db.models import SnapshotRow

    query = select(func.count()).select_from(SnapshotRow)
    if pool_uuid is not None:
        query = query.where(SnapshotRow.pool_uuid == pool_uuid)
    if client is not None:
        query = query.where(SnapshotRow.client.in_(client))  # type: ignore[attr-defined]
    return int(session.exec(query).one())


def _password_fact(ctx: Context, session: Session, resource: Resource, state_name: str) -> str:
    from costor.config import resolve_secret
    from costor.db.models import UserRow
    from costor.util.passwords import verify_password

    row = session.get(UserRow, state_name)
    if row is None:
        return "missing"
    user = ctx.inventory.users[resource.name]
    password = resolve_secret(user.password, f"users.{resource.name}.password")
    return "matches" if verify_password(password, row.password_hash) else "differs"


# --- binding ---------------------------------------------------------------------------------


def source_files(ctx: Context) -> list[Path]:
    """The inventory and every profile file it could use, in a stable order."""
    from costor.config.profiles import find_profile_files

    files = [ctx.inventory.path]
    files += [file for _name, file in find_profile_files(list(ctx.inventory.costor.profile_paths))]
    return files


def source_digests(ctx: Context) -> dict[str, str]:
    base = ctx.inventory.base_dir
    digests = {}
    for file in source_files(ctx):
        try:
            shown = os.path.relpath(file, base)
        except ValueError:
            shown = str(file)
        digests[shown] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def secrets_digest(ctx: Context, key: bytes) -> str:
    """HMAC-SHA256, keyed by the state's plan key, over every secret value the
    inventory names: a saved plan notices a changed secret without holding it."""
    from costor.config import resolve_secret
    from costor.config.diagnostics import format_key

    mac = hmac.new(key, digestmod=hashlib.sha256)
    for path, ref in sorted(ctx.inventory.secret_refs(), key=lambda item: format_key(item[0])):
        name = format_key(path)
        mac.update(name.encode() + b"\0" + resolve_secret(ref, name).encode() + b"\0")
    return mac.hexdigest()
