"""costor.ops.control.apply.run_apply: the apply flow under the state lock (plan or saved plan,
show, check, approve, carry out), called without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures import Site

from costor.db.state import state_lock
from costor.errors import ApplyCancelled, PlanStale, StateLocked
from costor.ops.context import Context
from costor.ops.control.apply import run_apply
from costor.ops.control.plan import make_plan, write_plan_file
from costor.plan.model import Plan, ResourceChange


def planning(site: Site) -> Context:
    return Context(site.inventory, resolve_secrets=True, configuration="working")


def test_a_made_plan_is_shown_approved_then_carried_out_in_order(site: Site) -> None:
    heard: list[str] = []

    def show(plan: Plan) -> None:
        heard.append(f"show {len(plan.pending)}")

    def approve(plan: Plan) -> None:
        heard.append("approve")

    def announce(change: ResourceChange) -> None:
        heard.append(change.address)

    outcome = run_apply(planning(site), show_plan=show, approve=approve, on_change=announce)
    assert heard == ["show 3", "approve", "site.hq", "pool.main", "client.alpha"]
    assert [c.address for c in outcome.report.applied] == heard[2:]
    document = outcome.to_json()
    assert document["changes"] == 3 and document["serial"] == 3
    assert (site.pool_path / "costor-pool.json").is_file()

    again = run_apply(planning(site), approve=approve)
    assert again.plan.pending == [] and heard.count("approve") == 1  # nothing to approve
    nothing = {"added": [], "changed": [], "removed": []}
    assert again.to_json() == {"applied": [], "changes": 0, "serial": 3, "schedules": nothing}


def test_an_approval_that_raises_applies_nothing(site: Site) -> None:
    def refuse(plan: Plan) -> None:
        raise ApplyCancelled()

    with pytest.raises(ApplyCancelled):
        run_apply(planning(site), approve=refuse)
    assert not (site.pool_path / "costor-pool.json").exists()
    assert len(make_plan(planning(site)).pending) == 3


def test_a_saved_plan_is_applied_as_it_is_once(site: Site, tmp_path: Path) -> None:
    ctx = planning(site)
    path = str(tmp_path / "saved.plan")
    write_plan_file(ctx, make_plan(ctx), path=path)

    def never(plan: Plan) -> None:
        raise AssertionError("a saved plan is its own approval and is not shown")

    outcome = run_apply(planning(site), plan_file=path, show_plan=never, approve=never)
    assert outcome.report.serial == 3 and len(outcome.report.applied) == 3
    with pytest.raises(PlanStale):
        run_apply(planning(site), plan_file=path)


def test_a_held_state_lock_refuses_at_once(site: Site) -> None:
    ctx = planning(site)
    make_plan(ctx)  # the state exists, with its lock table
    with state_lock(ctx.engine, "test holder"), pytest.raises(StateLocked):
        run_apply(planning(site), lock_timeout=0)
    assert not (site.pool_path / "costor-pool.json").exists()
