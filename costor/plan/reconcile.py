"""Desired state (the inventory) + actual state (the database and observed facts) →
a :class:`~costor.plan.model.Plan`. Pure: no I/O, no clock (the caller passes the time).

Inputs, all plain data so that reconciler tests are data files
(``tests/plan/cases/NAME/``):

- ``desired``: :class:`~costor.plan.resources.Resource` list from the inventory;
- ``recorded``: address → :class:`Recorded`, what the state holds; ``attributes`` is
  the row as it is now, ``applied`` as the last apply wrote it (they differ when the
  row was edited outside CoStor: drift);
- ``facts``: address → what ``ops`` observed at plan time (a pool's identity file at its
  location, snapshot counts in the catalogue, whether a user's password still matches);
- ``moved`` / ``removed``: the inventory's ``[[moved]]`` and ``[[removed]]`` blocks.

Decisions, each with its reason:

- a declared resource missing from the state is created (a pool found at its location
  is adopted instead of initialised; a location holding other data is refused);
- a recorded one whose attributes differ is updated, unless an attribute fixed at
  creation changed (replace);
- a recorded one no longer declared is deleted: a client is *retired* (its snapshots
  stay, retention still applies); a pool that holds snapshots is never deleted
  implicitly (``blocked``) unless its recorded ``prevent_destroy`` is false or a
  ``[[removed]]`` block says what to do (``destroy = true``: delete the data;
  ``destroy = false``: forget it and keep the data);
- ``[[moved]]`` renames a recorded resource (``previous_address``), so a client keeps
  its snapshots and history;
- drift (a row edited outside CoStor, a pool's identity file replaced or gone) is
  reported; attribute drift is corrected by the normal update, a pool's is ``blocked``
  until accepted with ``refresh_only``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from costor.plan.model import Binding, Drift, Plan, ResourceChange
from costor.plan.resources import (
    ORDER,
    TYPES,
    KeyPath,
    Resource,
    changed_fields,
    digest,
    masked,
    sensitive_mirror,
    sensitive_paths,
    split_address,
)


@dataclass(frozen=True)
class Recorded:
    type: str
    name: str
    attributes: dict[str, Any] | None  # None: recorded by an older CoStor, no attributes
    applied: dict[str, Any] | None = None

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}"

    @property
    def drifted(self) -> bool:
        return self.attributes is not None and digest(self.attributes) != digest(self.applied)


@dataclass(frozen=True)
class Options:
    targets: tuple[str, ...] = ()
    refresh_only: bool = False


def resolve_moves(
    recorded: Iterable[str], moved: Iterable[tuple[str, str]]
) -> tuple[dict[str, str], list[str]]:
    """``{new address: recorded address}`` for the moves that apply, and errors.

    A move whose ``from`` is not in the state is already done (or never existed) and is
    ignored, as Terraform does, so ``[[moved]]`` blocks can stay in the inventory.
    Chains (a→b, b→c) resolve whatever their order in the file.
    """
    current = {address: address for address in recorded}  # address now -> in the state
    pending = list(moved)
    errors: list[str] = []
    progress = True
    while pending and progress:
        progress = False
        for source, target in list(pending):
            if source not in current:
                continue
            pending.remove((source, target))
            progress = True
            if target in current:
                errors.append(
                    f"cannot move {source} to {target}: the state already has {target}; "
                    "remove one of them first"
                )
                continue
            current[target] = current.pop(source)
    return {now: was for now, was in current.items() if now != was}, errors


def reconcile(
    desired: list[Resource],
    recorded: Mapping[str, Recorded],
    facts: Mapping[str, Mapping[str, Any]],
    *,
    binding: Binding,
    timestamp: str,
    moved: Iterable[tuple[str, str]] = (),
    removed: Mapping[str, bool] | None = None,
    options: Options | None = None,
    costor_version: str = "",
) -> Plan:
    options = options or Options()
    removed = dict(removed or {})
    previous, errors = resolve_moves(recorded, moved)  # new address -> recorded address
    consumed = set(previous.values())
    by_address = {resource.address: resource for resource in desired}

    changes: list[ResourceChange] = []
    drift: list[Drift] = []
    for resource in sorted(desired, key=lambda r: (ORDER[r.type], r.name)):
        record = recorded.get(previous.get(resource.address, resource.address))
        decided = _Decide(resource, record, facts.get(resource.address, {}), previous)
        change, found_drift = decided.run()
        drift.extend(found_drift)
        changes.append(change)

    deletes = [
        address for address in recorded if address not in by_address and address not in consumed
    ]
    for address in sorted(deletes, key=lambda a: (-ORDER[split_address(a)[0]], a)):
        record = recorded[address]
        changes.append(_delete(record, facts.get(address, {}), removed.get(address), by_address))

    if options.refresh_only:
        changes = _refresh_only(changes, drift)
    if options.targets:
        changes = _targeted(changes, options.targets, by_address)
    return Plan(
        changes=tuple(changes),
        drift=tuple(drift),
        binding=binding,
        timestamp=timestamp,
        targets=tuple(options.targets),
        refresh_only=options.refresh_only,
        costor_version=costor_version,
        errors=tuple(errors),
    )


# --- one declared resource ---------------------------------------------------------------


class _Decide:
    def __init__(
        self,
        resource: Resource,
        record: Recorded | None,
        facts: Mapping[str, Any],
        previous: Mapping[str, str],
    ) -> None:
        self.resource = resource
        self.record = record
        self.facts = facts
        # The recorded address this resource had (a [[moved]]), if it is recorded at all.
        self.previous = previous.get(resource.address) if record is not None else None
        self.drift: list[Drift] = []

    def run(self) -> tuple[ResourceChange, list[Drift]]:
        if self.resource.type == "pool":
            change = self.pool()
        else:
            change = self.generic()
        return change, self.drift

    # --- shared ------------------------------------------------------------------------

    def make(self, operation: str, reason: str, **extra: Any) -> ResourceChange:
        resource = self.resource
        before_raw = self.record.attributes if self.record else None
        if operation == "create" or operation == "adopt":
            before_raw = None
        secret_paths = set(resource.sensitive) | set(sensitive_paths(before_raw))
        facts_used = extra.pop("facts_used", None)
        changed: list[KeyPath] = []
        if before_raw is not None and operation != "none":
            changed = [path for path, _o, _n in changed_fields(before_raw, resource.attributes)]
        changed += [p for p in extra.pop("also_changed", ()) if p not in changed]
        return ResourceChange(
            address=resource.address,
            type=resource.type,
            name=resource.name,
            operation=operation,
            reason=reason,
            before=masked(before_raw, secret_paths),
            after=masked(resource.attributes, secret_paths),
            before_sensitive=sensitive_mirror(before_raw, secret_paths)
            if before_raw is not None
            else None,
            after_sensitive=sensitive_mirror(resource.attributes, secret_paths),
            previous_address=self.previous,
            changed_paths=tuple(changed),
            after_digest=digest(resource.attributes),
            facts_digest=digest(facts_used if facts_used is not None else dict(self.facts)),
            **extra,
        )

    def note_attribute_drift(self) -> str:
        """Record drift of the row itself; returns a phrase for the change's reason."""
        record = self.record
        if record is None or not record.drifted:
            return ""
        fields = [
            _path_text(path)
            for path, _old, _new in changed_fields(record.applied, record.attributes)
        ]
        secret = set(sensitive_paths(record.applied)) | set(sensitive_paths(record.attributes))
        self.drift.append(
            Drift(
                address=self.resource.address,
                type=self.resource.type,
                name=self.resource.name,
                reason=f"changed outside CoStor since the last apply: {', '.join(fields)}",
                before=masked(record.applied, secret),
                after=masked(record.attributes, secret),
            )
        )
        return " (changed outside CoStor since the last apply)"

    def differences(self) -> list[KeyPath]:
        assert self.record is not None
        return [
            path
            for path, _o, _n in changed_fields(self.record.attributes, self.resource.attributes)
        ]

    def host_key(self) -> tuple[list[str], str, dict[str, Any]]:
        """An SSH client's host key: (problems, a phrase for the reason, details for
        apply — the key to record, if any)."""
        ssh = self.facts.get("ssh")
        if not ssh:
            return [], "", {}
        host, presented = ssh.get("host"), ssh.get("presented")
        if ssh.get("pinned"):
            if presented and presented != ssh["pinned"]:
                return (
                    [f"{host} presents host key {presented}, not the pinned {ssh['pinned']}"],
                    "",
                    {},
                )
            return [], "", {}
        recorded = ssh.get("recorded")
        if presented is None:
            if recorded:
                return [], "", {}
            return (
                [],
                f"; {host} is unreachable ({ssh.get('error')}): its host key is recorded by "
                "an apply while it is reachable, and backups wait for that",
                {},
            )
        if recorded is None:
            return (
                [],
                f"; records the host key {host} presents, {presented} (first contact: "
                "check it against the host's /etc/ssh/ssh_host_*_key.pub)",
                {"host_key": ssh.get("presented_key"), "fingerprint": presented},
            )
        if recorded != presented:
            return (
                [
                    f"the host key of {host} changed: recorded {recorded}, presented "
                    f"{presented}; if the host was reinstalled, check the new key and run "
                    f"`costor hostkey accept {self.resource.name}`"
                ],
                "",
                {},
            )
        return [], "", {}

    def generic(self) -> ResourceChange:
        resource, record = self.resource, self.record
        problems, key_note, key_details = self.host_key()
        # A client's decision rests on these facts only: its snapshot counts change with
        # every backup, which must not make a saved plan that edits the client stale.
        used = (
            {
                "former_name_of": self.facts.get("former_name_of"),
                "ssh": {
                    k: (self.facts.get("ssh") or {}).get(k)
                    for k in ("pinned", "recorded", "presented")
                },
            }
            if resource.type == "client"
            else None
        )
        if record is None:
            owner = self.facts.get("former_name_of")
            if owner:
                problems.insert(
                    0,
                    f"{resource.name!r} is a former name of client.{owner}, whose snapshots "
                    "taken under that name would be mixed with this one's; choose another "
                    f"name, or rename client.{owner} back with [[moved]]",
                )
            return self.make(
                "create",
                f"{resource.type} {resource.name} is not in the state{key_note}",
                blocked=self.blocked_text(problems),
                facts_used=used,
                details=key_details,
            )
        if record.attributes is None:
            return self.make(
                "update",
                "recorded by an earlier CoStor without its configuration; apply records "
                f"it{key_note}",
                blocked=self.blocked_text(problems),
                facts_used=used,
                details=key_details,
            )
        drifted = self.note_attribute_drift()
        fields = self.differences()
        if resource.type == "client":
            blocked = self.blocked_text(problems)
            if fields or key_details:
                reason = _changed_reason(fields, drifted) if fields else "host key to record"
                return self.make(
                    "update",
                    reason + key_note,
                    blocked=blocked,
                    facts_used=used,
                    details=key_details,
                    also_changed=[("host_key",)] if key_details else [],
                )
            if self.previous:
                return self.make(
                    "none",
                    f"moved from {self.previous}; nothing else changed{key_note}",
                    blocked=blocked,
                    facts_used=used,
                )
            return self.make(
                "none", _unchanged_reason("client") + key_note, blocked=blocked, facts_used=used
            )
        if resource.type == "user" and self.facts.get("password") in ("differs", "missing"):
            why = "password changed" if self.facts["password"] == "differs" else "no password hash"
            head = _changed_reason(fields, drifted) + "; " if fields else ""
            return self.make(
                "update",
                f"{head}{why} (the value is not shown)",
                facts_used=dict(self.facts),
                also_changed=[("password",)],
            )
        if fields:
            return self.make("update", _changed_reason(fields, drifted))
        if self.previous:
            return self.make("none", f"moved from {self.previous}; nothing else changed")
        return self.make("none", _unchanged_reason(resource.type))

    # --- pools -------------------------------------------------------------------------

    def pool(self) -> ResourceChange:
        resource, record, facts = self.resource, self.record, self.facts
        location = facts.get("location", "its location")
        status = facts.get("status")
        found_uuid, state_uuid = facts.get("uuid"), facts.get("state_uuid")
        identity_facts = {
            k: facts.get(k)
            for k in (
                "location",
                "status",
                "uuid",
                "state_uuid",
                "encryption",
                "chunk_avg_kib",
                "passphrase",
                "recorded_as",
                "missing_bucket",
            )
        }

        if record is None:
            if status == "pool":
                problems = self.pool_found_problems()
                if facts.get("recorded_as"):
                    problems.insert(
                        0,
                        f"{location} holds {facts['recorded_as']} ({found_uuid}); to rename "
                        f'it, add [[moved]] from = "{facts["recorded_as"]}" to = '
                        f'"{resource.address}"',
                    )
                return self.make(
                    "adopt",
                    f"a CoStor pool ({found_uuid}) already exists at {location}; apply adopts "
                    "it once the passphrase opens it",
                    importing={"uuid": found_uuid},
                    blocked=self.blocked_text(problems),
                    facts_used=identity_facts,
                )
            if status == "foreign":
                return self.make(
                    "create",
                    f"no pool at {location}",
                    blocked=f"{resource.address}: {location} holds other data "
                    f"({facts.get('found')}) and no CoStor pool; CoStor will not initialise "
                    "a pool over it",
                    facts_used=identity_facts,
                )
            if facts.get("missing_bucket"):
                return self.pool_in_missing_bucket(identity_facts)
            return self.make(
                "create",
                f"no pool at {location}; apply initialises one "
                f"({resource.attributes.get('encryption')})",
                facts_used=identity_facts,
            )

        if record.attributes is None:
            base = "recorded by an earlier CoStor without its configuration; apply records it"
            return self.pool_identity_checked("update", base, identity_facts)

        drifted = self.note_attribute_drift()
        fields = self.differences()
        spec = TYPES["pool"]
        moved_location = [p for p in fields if p[0] in spec.location]
        if moved_location:
            if status == "pool" and found_uuid == state_uuid:
                return self.make(
                    "relocate",
                    f"the pool moved: found at {location} with the recorded UUID "
                    f"({_fields_text(moved_location)} changed)",
                    blocked=self.blocked_text(self.pool_found_problems()),
                    facts_used=identity_facts,
                )
            return self.pool_replace(moved_location, [], identity_facts)
        if status == "pool" and found_uuid == state_uuid:
            # What the identity file says is the truth about what is fixed at init; the
            # recorded attributes may only spell the same thing differently (an explicit
            # default chunk size, say).
            fixed = self.fixed_mismatches()
            if fixed:
                return self.pool_replace([], fixed, identity_facts)
        if fields:
            reason = _changed_reason(fields, drifted)
        elif self.previous:
            reason = (
                f"moved from {self.previous}; pool present at {location} with the recorded UUID"
            )
        else:
            reason = f"pool present at {location} with the recorded UUID"
        return self.pool_identity_checked("update" if fields else "none", reason, identity_facts)

    def missing_bucket_text(self) -> str:
        missing = self.facts["missing_bucket"]
        return f"bucket {missing.get('bucket')} does not exist at {missing.get('endpoint')}"

    def pool_in_missing_bucket(self, identity_facts: dict[str, Any]) -> ResourceChange:
        """A new S3 pool whose bucket does not exist: apply creates the bucket only
        when the inventory says so (``create_bucket = true``); otherwise blocked."""
        attributes = self.resource.attributes
        what = self.missing_bucket_text()
        if attributes.get("create_bucket"):
            return self.make(
                "create",
                f"{what}; apply creates it (create_bucket = true) and initialises a pool "
                f"at {self.facts.get('location')} ({attributes.get('encryption')})",
                facts_used=identity_facts,
                details={"create_bucket": True},
            )
        return self.make(
            "create",
            f"no pool at {self.facts.get('location')}: {what}",
            blocked=f"{self.resource.address}: {what}; create it, or set create_bucket = true",
            facts_used=identity_facts,
        )

    def fixed_mismatches(self) -> list[KeyPath]:
        """Attributes fixed at init on which the inventory and the identity file differ."""
        facts, attributes = self.facts, self.resource.attributes
        if "encryption" not in facts:
            # No identity facts (an older caller): the recorded attributes are all we know.
            recorded = (self.record.attributes if self.record else None) or {}
            return [
                (key,)
                for key in TYPES["pool"].immutable
                if key in recorded and recorded.get(key) != attributes.get(key)
            ]
        mismatched: list[KeyPath] = []
        if attributes.get("encryption") != facts["encryption"]:
            mismatched.append(("encryption",))
        wanted = attributes.get("chunk_avg_kib") or facts.get("default_chunk_avg_kib")
        if facts.get("chunk_avg_kib") and wanted and wanted != facts["chunk_avg_kib"]:
            mismatched.append(("chunk_avg_kib",))
        return mismatched

    def pool_found_problems(self) -> list[str]:
        """Why a pool found at the location cannot be taken as the declared one."""
        facts, attributes = self.facts, self.resource.attributes
        problems = []
        for path in self.fixed_mismatches():
            key = str(path[0])
            found = facts.get(key)
            wanted = attributes.get(key) or facts.get(f"default_{key}")
            problems.append(
                f"the pool at {facts.get('location')} has {key} = {found!r} but the inventory "
                f"says {wanted!r} (fixed when a pool is initialised): change the inventory to "
                "match"
            )
        if facts.get("passphrase") == "wrong":
            problems.append(self.wrong_passphrase())
        return problems

    def wrong_passphrase(self) -> str:
        return (
            f"the passphrase of pools.{self.resource.name}.passphrase does not open the pool "
            f"at {self.facts.get('location')} (a wrong value, or its key slots were changed); "
            "CoStor does not change a pool's key through apply: add a key slot for the new "
            "passphrase with `costor pool add-key` while the old one still opens the pool"
        )

    def blocked_text(self, problems: list[str]) -> str | None:
        return f"{self.resource.address}: " + "; ".join(problems) if problems else None

    def pool_identity_checked(
        self, operation: str, reason: str, identity_facts: dict[str, Any]
    ) -> ResourceChange:
        """The change, or a blocked one if the pool at its location is not the recorded
        one, or its passphrase does not open it."""
        facts = self.facts
        location = facts.get("location")
        status, found_uuid, state_uuid = (
            facts.get("status"),
            facts.get("uuid"),
            facts.get("state_uuid"),
        )
        if state_uuid is None or (status == "pool" and found_uuid == state_uuid):
            problems = [self.wrong_passphrase()] if facts.get("passphrase") == "wrong" else []
            return self.make(
                operation, reason, blocked=self.blocked_text(problems), facts_used=identity_facts
            )
        if status == "pool":
            why = f"{location} holds pool {found_uuid}, not the recorded {state_uuid}"
            hint = "restore the original, or accept the pool found there with `--refresh-only`"
        elif status == "foreign":
            why = (
                f"the identity file at {location} is gone and other data is there "
                f"({facts.get('found')})"
            )
            hint = "restore the pool, or forget it with `--refresh-only`"
        else:
            why = f"the pool recorded at {location} is gone " + (
                f"({self.missing_bucket_text()})"
                if facts.get("missing_bucket")
                else "(no identity file)"
            )
            hint = (
                "restore it or mount its storage; `--refresh-only` forgets it so that the "
                "next apply creates a new one"
            )
        self.drift.append(
            Drift(
                address=self.resource.address,
                type="pool",
                name=self.resource.name,
                reason=why,
                before={"uuid": state_uuid, "location": location},
                after={"uuid": found_uuid, "location": location, "status": status},
                kind="update" if status == "pool" else "delete",
            )
        )
        if operation == "none":
            reason = why
        return self.make(
            operation,
            reason,
            blocked=f"{self.resource.address}: {why}; {hint}",
            facts_used=identity_facts,
            details={"drift": status},
        )

    def pool_replace(
        self, moved_location: list[KeyPath], fixed: list[KeyPath], identity_facts: dict[str, Any]
    ) -> ResourceChange:
        assert self.record is not None and self.record.attributes is not None
        facts = self.facts
        # The snapshots that replacing destroys are the recorded pool's; at a new location
        # those are not visible here, so the catalogue's count is the floor.
        snapshots = max(int(facts.get("snapshots", 0)), int(facts.get("state_snapshots", 0)))
        if fixed:
            reason = (
                f"{_fields_text(fixed)} cannot change on an existing pool (fixed in its identity "
                "file when it was initialised): the pool is destroyed and a new one initialised"
            )
        else:
            reason = (
                f"{_fields_text(moved_location)} changed and the recorded pool is not at "
                f"{facts.get('location')}: the old pool is destroyed and a new one initialised "
                "there"
            )
        problems = []
        if snapshots and self.record.attributes.get("prevent_destroy", True):
            problems.append(
                f"replacing it would destroy {snapshots} snapshot(s) and prevent_destroy is "
                "true; copy the pool (`costor pool copy`) to the new location first, or set "
                "prevent_destroy = false and apply before this change"
            )
        if moved_location and facts.get("status") in ("pool", "foreign"):
            problems.append(
                f"the new location {facts.get('location')} is not empty; CoStor will not "
                "initialise a pool over other data"
            )
        details: dict[str, Any] = {"snapshots": snapshots}
        if facts.get("missing_bucket"):
            if self.resource.attributes.get("create_bucket"):
                details["create_bucket"] = True
                reason += f"; the {self.missing_bucket_text()}: apply creates it"
            else:
                problems.append(
                    f"{self.missing_bucket_text()}; create it, or set create_bucket = true"
                )
        return self.make(
            "replace",
            reason,
            replace_paths=tuple(moved_location + fixed),
            also_changed=fixed,
            blocked=self.blocked_text(problems),
            facts_used={**identity_facts, "snapshots": snapshots},
            details=details,
        )


# --- resources no longer declared -----------------------------------------------------------


def _delete(
    record: Recorded,
    facts: Mapping[str, Any],
    removed: bool | None,
    declared: Mapping[str, Resource],
) -> ResourceChange:
    attributes = record.attributes
    secret = sensitive_paths(attributes)
    snapshots = int(facts.get("snapshots", 0))
    base = dict(
        address=record.address,
        type=record.type,
        name=record.name,
        before=masked(attributes, secret),
        before_sensitive=sensitive_mirror(attributes, secret) if attributes is not None else None,
        facts_digest=digest(dict(facts)),
    )
    gone = "no longer in the inventory"
    if record.type == "pool":
        return _delete_pool(record, facts, removed, declared, base)
    if record.type == "client":
        pool = (attributes or {}).get("pool", "its pool")
        pools = facts.get("pools") or {}
        where = f"in pool {', '.join(pools) if pools else pool}"
        if removed:
            return ResourceChange(
                operation="destroy",
                reason=f"[[removed]] with destroy = true: no more backups, and its {snapshots} "
                f"snapshot(s) {where} are deleted (prune reclaims the space)",
                details={"snapshots": snapshots},
                **base,
            )
        policy = (attributes or {}).get("policy")
        retention = f" (retention of policy {policy} still applies)" if policy else ""
        why = "[[removed]] with destroy = false" if removed is False else gone
        return ResourceChange(
            operation="retire",
            reason=f"{why}: no more backups; its {snapshots} snapshot(s) {where} are "
            f"kept{retention}",
            details={"snapshots": snapshots},
            **base,
        )
    why = "[[removed]]" if removed is not None else gone
    return ResourceChange(operation="delete", reason=f"{why}: the state forgets it", **base)


def _delete_pool(
    record: Recorded,
    facts: Mapping[str, Any],
    removed: bool | None,
    declared: Mapping[str, Resource],
    base: dict[str, Any],
) -> ResourceChange:
    """A recorded pool no longer declared: forget, delete (empty), destroy, or refuse."""
    location = facts.get("location") or "its recorded location"
    status = facts.get("status")
    snapshots = int(facts.get("snapshots", 0))
    if removed is False:
        return ResourceChange(
            operation="forget",
            reason=f"[[removed]] with destroy = false: the state forgets it; its data at "
            f"{location} ({snapshots} snapshot(s)) is left as it is",
            **base,
        )
    if status == "absent":
        return ResourceChange(
            operation="forget",
            reason=f"no longer in the inventory, and its storage at {location} is already "
            "gone: the state forgets it",
            **base,
        )
    keep = (
        f'add [[removed]] from = "{record.address}" with destroy = false to forget it without '
        "touching the data"
    )
    problems: list[str] = []
    users = sorted(
        address
        for address, resource in declared.items()
        if resource.type == "client" and resource.attributes.get("pool") == record.name
    )
    if users:
        problems.append(f"still used by {', '.join(users)}")
    if facts.get("claimed_by"):
        problems.append(
            f"its storage at {location} is declared again, as {facts['claimed_by']}: to rename "
            f'the pool add [[moved]] from = "{record.address}" to = "{facts["claimed_by"]}"'
        )
    if status in ("unreachable", "unknown"):
        problems.append(f"CoStor cannot see what is at {location} ({facts.get('error')}); {keep}")
    elif status == "foreign":
        problems.append(
            f"{location} now holds other data ({facts.get('found')}), not the recorded pool; "
            f"refusing to delete it; {keep}"
        )
    elif status == "pool" and facts.get("uuid") != facts.get("state_uuid"):
        problems.append(
            f"{location} now holds another pool ({facts.get('uuid')}), not the recorded "
            f"{facts.get('state_uuid')}; refusing to delete it; {keep}"
        )
    elif snapshots and removed is None and (record.attributes or {}).get("prevent_destroy", True):
        problems.append(
            f"it holds {snapshots} snapshot(s) and is never deleted implicitly: set "
            "prevent_destroy = false and apply before removing it, or add [[removed]] from = "
            f'"{record.address}" with destroy = true (delete its data) or destroy = false '
            "(forget it, keep the data)"
        )
    why = "[[removed]] with destroy = true" if removed else "no longer in the inventory"
    held = f"its {snapshots} snapshot(s) and all data" if snapshots else "its (empty) storage"
    return ResourceChange(
        operation="destroy" if snapshots else "delete",
        reason=f"{why}: apply deletes {held} at {location}",
        blocked=f"{record.address}: " + "; ".join(problems) if problems else None,
        details={"snapshots": snapshots, "uuid": facts.get("state_uuid")},
        **base,
    )


# --- refresh-only and targets ----------------------------------------------------------------


def _refresh_only(changes: list[ResourceChange], drift: list[Drift]) -> list[ResourceChange]:
    """Only accept what was observed: attribute edits become the recorded state, a
    replaced pool's UUID is adopted, a vanished pool is forgotten."""
    by_address = {change.address: change for change in changes}
    result: list[ResourceChange] = []
    for item in drift:
        change = by_address.get(item.address)
        if change is None:
            continue
        if item.type == "pool" and item.kind == "delete":
            operation, reason = "forget", f"accept drift: {item.reason}; the state forgets the pool"
        elif item.type == "pool" and change.details.get("drift") == "pool":
            operation, reason = (
                "refresh",
                f"accept drift: {item.reason}; the state records the pool found there",
            )
        else:
            operation, reason = "refresh", f"accept drift: {item.reason}"
        result.append(
            ResourceChange(
                address=change.address,
                type=change.type,
                name=change.name,
                operation=operation,
                reason=reason,
                before=item.before,
                after=item.after,
                previous_address=None,
                # What is accepted is what was seen: a second edit since makes it stale.
                facts_digest=digest({"facts": change.facts_digest, "drift": item.to_json()}),
                details={"drift": change.details.get("drift", "attributes")},
            )
        )
    return result


def _targeted(
    changes: list[ResourceChange], targets: tuple[str, ...], declared: Mapping[str, Resource]
) -> list[ResourceChange]:
    """The targets and, for declared ones, everything they depend on (transitively)."""
    wanted = set(targets)
    stack = [t for t in targets if t in declared]
    while stack:
        for dependency in declared[stack.pop()].depends_on:
            if dependency not in wanted:
                wanted.add(dependency)
                stack.append(dependency)
    return [c for c in changes if c.address in wanted]


# --- wording -----------------------------------------------------------------------------------


def _path_text(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_text(paths: list[KeyPath]) -> str:
    return ", ".join(_path_text(p) for p in paths)


def _changed_reason(fields: list[KeyPath], drifted: str) -> str:
    return f"{_fields_text(fields)} changed{drifted}"


_UNCHANGED = {
    "client": "registered and unchanged",
    "site": "unchanged",
    "policy": "unchanged",
    "user": "unchanged; password matches",
}


def _unchanged_reason(kind: str) -> str:
    return _UNCHANGED.get(kind, "unchanged")
