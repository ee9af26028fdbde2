"""A plan as text for people (``plan``, ``apply``, ``show``), in Terraform's shape::

    + pool.main: no pool at /srv/pool; apply initialises one (aes-256-gcm)
        + backend    = "local"
        + passphrase = (sensitive)
    ~ client.web1: paths changed
        ~ paths = ["/srv"] -> ["/srv", "/etc"]
    - client.old: no longer in the inventory: no more backups; its 3 snapshot(s) …

Unchanged resources are counted, not listed. Values are the masked ones of the plan
JSON, so nothing secret can be printed from here.
"""

from __future__ import annotations

import json
from typing import Any

from costor.plan.model import Plan, ResourceChange
from costor.plan.resources import KeyPath, changed_fields

SYMBOLS = {
    "create": "+",
    "adopt": "+",
    "update": "~",
    "relocate": "~",
    "refresh": "~",
    "replace": "-/+",
    "delete": "-",
    "retire": "-",
    "destroy": "-",
    "forget": "!",
    "none": ">",  # only shown for moves
}

VERBS = {
    "create": "will be created",
    "adopt": "will be adopted (an existing pool)",
    "update": "will be updated in place",
    "relocate": "will be updated in place (moved storage)",
    "refresh": "will record what was found (refresh)",
    "replace": "must be replaced",
    "delete": "will be deleted",
    "retire": "will be retired",
    "destroy": "will be DESTROYED with its data",
    "forget": "will be forgotten (its data is kept)",
    "none": "has moved",
}


def render_plan(plan: Plan) -> str:
    lines: list[str] = []
    blocked = plan.blocked
    if not plan.applyable:
        # First, so that nothing above it reads as "all is well" (a pipeline's log).
        counts = [f"{len(blocked)} resource(s) cannot be planned"] if blocked else []
        counts += [f"{len(plan.errors)} error(s) in the plan"] if plan.errors else []
        lines.append(f"Plan blocked: {', '.join(counts)}:")
        for error in plan.errors:
            lines.append(f"  Error: {error}")
        for change in blocked:
            lines.append(f"  Blocked: {change.blocked}")
        lines.append("")
    if plan.drift:
        lines.append("Changes made outside CoStor (drift):")
        for item in plan.drift:
            lines.append(f"  ~ {item.address}: {item.reason}")
        lines.append("")
    pending = plan.pending
    if not pending:
        if not plan.applyable:
            lines.append("Nothing else would change.")
        elif not plan.drift:
            lines.append("No changes. The state matches the inventory.")
        else:
            lines.append("No changes to apply; the drift above is what differs.")
    else:
        lines.append(
            "CoStor will perform the following actions:"
            if plan.applyable
            else "Changes that could be planned (none is applied while the plan is blocked):"
        )
        lines.append("")
        for change in pending:
            lines.extend(_change_lines(change))
            lines.append("")
    unchanged = len(plan.changes) - len(pending)
    summary = plan.summary()
    if pending:
        lines.append(
            f"Plan: {summary['add']} to add, {summary['change']} to change, "
            f"{summary['remove']} to delete, {summary['forget']} to forget, "
            f"{summary['move']} to move ({unchanged} unchanged)."
        )
    if plan.targets:
        lines.append(
            "Note: --target limits this plan to "
            + ", ".join(plan.targets)
            + " and what they depend on; other changes stay pending."
        )
    if not plan.applyable:
        lines.append("Apply will refuse this plan until the blocked items above are resolved.")
    return "\n".join(lines)


def _change_lines(change: ResourceChange) -> list[str]:
    symbol = SYMBOLS[change.operation]
    moved = f" (moved from {change.previous_address})" if change.previous_address else ""
    held = " (blocked: see above)" if change.blocked else ""
    lines = [
        f"  # {change.address}{moved} {VERBS[change.operation]}{held}",
        f"  {symbol} {change.address}: {change.reason}",
    ]
    if change.operation in ("create", "adopt"):
        lines += _attribute_lines("+", change.after)
    elif change.operation in ("update", "relocate", "replace"):
        for path in change.changed_paths:
            old, new = _lookup(change.before, path), _lookup(change.after, path)
            forces = "  # forces replacement" if tuple(path) in change.replace_paths else ""
            lines.append(f"      ~ {_path(path)} = {_value(old)} -> {_value(new)}{forces}")
    elif change.operation == "refresh":
        for path, old, new in changed_fields(change.before, change.after):
            lines.append(f"      ~ {_path(path)} = {_value(old)} -> {_value(new)}")
    return lines


def _lookup(document: Any, path: KeyPath) -> Any:
    """The value at ``path``; a path below a masked value shows the mask."""
    for part in path:
        if document == "(sensitive)":
            return document
        try:
            document = document[part]
        except (KeyError, IndexError, TypeError):
            return None
    return document


def _attribute_lines(symbol: str, attributes: Any) -> list[str]:
    if not isinstance(attributes, dict):
        return []
    shown = {k: v for k, v in attributes.items() if v not in (None, [], {})}
    width = max((len(k) for k in shown), default=0)
    return [f"      {symbol} {key.ljust(width)} = {_value(value)}" for key, value in shown.items()]


def _path(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _value(value: Any) -> str:
    """A value in TOML's notation, as the administrator wrote it (null: not set)."""
    if value is None:
        return "null"
    if value == "(sensitive)":
        return "(sensitive)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        items = [f"{key} = {_value(item)}" for key, item in value.items() if item is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)
