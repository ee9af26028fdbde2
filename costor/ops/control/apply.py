"""Applying a plan: under the state lock, check it is still what the world looks like,
then carry out each change in order, one transaction each.

Apply never re-decides. It plans again inside the lock only to *compare*: a saved plan
(or the one shown at the prompt) is applied only if a fresh plan would contain exactly
the same changes (same operation, same desired attributes, same observed facts) and the
binding (state lineage and serial, inventory and profile bytes, secrets) is unchanged.
Otherwise the plan is stale and nothing is done.

Each change commits with a serial bump, so a plan made before any of them is stale
afterwards. A failure stops the apply; what was done stays recorded, and the next plan
shows what is left. One change is carried out by :mod:`costor.ops.control.apply_change`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from costor.db.state import ensure_meta, state_lock
from costor.errors import (
    CostorError,
    PlanBlocked,
    PlanForeign,
    PlanStale,
)
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.ops.control.apply_change import ChangeExecutor
from costor.ops.control.plan import make_plan, read_plan_file, secrets_digest, source_digests
from costor.ops.jobs.schedules import sync_schedules
from costor.plan.resources import desired_resources

if TYPE_CHECKING:
    from costor.plan.model import Plan, ResourceChange


@dataclass
class ApplyReport:
    applied: list[ResourceChange] = field(default_factory=list)
    serial: int = 0
    schedules: dict[str, list[str]] = field(default_factory=dict)  # added/changed/removed

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": [
                {
                    "address": c.address,
                    "type": c.type,
                    "name": c.name,
                    "actions": list(c.actions),
                    "operation": c.operation,
                    "previous_address": c.previous_address,
                    "reason": c.reason,
                }
                for c in self.applied
            ],
            "changes": len(self.applied),
            "serial": self.serial,
            "schedules": self.schedules,
        }


@dataclass
class ApplyOutcome:
    """One ``costor apply``: the plan it carried out (made here, or read from a file)
    and what was done; nothing pending still reports the schedules it kept in step."""

    plan: Plan
    report: ApplyReport

    def to_json(self) -> dict[str, Any]:
        return self.report.to_json()


def run_apply(
    ctx: Context,
    *,
    plan_file: str | None = None,
    targets: tuple[str, ...] = (),
    refresh_only: bool = False,
    lock_timeout: float = 0.0,
    show_plan: Callable[[Plan], None] | None = None,
    approve: Callable[[Plan], None] | None = None,
    on_change: Callable[[ResourceChange], None] | None = None,
) -> ApplyOutcome:
    """Apply ``plan_file`` exactly (the saved plan is the approval), or make a plan and
    apply it; all under the state lock, waiting up to ``lock_timeout`` seconds for it.

    A plan made here is handed to ``show_plan`` first, then checked (a blocked plan is
    refused even with nothing to do: the state and the world disagree, which a pipeline
    must see fail), then, if it changes anything, to ``approve``, which raises to stop
    (``None``: approved). ``on_change`` hears of each change before it is carried out.
    Recorded in the audit log before the state lock is taken (costor.ops.audit).
    """
    detail = {"plan_file": plan_file, "targets": list(targets), "refresh_only": refresh_only}
    with audited(ctx, "apply", "state", detail=detail, before=True) as noted:
        outcome = _apply(
            ctx,
            plan_file=plan_file,
            targets=targets,
            refresh_only=refresh_only,
            lock_timeout=lock_timeout,
            show_plan=show_plan,
            approve=approve,
            on_change=on_change,
        )
        report = outcome.report
        noted.update(serial=report.serial, applied=[c.address for c in report.applied])
    return outcome


def _apply(
    ctx: Context,
    *,
    plan_file: str | None,
    targets: tuple[str, ...],
    refresh_only: bool,
    lock_timeout: float,
    show_plan: Callable[[Plan], None] | None,
    approve: Callable[[Plan], None] | None,
    on_change: Callable[[ResourceChange], None] | None,
) -> ApplyOutcome:
    with state_lock(ctx.engine, "apply", timeout=lock_timeout):
        if plan_file is not None:
            plan, shown_as = read_plan_file(ctx, path=plan_file), plan_file
        else:
            plan = make_plan(ctx, targets=targets, refresh_only=refresh_only)
            shown_as = "the plan"
            if show_plan is not None:
                show_plan(plan)
            check_applyable(plan)
            if plan.pending and approve is not None:
                approve(plan)
        if not plan.pending:
            check_applyable(plan)
            # Nothing to change, but schedules still follow the applied inventory (e.g.
            # after an upgrade that added them).
            schedules = sync_schedules(ctx.engine, ctx.inventory)
            return ApplyOutcome(plan, ApplyReport(serial=plan.binding.serial, schedules=schedules))
        report = apply_plan(ctx, plan, path=shown_as, on_change=on_change)
    return ApplyOutcome(plan, report)


def check_applyable(plan: Plan) -> None:
    """Refuse a plan with errors or blocked changes: nothing of it is applied."""
    if plan.errors:
        raise PlanBlocked(
            reason=f"the plan has {len(plan.errors)} error(s): " + "; ".join(plan.errors)
        )
    blocked = plan.blocked
    if blocked:
        reasons = "; ".join(c.blocked or "" for c in blocked)
        raise PlanBlocked(
            reason=f"the plan is blocked ({len(blocked)} resource(s) cannot be planned; "
            f"nothing was applied): {reasons}"
        )


def check_fresh(ctx: Context, plan: Plan, *, path: str) -> None:
    """Raise :class:`PlanStale` / :class:`PlanForeign` unless ``plan`` is still current."""
    binding = plan.binding
    meta = ensure_meta(ctx.engine)
    if binding.lineage != meta.lineage:
        raise PlanForeign(path=path, plan_lineage=binding.lineage, state_lineage=meta.lineage)
    if binding.serial != meta.serial:
        raise PlanStale(
            path=path,
            reason=f"the state changed since it was made (serial {binding.serial} -> "
            f"{meta.serial}: another apply ran, or this plan was applied already)",
        )
    sources = source_digests(ctx)
    for name in sorted(set(sources) | set(binding.sources)):
        if sources.get(name) != binding.sources.get(name):
            what = (
                "appeared"
                if name not in binding.sources
                else ("was removed" if name not in sources else "changed")
            )
            raise PlanStale(path=path, reason=f"{name} {what} since it was made")
    if ctx.inventory.digest() != binding.inventory_digest:
        raise PlanStale(path=path, reason="the resolved inventory changed since it was made")
    if secrets_digest(ctx, meta.plan_key) != binding.secrets_digest:
        raise PlanStale(path=path, reason="a secret's value changed since it was made")
    fresh = make_plan(ctx, targets=plan.targets, refresh_only=plan.refresh_only)
    mine = {c.address: c for c in plan.pending}
    theirs = {c.address: c for c in fresh.pending}
    for address in sorted(set(mine) | set(theirs)):
        old, new = mine.get(address), theirs.get(address)
        if old is None or new is None:
            reason = f"{address} now {'needs a change' if old is None else 'needs no change'}"
            raise PlanStale(path=path, reason=reason)
        if (old.operation, old.previous_address, old.after_digest) != (
            new.operation,
            new.previous_address,
            new.after_digest,
        ):
            raise PlanStale(path=path, reason=f"the change to {address} is no longer the same")
        if old.facts_digest != new.facts_digest:
            raise PlanStale(
                path=path, reason=f"what was observed of {address} changed ({new.reason})"
            )


def apply_plan(
    ctx: Context,
    plan: Plan,
    *,
    path: str = "the plan",
    on_change: Callable[[ResourceChange], None] | None = None,
) -> ApplyReport:
    """Carry out ``plan``; the caller holds the state lock (:func:`costor.db.state.state_lock`)."""
    check_applyable(plan)
    check_fresh(ctx, plan, path=path)
    desired = {r.address: r.attributes for r in desired_resources(ctx.inventory)}
    report = ApplyReport()
    for change in plan.pending:
        if on_change is not None:
            on_change(change)
        try:
            report.serial = ChangeExecutor(ctx, change, desired).run()
        except CostorError as error:
            done = len(report.applied)
            error.message = (
                f"{change.address}: {error.message} (apply stopped after {done} of "
                f"{len(plan.pending)} change(s); run `costor plan` to see what is left)"
            )
            raise
        report.applied.append(change)

    # Schedules follow what is applied (read back from the state, so a targeted apply
    # schedules nothing it did not apply): a removed client's disappears with it.
    report.schedules = sync_schedules(ctx.engine, ctx.read_applied())
    return report
