"""How one declared resource is decided: the steps every type shares (the change with
its masked before and after, drift of the recorded row, a blocked change's text) and
the decision of every type but pools (:mod:`costor.plan.pool`). Pure, like
:mod:`costor.plan.reconcile`, which calls it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from costor.plan.model import Drift, ResourceChange
from costor.plan.resources import (
    KeyPath,
    Resource,
    changed_fields,
    digest,
    masked,
    sensitive_mirror,
    sensitive_paths,
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


class Decision:
    """How one declared resource is decided; :class:`costor.plan.pool.PoolDecision`
    decides pools."""

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
        return self.decide(), self.drift

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
            path_text(path)
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

    def decide(self) -> ResourceChange:
        """Sites, clients (with their SSH host keys), policies, users, groups, roles."""
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
                reason = changed_reason(fields, drifted) if fields else "host key to record"
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
                "none", unchanged_reason("client") + key_note, blocked=blocked, facts_used=used
            )
        if resource.type == "user" and self.facts.get("password") in ("differs", "missing"):
            why = "password changed" if self.facts["password"] == "differs" else "no password hash"
            head = changed_reason(fields, drifted) + "; " if fields else ""
            return self.make(
                "update",
                f"{head}{why} (the value is not shown)",
                facts_used=dict(self.facts),
                also_changed=[("password",)],
            )
        if fields:
            return self.make("update", changed_reason(fields, drifted))
        if self.previous:
            return self.make("none", f"moved from {self.previous}; nothing else changed")
        return self.make("none", unchanged_reason(resource.type))

    def blocked_text(self, problems: list[str]) -> str | None:
        return f"{self.resource.address}: " + "; ".join(problems) if problems else None


# --- wording -----------------------------------------------------------------------------------


def path_text(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def fields_text(paths: list[KeyPath]) -> str:
    return ", ".join(path_text(p) for p in paths)


def changed_reason(fields: list[KeyPath], drifted: str) -> str:
    return f"{fields_text(fields)} changed{drifted}"


_UNCHANGED = {
    "client": "registered and unchanged",
    "site": "unchanged",
    "policy": "unchanged",
    "user": "unchanged; password matches",
}


def unchanged_reason(kind: str) -> str:
    return _UNCHANGED.get(kind, "unchanged")
