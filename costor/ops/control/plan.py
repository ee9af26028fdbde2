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

from costor import __version__
from costor.config import resolve_secret
from costor.config.diagnostics import format_key
from costor.config.model import PoolConfig
from costor.config.profiles import SHIPPED_PROFILES, find_profile_files
from costor.db.catalogue import snapshot_count, snapshot_counts_by_pool
from costor.db.clients import client_rows
from costor.db.models import PoolRow, UserRow
from costor.db.pools import pool_rows
from costor.db.session import Session, session_scope
from costor.db.state import ensure_meta, resource_rows
from costor.errors import (
    BackendError,
    CostorError,
    KeySlotUnsafe,
    PlanFileInvalid,
    PlanForeign,
    PoolNotFound,
    PoolParametersTampered,
    UsageError,
    WrongPassphrase,
)
from costor.ops.context import Context
from costor.ops.control.hosts import probe_host_keys
from costor.plan import planfile
from costor.plan.model import Binding, Plan
from costor.plan.reconcile import Options, Recorded, reconcile, resolve_moves
from costor.plan.resources import Resource, desired_resources
from costor.store.pool import (
    DEFAULT_CHUNK_AVG_KIB,
    Pool,
    chunk_avg_kib,
    count_snapshots,
    foreign_object,
    read_identity,
)
from costor.util.passwords import verify_password

if TYPE_CHECKING:
    from costor.store.backends.base import Backend
    from costor.store.backends.s3 import S3Backend


def make_plan(ctx: Context, *, targets: tuple[str, ...] = (), refresh_only: bool = False) -> Plan:
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
    recorded: dict[str, Recorded] = {}
    client_names: dict[str, list[str]] = {}
    with session_scope(ctx.engine, write=False) as session:
        for row in resource_rows(session):
            recorded[row.address] = Recorded(
                row.type, row.name, json.loads(row.attributes), json.loads(row.applied)
            )
        # Rows written by the first apply slice (before resources were recorded).
        for pool in pool_rows(session):
            recorded.setdefault(f"pool.{pool.name}", Recorded("pool", pool.name, None))
        for client in client_rows(session):
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
    facts: dict[str, dict[str, Any]] = {}
    declared_clients = [ctx.inventory.clients[r.name] for r in desired if r.type == "client"]
    # A renamed client's host key is still recorded under its name in the state.
    renamed = {
        now.split(".", 1)[1]: was.split(".", 1)[1]
        for now, was in moves.items()
        if now.startswith("client.")
    }
    host_keys = probe_host_keys(ctx, declared_clients, recorded_as=renamed)
    with session_scope(ctx.engine, write=False) as session:
        pool_names = _pool_names_by_uuid(session)
        former = {old: current for current, names in client_names.items() for old in names[1:]}
        for resource in desired:
            was = moves.get(resource.address, resource.address)
            was_name = was.split(".", 1)[1]
            if resource.type == "pool":
                facts[resource.address] = pool_facts(
                    ctx, session, ctx.pool_config(resource.name), was_name, pool_names
                )
            elif resource.type == "client":
                names = client_names.get(was_name, [was_name])
                facts[resource.address] = _client_facts(session, names)
                if resource.name in host_keys:
                    facts[resource.address]["ssh"] = host_keys[resource.name]
                if resource.name in former and former[resource.name] != was_name:
                    facts[resource.address]["former_name_of"] = former[resource.name]
            elif resource.type == "user" and was in recorded:
                facts[resource.address] = {
                    "password": _password_fact(ctx, session, resource, was_name)
                }
        declared = {r.address for r in desired} | set(moves.values())
        for address, record in recorded.items():
            if address in declared:
                continue
            if record.type == "pool":
                facts[address] = recorded_pool_facts(
                    ctx, session, record.name, record.attributes, pool_names
                )
            elif record.type == "client":
                names = client_names.get(record.name, [record.name])
                facts[address] = _client_facts(session, names)
    # A pool to delete whose storage a declared pool now claims (same place or same
    # UUID: a rename without [[moved]]) must not be destroyed.
    for address, found in facts.items():
        if not address.startswith("pool.") or address in {r.address for r in desired}:
            continue
        for resource in desired:
            other = facts.get(resource.address, {})
            if resource.type == "pool" and (
                other.get("location") == found.get("location")
                or (found.get("state_uuid") and other.get("uuid") == found.get("state_uuid"))
            ):
                found["claimed_by"] = resource.address
    return facts


def pool_facts(
    ctx: Context,
    session: Session,
    config: PoolConfig,
    state_name: str,
    pool_names: dict[str, str],
) -> dict[str, Any]:
    """What is at a declared pool's location, and whether its passphrase opens it."""
    backend = ctx.backend_for(config)
    row = session.get(PoolRow, state_name)
    facts = _location_facts(backend, row.uuid if row else None, pool_names, state_name)
    facts["default_chunk_avg_kib"] = DEFAULT_CHUNK_AVG_KIB
    # The recorded pool's snapshots as catalogued: what a replacement would destroy
    # even when the location now shows something else.
    facts["state_snapshots"] = snapshot_count(session, pool_uuid=row.uuid) if row else 0
    if facts["status"] == "pool":
        # The pool's own key slots are the only place a passphrase can be checked: a
        # changed variable would otherwise be noticed only by the next backup. Costs one
        # key derivation (argon2id, ~0.25 s) per pool.
        try:
            Pool.open(backend, ctx.passphrase_for(config))
            facts["passphrase"] = "opens"
        except WrongPassphrase:
            facts["passphrase"] = "wrong"
        except (PoolParametersTampered, KeySlotUnsafe) as error:
            # The passphrase is not the question: the pool refuses to be opened (its
            # parameters were changed, or a planted key slot). A fact that blocks the
            # plan with the reason, as a wrong passphrase does; not an abort.
            facts["passphrase"] = "refused"
            facts["refused"] = str(error)
    return facts


def recorded_pool_facts(
    ctx: Context,
    session: Session,
    name: str,
    attributes: dict[str, Any] | None,
    pool_names: dict[str, str],
) -> dict[str, Any]:
    """A pool no longer declared: what is at the location the state recorded for it."""
    row = session.get(PoolRow, name)
    state_uuid = row.uuid if row else None
    if attributes is None:  # recorded by an earlier CoStor: only a local path is known
        if row is None or row.backend != "local":
            return {
                "location": row.location if row else None,
                "state_uuid": state_uuid,
                "status": "unknown",
                "snapshots": snapshot_count(session, pool_uuid=state_uuid),
            }
        attributes = {"site": "-", "backend": "local", "path": row.location, "encryption": "none"}
    try:
        config = PoolConfig.from_recorded(name, attributes, ctx.inventory.base_dir)
        return _location_facts(ctx.backend_for(config), state_uuid, pool_names, name)
    except CostorError as error:
        # Unreachable, or its credentials are gone: it cannot be deleted, but it can
        # still be forgotten ([[removed]] destroy = false), which touches nothing.
        return {
            "location": row.location if row else attributes.get("path"),
            "state_uuid": state_uuid,
            "status": "unreachable",
            "error": str(error),
            "snapshots": snapshot_count(session, pool_uuid=state_uuid),
        }
    except ValueError as error:  # recorded attributes this version cannot read
        return {
            "location": row.location if row else None,
            "state_uuid": state_uuid,
            "status": "unknown",
            "error": str(error),
            "snapshots": snapshot_count(session, pool_uuid=state_uuid),
        }


def _location_facts(
    backend: Backend, state_uuid: str | None, pool_names: dict[str, str], state_name: str
) -> dict[str, Any]:
    facts: dict[str, Any] = {"location": backend.location, "state_uuid": state_uuid}
    try:
        identity = read_identity(backend)
    except BackendError:
        # An S3 pool whose bucket does not exist is a fact to plan with (blocked, or a
        # bucket to create), not an error that stops the whole plan.
        missing = missing_bucket(backend)
        if missing is None:
            raise
        facts.update(status="absent", uuid=None, snapshots=0, missing_bucket=missing)
        return facts
    except PoolNotFound:
        found = foreign_object(backend)
        facts.update(status="foreign" if found else "absent", uuid=None, snapshots=0)
        if found:
            facts["found"] = found
        return facts
    facts.update(
        status="pool",
        uuid=identity.uuid,
        encryption=identity.encryption,
        chunk_avg_kib=chunk_avg_kib(identity),
        # Counted in the pool, not the catalogue: an adopted pool's snapshots, or ones
        # written since the catalogue was filled, count as much as any.
        snapshots=count_snapshots(backend),
    )
    owner = pool_names.get(identity.uuid)
    if owner is not None and owner != state_name:
        facts["recorded_as"] = f"pool.{owner}"
    return facts


def s3_backend_of(backend: Backend) -> S3Backend | None:
    """The S3 backend under the storage filters (``inner``), if the pool is on S3."""
    # Here, not at the top: it imports boto3, which only a pool on S3 needs.
    from costor.store.backends.s3 import S3Backend

    seen: Any = backend
    for _ in range(16):  # the filter stack is a few layers deep
        if isinstance(seen, S3Backend):
            return seen
        seen = getattr(seen, "inner", None)
        if seen is None:
            break
    return None


def missing_bucket(backend: Backend) -> dict[str, str] | None:
    """``{"bucket", "endpoint"}`` if ``backend`` is an S3 pool whose bucket does not
    exist; None otherwise, or when that cannot be told (no permission to ask)."""
    s3 = s3_backend_of(backend)
    if s3 is None:
        return None
    try:
        if s3.bucket_exists():
            return None
    except CostorError:
        return None
    return {"bucket": s3.bucket, "endpoint": s3.endpoint or "the default AWS S3 endpoint"}


def _pool_names_by_uuid(session: Session) -> dict[str, str]:
    return {row.uuid: row.name for row in pool_rows(session)}


def _client_facts(session: Session, names: list[str]) -> dict[str, Any]:
    """The client's snapshots in the catalogue, per pool (by name)."""
    per_pool = {
        str(pool or "(a pool no longer recorded)"): n
        for pool, n in snapshot_counts_by_pool(session, names)
    }
    return {"snapshots": sum(per_pool.values()), "pools": dict(sorted(per_pool.items()))}


def _password_fact(ctx: Context, session: Session, resource: Resource, state_name: str) -> str:
    row = session.get(UserRow, state_name)
    if row is None:
        return "missing"
    user = ctx.inventory.users[resource.name]
    password = resolve_secret(user.password, f"users.{resource.name}.password")
    return "matches" if verify_password(password, row.password_hash) else "differs"


# --- binding ---------------------------------------------------------------------------------


def source_files(ctx: Context) -> list[Path]:
    """The inventory and every profile file it could use, in a stable order."""
    # The shipped profiles too: a CoStor upgrade that changes one makes a saved plan stale.
    directories = list(ctx.inventory.costor.profile_paths)
    files = [ctx.inventory.path]
    files += [file for _name, file in find_profile_files(directories, shipped=SHIPPED_PROFILES)]
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
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for path, ref in sorted(ctx.inventory.secret_refs(), key=lambda item: format_key(item[0])):
        name = format_key(path)
        mac.update(name.encode() + b"\0" + resolve_secret(ref, name).encode() + b"\0")
    return mac.hexdigest()


# --- saved plans (``costor plan --out FILE``, ``costor apply FILE``) -------------------------


def write_plan_file(ctx: Context, plan: Plan, *, path: str) -> None:
    """Save ``plan`` at ``path``, signed with the state's plan key."""
    data = planfile.encode(plan, ensure_meta(ctx.engine).plan_key)
    # Written whole under a temporary name, then renamed: a reader never sees half a
    # plan. Mode 0600: the plan lists the installation's layout.
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError as error:
        raise UsageError(
            message=f"--out {path}: cannot write the plan file ({error.strerror or error})"
        ) from None


def read_plan_file(ctx: Context, *, path: str) -> Plan:
    """The plan saved at ``path``, if it was made against this state and not changed
    since: raises :class:`PlanForeign` (another state's lineage) or
    :class:`PlanFileInvalid` (unreadable, or its signature does not match)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise PlanFileInvalid(path=path, reason=error.strerror or str(error)) from None
    plan, document, signature = planfile.decode(data, path)
    meta = ensure_meta(ctx.engine)
    if plan.binding.lineage != meta.lineage:
        raise PlanForeign(path=path, plan_lineage=plan.binding.lineage, state_lineage=meta.lineage)
    if not planfile.verify(document, signature, meta.plan_key):
        raise PlanFileInvalid(
            path=path, reason="its signature does not match: it was changed after `costor plan`"
        )
    return plan
