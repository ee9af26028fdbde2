"""Pools, the one resource type with storage behind it: a declared pool is decided
against what was found at its location (its identity file, the passphrase, a missing
bucket), and a pool no longer declared is forgotten, deleted or destroyed only when
nothing refuses it. Pure: the facts are observed by ``ops``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from costor.plan.decision import Decision, Recorded, changed_reason, fields_text
from costor.plan.model import Drift, ResourceChange
from costor.plan.resources import TYPES, KeyPath, Resource


class PoolDecision(Decision):
    """A declared pool: created, adopted (found at its location), relocated, replaced
    (a location or a setting fixed at init changed) or updated; checked against its
    identity file and passphrase."""

    def decide(self) -> ResourceChange:
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
                "refused",
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
                    f"({fields_text(moved_location)} changed)",
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
            reason = changed_reason(fields, drifted)
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
        problems.extend(self.unopenable())
        return problems

    def unopenable(self) -> list[str]:
        """Why the pool found there does not open: a wrong passphrase, or a pool that
        refuses to be opened (changed parameters, a planted key slot)."""
        if self.facts.get("passphrase") == "wrong":
            return [self.wrong_passphrase()]
        if self.facts.get("passphrase") == "refused":
            return [str(self.facts.get("refused"))]
        return []

    def wrong_passphrase(self) -> str:
        return (
            f"the passphrase of pools.{self.resource.name}.passphrase does not open the pool "
            f"at {self.facts.get('location')} (a wrong value, or its key slots were changed); "
            "CoStor does not change a pool's key through apply: add a key slot for the new "
            "passphrase with `costor pool add-key` while the old one still opens the pool"
        )

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
            problems = self.unopenable()
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
                f"{fields_text(fixed)} cannot change on an existing pool (fixed in its identity "
                "file when it was initialised): the pool is destroyed and a new one initialised"
            )
        else:
            reason = (
                f"{fields_text(moved_location)} changed and the recorded pool is not at "
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


def delete_pool(
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
