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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from costor.plan.client import delete_client
from costor.plan.decision import Decision, Recorded
from costor.plan.model import Binding, Drift, Plan, ResourceChange
from costor.plan.pool import PoolDecision, delete_pool
from costor.plan.resources import (
    ORDER,
    Resource,
    digest,
    masked,
    sensitive_mirror,
    sensitive_paths,
    split_address,
)

# What a resource type decides differently from the generic :class:`Decision`, by type:
# how a declared one is decided, and how a recorded one no longer declared is deleted
# (any other type is simply forgotten by the state). A type's static rules (creation
# order, immutable attributes, references) are its ``TypeSpec`` in resources.TYPES; what
# ops observes for it and how apply carries it out are the tables in
# costor/ops/control/plan.py and apply_change.py.
Deleter = Callable[
    [Recorded, Mapping[str, Any], "bool | None", Mapping[str, Resource], dict[str, Any]],
    ResourceChange,
]
DECISIONS: dict[str, type[Decision]] = {"pool": PoolDecision}
DELETES: dict[str, Deleter] = {"pool": delete_pool, "client": delete_client}


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
        kind = DECISIONS.get(resource.type, Decision)
        decided = kind(resource, record, facts.get(resource.address, {}), previous)
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


# --- resources no longer declared -----------------------------------------------------------


def _delete(
    record: Recorded,
    facts: Mapping[str, Any],
    removed: bool | None,
    declared: Mapping[str, Resource],
) -> ResourceChange:
    attributes = record.attributes
    secret = sensitive_paths(attributes)
    base = dict(
        address=record.address,
        type=record.type,
        name=record.name,
        before=masked(attributes, secret),
        before_sensitive=sensitive_mirror(attributes, secret) if attributes is not None else None,
        facts_digest=digest(dict(facts)),
    )
    delete = DELETES.get(record.type)
    if delete is not None:
        return delete(record, facts, removed, declared, base)
    why = "[[removed]]" if removed is not None else "no longer in the inventory"
    return ResourceChange(operation="delete", reason=f"{why}: the state forgets it", **base)


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
