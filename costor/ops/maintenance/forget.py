"""Forget: apply each client's retention (its policy's ``retention``) to its snapshots.

Prepare, then execute: every client's snapshots are gathered and decided first (the
dry run is exactly that), then the removed manifests are deleted from the pool and
their rows from the state's catalogue. Data blobs stay: ``costor prune`` reclaims what
no remaining snapshot needs.

Which clients: every client the state knows (retired ones too: a ``ClientRow`` keeps
the ``policy`` of a client removed from the inventory, so its retention still applies)
and every declared one. Snapshots are grouped per client, over all the names it had
(``[[moved]]``). A client keeps everything, and the report says why, when it has no
policy, when its policy has no ``retention``, or when the policy is no longer declared.

Which pools: a client's snapshots are one set across every pool that holds them (a
client moved from pool A to pool B keeps what it left in A). Its retention is applied
over all of them, and each removed snapshot is deleted in the pool that holds it (in
every pool that holds it: a copied pool has the same snapshots under the same ids).

Safety: a manifest that cannot be loaded might be one of the client's snapshots, and
deciding without it could remove the wrong ones. So a client whose pools hold an
unreadable manifest loses nothing, unless the state's catalogue says that manifest
belongs to another client; the run then fails (exit 1) after the other clients. The
same holds for a pool that cannot be opened, when it is the client's own pool or the
catalogue records snapshots of the client in it; any other unreadable pool is left
out of the client's decision (``costor snapshots`` and ``check`` report it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from costor.db import catalogue, clients
from costor.db.session import session_scope
from costor.errors import CostorError, ObjectNotFound, PoolNotFound, UnknownResource
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.ops.restore.snapshots import catalogued_pools, open_named_pool, search_pools
from costor.store.retention import Decision, KeepRules, apply_retention

if TYPE_CHECKING:
    from costor.store.pool import Pool
    from costor.store.snapshot import Snapshot


class ForgetIncomplete(CostorError):
    """Forget failed for {clients}: nothing was removed for them ({reason})."""

    def __init__(self, report: ForgetReport) -> None:
        self.report = report
        failed = [c for c in report.clients if c.errors]
        super().__init__(
            clients=", ".join(c.client for c in failed),
            reason="; ".join(error for c in failed for error in c.errors),
        )


@dataclass
class ClientForget:
    """One client's decisions; ``decisions`` newest first. ``keep_all`` says why the
    client keeps every snapshot (no usable retention), None when retention applied."""

    client: str
    pool: str
    policy: str | None
    retired: bool
    rules: KeepRules | None = None
    keep_all: str | None = None
    decisions: list[Decision] = field(default_factory=list)
    taken_as: dict[str, str] = field(default_factory=dict)  # snapshot id -> earlier name
    pools: dict[str, list[str]] = field(default_factory=dict)  # snapshot id -> pools holding it
    errors: list[str] = field(default_factory=list)
    removed_done: bool = False  # the removed snapshots were deleted (not a dry run)

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def _entry(self, decision: Decision, *, reasons: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": decision.id,
            "time": decision.time,
            "pools": list(self.pools.get(decision.id, [])),
        }
        if decision.id in self.taken_as:
            entry["taken_as"] = self.taken_as[decision.id]
        if reasons:
            entry["reasons"] = list(decision.reasons)
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "pool": self.pool,
            "policy": self.policy,
            "retired": self.retired,
            "retention": self.rules.counts() if self.rules else None,
            "keep_all": self.keep_all,
            "kept": [self._entry(d, reasons=True) for d in self.kept],
            "removed": [self._entry(d, reasons=False) for d in self.removed],
            "errors": list(self.errors),
        }


@dataclass
class ForgetReport:
    dry_run: bool
    clients: list[ClientForget] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.errors for c in self.clients)

    @property
    def kept_total(self) -> int:
        return sum(len(c.kept) for c in self.clients)

    @property
    def removed_total(self) -> int:
        return sum(len(c.removed) for c in self.clients)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "clients": [c.to_json() for c in self.clients],
            "total": {"kept": self.kept_total, "removed": self.removed_total},
        }


@dataclass
class _PoolSnapshots:
    """One pool's manifests, loaded once per run; ``unreadable``: id -> error."""

    pool: Pool | None  # None: a declared pool not yet initialised (no snapshots)
    snapshots: list[Snapshot]
    unreadable: dict[str, str]


def forget(ctx: Context, *, client: str | None = None, dry_run: bool = False) -> ForgetReport:
    """Apply retention to ``client`` (default: every client); raises ForgetIncomplete,
    carrying the report, when a client could not be decided (nothing removed for it).
    Recorded in the audit log before anything is removed (costor.ops.audit)."""
    target = f"client:{client}" if client is not None else "clients:all"
    with audited(ctx, "forget", target, before=True, dry_run=dry_run) as noted:
        try:
            report = _forget(ctx, client=client, dry_run=dry_run)
        except ForgetIncomplete as error:  # the other clients' snapshots were removed
            noted["removed"] = _removed(error.report)
            raise
        noted["removed"] = _removed(report)
    return report


def _removed(report: ForgetReport) -> dict[str, list[str]]:
    """Client -> the ids of the snapshots removed (for the audit record)."""
    return {
        outcome.client: [decision.id for decision in outcome.removed]
        for outcome in report.clients
        if outcome.removed_done
    }


def _forget(ctx: Context, *, client: str | None, dry_run: bool) -> ForgetReport:
    rows = _client_rows(ctx)
    if client is not None:
        if client not in ctx.inventory.clients and client not in rows:
            raise UnknownResource(kind="client", name=client)
        names = [client]
    else:
        names = sorted(set(ctx.inventory.clients) | set(rows))
    report = ForgetReport(dry_run=dry_run)
    pools: dict[str, _PoolSnapshots | CostorError] = {}
    for name in names:
        report.clients.append(_decide(ctx, name, rows.get(name), pools))
    if not dry_run:
        for outcome in report.clients:
            if outcome.errors or not outcome.removed:
                continue
            by_pool: dict[str, list[str]] = {}
            for decision in outcome.removed:
                for pool_name in outcome.pools.get(decision.id, []):
                    by_pool.setdefault(pool_name, []).append(decision.id)
            for pool_name, snapshot_ids in by_pool.items():
                loaded = pools[pool_name]
                # Removed snapshots came from an opened pool.
                assert isinstance(loaded, _PoolSnapshots) and loaded.pool is not None
                _remove(ctx, loaded.pool, snapshot_ids)
            outcome.removed_done = True
    if not report.ok:
        raise ForgetIncomplete(report)
    return report


def _client_rows(ctx: Context) -> dict[str, str | None]:
    """Client name -> its policy, as the state records them (retired clients too)."""
    with session_scope(ctx.engine, write=False) as session:
        return {row.name: row.policy for row in clients.client_rows(session)}


def _decide(
    ctx: Context,
    name: str,
    recorded_policy: str | None,
    pools: dict[str, _PoolSnapshots | CostorError],
) -> ClientForget:
    declared = ctx.inventory.clients.get(name)
    # A client no longer declared is retired (or about to be, at the next apply).
    retired = declared is None
    policy_name = declared.policy if declared is not None else recorded_policy
    pool_name = ctx.client_pool(name)
    outcome = ClientForget(client=name, pool=pool_name, policy=policy_name, retired=retired)

    policy = ctx.inventory.policies.get(policy_name) if policy_name else None
    if policy_name is None:
        outcome.keep_all = "the client has no policy"
    elif policy is None:
        outcome.keep_all = f"policy {policy_name!r} is no longer declared"
    elif policy.retention is None:
        outcome.keep_all = f"policy {policy_name!r} has no retention"
    else:
        outcome.rules = KeepRules.from_mapping(policy.retention.model_dump())

    client_names = ctx.client_names(name)
    catalogued = set(catalogued_pools(ctx, client_names))
    mine: dict[str, Snapshot] = {}
    unreadable: dict[str, str] = {}
    for searched in [pool_name, *(p for p in search_pools(ctx, client_names) if p != pool_name)]:
        loaded = _pool_snapshots(ctx, searched, pools)
        if isinstance(loaded, CostorError):
            if searched == pool_name or searched in catalogued:
                outcome.errors.append(f"pool {searched}: {loaded}")
            continue
        for snapshot in loaded.snapshots:
            if snapshot.client in client_names:
                mine.setdefault(snapshot.id, snapshot)
                outcome.pools.setdefault(snapshot.id, []).append(searched)
        unreadable.update(loaded.unreadable)
    if outcome.errors:
        return outcome
    # Only a client that could lose snapshots is held back by an unreadable manifest.
    blocking = _unreadable_manifests(ctx, unreadable, client_names) if outcome.rules else {}
    for snapshot_id, error in blocking.items():
        outcome.errors.append(f"snapshot {snapshot_id[:12]} cannot be loaded: {error}")
    outcome.taken_as = {s.id: s.client for s in mine.values() if s.client != name}
    rules = outcome.rules if outcome.rules is not None and not blocking else KeepRules()
    result = apply_retention([(s.id, s.time) for s in mine.values()], rules)
    if outcome.rules is None or blocking:
        reason = outcome.keep_all or "not decided: a manifest in the pool cannot be loaded"
        outcome.decisions = [Decision(d.id, d.time, True, (reason,), ()) for d in result.decisions]
    else:
        outcome.decisions = list(result.decisions)
    return outcome


def _pool_snapshots(
    ctx: Context, name: str, pools: dict[str, _PoolSnapshots | CostorError]
) -> _PoolSnapshots | CostorError:
    if name not in pools:
        try:
            opened = open_named_pool(ctx, name)
            pools[name] = _load_manifests(opened)
        except PoolNotFound as error:
            # Declared but never applied: it holds no snapshots. A pool the state
            # recorded and that is gone is an error (check and plan say more).
            never_applied = ctx.recorded_pool_uuid(name) is None
            pools[name] = _PoolSnapshots(None, [], {}) if never_applied else error
        except CostorError as error:
            pools[name] = error
    return pools[name]


def _load_manifests(pool: Pool) -> _PoolSnapshots:
    snapshots: list[Snapshot] = []
    unreadable: dict[str, str] = {}
    for snapshot_id in pool.snapshot_ids():
        try:
            snapshots.append(pool.load_snapshot(snapshot_id))
        except ObjectNotFound:
            continue  # removed since the listing (another forget): not ours to decide
        except (CostorError, ValueError, TypeError) as error:
            # Damaged, or written by a newer CoStor (unknown fields).
            unreadable[snapshot_id] = str(error) or type(error).__name__
    return _PoolSnapshots(pool, snapshots, unreadable)


def _unreadable_manifests(
    ctx: Context, unreadable: dict[str, str], client_names: Collection[str]
) -> dict[str, str]:
    """The unreadable manifests that may be the client's: all of them, except those
    the catalogue records under another client."""
    if not unreadable:
        return {}
    with session_scope(ctx.engine, write=False) as session:
        owners = catalogue.snapshot_owners(session, unreadable)
    return {
        snapshot_id: error
        for snapshot_id, error in unreadable.items()
        if owners.get(snapshot_id) is None or owners[snapshot_id] in client_names
    }


def _remove(ctx: Context, pool: Pool, snapshot_ids: list[str]) -> None:
    """Delete the catalogue rows, then the manifests. A run killed in between leaves
    manifests without rows: the pool is the truth, they are still listed, and the next
    run decides and removes them again (deleting a gone manifest is not an error). The
    other order would leave rows naming snapshots that no longer exist."""
    with session_scope(ctx.engine) as session:
        catalogue.delete_snapshot_rows(session, snapshot_ids)
    for snapshot_id in snapshot_ids:
        pool.delete_snapshot(snapshot_id)
