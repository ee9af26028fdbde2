"""Reconciler cases as data: ``cases/NAME/`` holds an ``inventory.toml`` (+ ``profiles/``),
a ``state.json`` (what the state records and what was observed) and an
``expected.json`` (the plan's changes, drift and errors). A bug in planning becomes a
new directory here.

``state.json``::

    {"recorded": {"pool.main": {"as_declared": true, "set": {"pack_size_mib": 8}},
                  "client.old": {"like": "client.web1", "applied_set": {...}},
                  "client.legacy": {"attributes": null}},
     "facts": {"pool.main": {"status": "pool", "uuid": "u1", "state_uuid": "u1", ...}},
     "options": {"targets": ["client.web1"], "refresh_only": false}}

A recorded resource is ``as_declared`` (the attributes the inventory gives it now),
``like`` another declared address, or explicit ``attributes``; ``set`` / ``unset``
change those; ``applied`` is the same unless ``applied_set`` says what apply last wrote
differently (drift). ``$CASE`` in any string is the case directory. ``expected.json``
lists every change in plan order with its exact reason (no-ops included), so the
wording people read is part of what is tested.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from costor.config import check_inventory
from costor.plan.model import Binding, Plan
from costor.plan.reconcile import Options, Recorded, reconcile
from costor.plan.resources import desired_resources

CASES_DIR = Path(__file__).parent / "cases"
CASES = sorted(path.name for path in CASES_DIR.iterdir() if path.is_dir())
BINDING = Binding(None, 0, {}, "inventory-digest", "secrets-digest")


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("COSTOR_TEST_OTHER_PASSPHRASE", "another passphrase")
    monkeypatch.setenv("COSTOR_TEST_USER_PASSWORD", "a user password")


def substitute(value: Any, case_dir: Path) -> Any:
    if isinstance(value, str):
        return value.replace("$CASE", str(case_dir))
    if isinstance(value, list):
        return [substitute(v, case_dir) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, case_dir) for k, v in value.items()}
    return value


def recorded_state(spec: dict[str, Any], declared: dict[str, Any]) -> dict[str, Recorded]:
    recorded = {}
    for address, entry in spec.items():
        kind, name = address.split(".", 1)
        if "attributes" in entry:
            attributes = entry["attributes"]
        else:
            source = address if entry.get("as_declared") else entry["like"]
            attributes = copy.deepcopy(declared[source])
        if attributes is not None:
            attributes.update(entry.get("set", {}))
            for key in entry.get("unset", ()):
                attributes.pop(key, None)
        applied = copy.deepcopy(attributes)
        if applied is not None:
            applied.update(entry.get("applied_set", {}))
        recorded[address] = Recorded(kind, name, attributes, applied)
    return recorded


def plan_for(case: str) -> Plan:
    case_dir = CASES_DIR / case
    inventory, diagnostics = check_inventory(case_dir / "inventory.toml")
    assert inventory is not None, "\n".join(str(d) for d in diagnostics)
    state = substitute(json.loads((case_dir / "state.json").read_text()), case_dir)
    desired = desired_resources(inventory)
    declared = {r.address: r.attributes for r in desired}
    options = state.get("options", {})
    return reconcile(
        desired,
        recorded_state(state.get("recorded", {}), declared),
        state.get("facts", {}),
        binding=BINDING,
        timestamp="2026-12-03T00:00:00Z",
        moved=[(m.from_, m.to) for m in inventory.moved],
        removed={r.from_: r.destroy for r in inventory.removed},
        options=Options(
            targets=tuple(options.get("targets", ())),
            refresh_only=bool(options.get("refresh_only", False)),
        ),
    )


def summarise(plan: Plan) -> dict[str, Any]:
    """The parts of a plan a case pins down."""
    changes = []
    for change in plan.changes:
        item: dict[str, Any] = {
            "address": change.address,
            "actions": list(change.actions),
            "operation": change.operation,
            "reason": change.reason,
        }
        if change.previous_address:
            item["previous_address"] = change.previous_address
        if change.changed_paths:
            item["changed_paths"] = [list(p) for p in change.changed_paths]
        if change.replace_paths:
            item["replace_paths"] = [list(p) for p in change.replace_paths]
        if change.importing:
            item["importing"] = change.importing
        if change.blocked:
            item["blocked"] = change.blocked
        changes.append(item)
    return {
        "changes": changes,
        "drift": [{"address": d.address, "kind": d.kind, "reason": d.reason} for d in plan.drift],
        "errors": list(plan.errors),
        "summary": plan.summary(),
    }


@pytest.mark.parametrize("case", CASES)
def test_case(case: str) -> None:
    case_dir = CASES_DIR / case
    expected = substitute(json.loads((case_dir / "expected.json").read_text()), case_dir)
    assert summarise(plan_for(case)) == expected


@pytest.mark.parametrize("case", CASES)
def test_plan_json_round_trips_and_masks_secrets(case: str) -> None:
    """The JSON form reads back as the same plan, and never holds a secret reference's
    variable *value* (there is none to hold) nor an unmasked reference."""
    plan = plan_for(case)
    document = plan.to_json()
    assert Plan.from_json(json.loads(json.dumps(document))).to_json() == document
    text = json.dumps(document)
    for secret in ("correct horse battery staple", "another passphrase", "a user password"):
        assert secret not in text
    assert "COSTOR_TEST_PASSPHRASE" not in text  # references are shown as (sensitive)
