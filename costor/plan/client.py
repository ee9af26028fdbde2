"""Clients no longer declared: retired (no more backups; their snapshots stay and
retention still applies) or, with ``[[removed]]`` and ``destroy = true``, destroyed
(their snapshots are deleted). A declared client is decided by the generic
:class:`~costor.plan.decision.Decision` (its host key is part of it). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from costor.plan.decision import Recorded
from costor.plan.model import ResourceChange
from costor.plan.resources import Resource


def delete_client(
    record: Recorded,
    facts: Mapping[str, Any],
    removed: bool | None,
    declared: Mapping[str, Resource],
    base: dict[str, Any],
) -> ResourceChange:
    """A recorded client no longer declared: retire it, or destroy its snapshots."""
    attributes = record.attributes
    snapshots = int(facts.get("snapshots", 0))
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
    why = "[[removed]] with destroy = false" if removed is False else "no longer in the inventory"
    return ResourceChange(
        operation="retire",
        reason=f"{why}: no more backups; its {snapshots} snapshot(s) {where} are kept{retention}",
        details={"snapshots": snapshots},
        **base,
    )
