"""A plan as plain, frozen data: what apply will do, why, and what it was made from.

The JSON form (``plan --json``, ``show --json``, plan files) follows Terraform's plan
JSON in spirit (``terraform show -json``): ``format_version``, ``resource_changes[]`` with
``address``, ``type``, ``name``, ``change.actions``, ``change.before``,
``change.after`` (secrets masked, with ``before_sensitive`` / ``after_sensitive``),
``resource_drift[]``; plus CoStor's own ``reason`` on every change, ``blocked`` on a
change apply must refuse, and ``binding`` (what a saved plan is checked against).

``operation`` says exactly what apply does for a change, so that apply never
re-decides: ``create``, ``adopt`` (a pool found at its location), ``update``,
``relocate`` (a pool found at a new location), ``replace``, ``delete``, ``retire`` (a
client: no more backups, snapshots kept), ``destroy`` (also delete the data it holds),
``forget`` (state only), ``refresh`` (record what was observed) or ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = "1.0"

ACTIONS: dict[str, tuple[str, ...]] = {
    "none": ("no-op",),
    "create": ("create",),
    "adopt": ("create",),
    "update": ("update",),
    "relocate": ("update",),
    "refresh": ("update",),
    "replace": ("delete", "create"),
    "delete": ("delete",),
    "retire": ("delete",),
    "destroy": ("delete",),
    "forget": ("forget",),
}


@dataclass(frozen=True)
class ResourceChange:
    address: str
    type: str
    name: str
    operation: str
    reason: str
    before: Any = None  # masked: secrets are "(sensitive)"
    after: Any = None
    before_sensitive: Any = None
    after_sensitive: Any = None
    previous_address: str | None = None
    replace_paths: tuple[tuple[str | int, ...], ...] = ()
    # Attributes that differ, compared unmasked (a secret reference that now names
    # another variable is a change even though both sides show "(sensitive)").
    changed_paths: tuple[tuple[str | int, ...], ...] = ()
    importing: dict[str, Any] | None = None
    blocked: str | None = None  # why apply must refuse this plan
    after_digest: str | None = None  # digest of the unmasked desired attributes
    facts_digest: str | None = None  # digest of the observed facts the decision used
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def actions(self) -> tuple[str, ...]:
        return ACTIONS[self.operation]

    @property
    def is_change(self) -> bool:
        return self.operation != "none" or self.previous_address is not None

    def to_json(self) -> dict[str, Any]:
        change: dict[str, Any] = {
            "actions": list(self.actions),
            "before": self.before,
            "after": self.after,
            "before_sensitive": self.before_sensitive
            if self.before_sensitive is not None
            else (False if self.before is None else {}),
            "after_sensitive": self.after_sensitive
            if self.after_sensitive is not None
            else (False if self.after is None else {}),
        }
        if self.replace_paths:
            change["replace_paths"] = [list(p) for p in self.replace_paths]
        if self.changed_paths:
            change["changed_paths"] = [list(p) for p in self.changed_paths]
        if self.importing is not None:
            change["importing"] = self.importing
        document: dict[str, Any] = {
            "address": self.address,
            "type": self.type,
            "name": self.name,
            "change": change,
            "operation": self.operation,
            "reason": self.reason,
        }
        if self.previous_address is not None:
            document["previous_address"] = self.previous_address
        if self.blocked is not None:
            document["blocked"] = self.blocked
        if self.details:
            document["details"] = self.details
        document["after_digest"] = self.after_digest
        document["facts_digest"] = self.facts_digest
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ResourceChange:
        change = document["change"]
        if document["operation"] not in ACTIONS:
            raise ValueError(f"unknown operation {document['operation']!r}")
        return cls(
            address=document["address"],
            type=document["type"],
            name=document["name"],
            operation=document["operation"],
            reason=document["reason"],
            before=change.get("before"),
            after=change.get("after"),
            before_sensitive=change.get("before_sensitive"),
            after_sensitive=change.get("after_sensitive"),
            previous_address=document.get("previous_address"),
            replace_paths=tuple(tuple(p) for p in change.get("replace_paths", ())),
            changed_paths=tuple(tuple(p) for p in change.get("changed_paths", ())),
            importing=change.get("importing"),
            blocked=document.get("blocked"),
            after_digest=document.get("after_digest"),
            facts_digest=document.get("facts_digest"),
            details=document.get("details", {}),
        )


@dataclass(frozen=True)
class Drift:
    """A difference between the state and the world made outside CoStor."""

    address: str
    type: str
    name: str
    reason: str
    before: Any = None  # as CoStor last applied it (masked)
    after: Any = None  # as found now (masked)
    kind: str = "update"  # "update": changed; "delete": gone

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "type": self.type,
            "name": self.name,
            "change": {"actions": [self.kind], "before": self.before, "after": self.after},
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Drift:
        change = document["change"]
        return cls(
            address=document["address"],
            type=document["type"],
            name=document["name"],
            reason=document["reason"],
            before=change.get("before"),
            after=change.get("after"),
            kind=change["actions"][0],
        )


@dataclass(frozen=True)
class Binding:
    """What a saved plan was made from; apply refuses it when any of this changed."""

    lineage: str | None  # None: a state that no apply has written yet
    serial: int
    sources: dict[str, str]  # inventory and profile files (as given) -> sha256 of bytes
    inventory_digest: str  # the resolved inventory (config.Inventory.digest)
    secrets_digest: str  # keyed digest of the secret values (never the values)

    def to_json(self, *, shown: bool = False) -> dict[str, Any]:
        """The binding as a plan file stores it; ``shown`` (``plan --json``, ``show
        --json``): without ``secrets_digest``, which only the signed plan file keeps (a
        digest of secret values printed where others read it lets them test guesses of
        a passphrase offline, given the state's plan key)."""
        document: dict[str, Any] = {
            "lineage": self.lineage,
            "serial": self.serial,
            "sources": dict(sorted(self.sources.items())),
            "inventory_digest": self.inventory_digest,
        }
        if not shown:
            document["secrets_digest"] = self.secrets_digest
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Binding:
        return cls(
            lineage=document["lineage"],
            serial=int(document["serial"]),
            sources=dict(document["sources"]),
            inventory_digest=document["inventory_digest"],
            secrets_digest=document["secrets_digest"],
        )


@dataclass(frozen=True)
class Plan:
    changes: tuple[ResourceChange, ...]
    drift: tuple[Drift, ...]
    binding: Binding
    timestamp: str
    targets: tuple[str, ...] = ()
    refresh_only: bool = False
    costor_version: str = ""
    errors: tuple[str, ...] = ()  # problems that make the plan unusable (bad moves)

    @property
    def pending(self) -> list[ResourceChange]:
        return [c for c in self.changes if c.is_change]

    @property
    def blocked(self) -> list[ResourceChange]:
        return [c for c in self.changes if c.blocked is not None]

    @property
    def applyable(self) -> bool:
        """False when apply must refuse the plan: a blocked change or a plan error
        (``costor plan`` then exits 4, whatever its flags)."""
        return not self.blocked and not self.errors

    @property
    def has_changes(self) -> bool:
        """What ``--detailed-exitcode`` reports as 2: changes to make, or drift to see."""
        return bool(self.pending or self.drift)

    def summary(self) -> dict[str, int]:
        counts = {"add": 0, "change": 0, "remove": 0, "forget": 0, "move": 0}
        for change in self.changes:
            actions = change.actions
            counts["add"] += "create" in actions
            counts["change"] += "update" in actions
            counts["remove"] += "delete" in actions
            counts["forget"] += "forget" in actions
            counts["move"] += change.previous_address is not None
        return counts

    def to_json(self, *, shown: bool = False) -> dict[str, Any]:
        """The plan as a plan file stores it; ``shown``: as ``plan --json`` prints it
        (see :meth:`Binding.to_json`)."""
        return {
            "format_version": FORMAT_VERSION,
            "costor_version": self.costor_version,
            "timestamp": self.timestamp,
            "refresh_only": self.refresh_only,
            "targets": list(self.targets),
            "applyable": self.applyable,
            "errors": list(self.errors),
            "summary": self.summary(),
            "resource_changes": [c.to_json() for c in self.changes],
            "resource_drift": [d.to_json() for d in self.drift],
            "binding": self.binding.to_json(shown=shown),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Plan:
        return cls(
            changes=tuple(ResourceChange.from_json(c) for c in document["resource_changes"]),
            drift=tuple(Drift.from_json(d) for d in document["resource_drift"]),
            binding=Binding.from_json(document["binding"]),
            timestamp=document["timestamp"],
            targets=tuple(document.get("targets", ())),
            refresh_only=bool(document.get("refresh_only", False)),
            costor_version=document.get("costor_version", ""),
            errors=tuple(document.get("errors", ())),
        )
