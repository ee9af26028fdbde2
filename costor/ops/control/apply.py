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

Every apply, whatever its end, leaves a summary in the state (the ``applies`` table,
costor/db/applies.py): when, who, the changes carried out counted by operation and
resource type, the saved plan's hash, succeeded or failed and why. :func:`apply_history`
reads them back (the Admin API's ``/api/v1/applies`` and ``/api/v1/sites``: plan and
apply stay in git and the CLI, the API only shows what was applied).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from costor.db import applies as applies_table
from costor.db.models import ApplyRow
from costor.db.state import ensure_meta, state_lock
from costor.errors import (
    CostorError,
    PlanBlocked,
    PlanForeign,
    PlanStale,
    UsageError,
)
from costor.ops.audit import MESSAGE_LIMIT, audited
from costor.ops.context import Context
from costor.ops.control.apply_change import ChangeExecutor
from costor.ops.control.plan import make_plan, read_plan_file, secrets_digest, source_digests
from costor.ops.jobs.schedules import sync_schedules
from costor.plan.resources import desired_resources
from costor.util.clock import utcnow
from costor.util.log import get_logger

if TYPE_CHECKING:
    from costor.plan.model import Plan, ResourceChange

logger = get_logger("apply")
# How a change's actions are counted in an apply's summary.
COUNTED = {"create": "created", "update": "changed", "delete": "deleted", "forget": "forgotten"}
MAX_HISTORY = 1000  # applies one read returns at most


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
    attempt = _Attempt(started=utcnow(), plan_file=plan_file, plan_hash=_file_hash(plan_file))
    try:
        with audited(ctx, "apply", "state", detail=detail, before=True) as noted:
            outcome = _apply(
                ctx,
                attempt,
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
    except BaseException as error:
        _record(ctx, attempt, error)
        raise
    _record(ctx, attempt, None)
    return outcome


@dataclass
class _Attempt:
    """What an apply got to, for its summary: the plan once made or read, the changes
    carried out so far (also when it fails midway)."""

    started: datetime
    plan_file: str | None
    plan_hash: str | None
    plan: Plan | None = None
    report: ApplyReport = field(default_factory=ApplyReport)


def _file_hash(path: str | None) -> str | None:
    """sha256 of a saved plan file's bytes (what ``sha256sum`` prints of the artifact a
    pipeline kept); None without a file or when it cannot be read (apply says why)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def change_counts(changes: list[ResourceChange]) -> dict[str, dict[str, int]]:
    """The changes counted by what they did and resource type:
    ``{"created": {"client": 2}, "changed": {}, "deleted": {}, "forgotten": {}, "moved": {}}``
    (a replacement counts as deleted and created, as its actions say)."""
    counted: dict[str, Counter[str]] = {name: Counter() for name in (*COUNTED.values(), "moved")}
    for change in changes:
        for action in change.actions:
            if action in COUNTED:
                counted[COUNTED[action]][change.type] += 1
        if change.previous_address is not None:
            counted["moved"][change.type] += 1
    return {name: dict(sorted(counter.items())) for name, counter in counted.items()}


def _record(ctx: Context, attempt: _Attempt, error: BaseException | None) -> None:
    """Store the apply's summary; best effort: a failure to write it is logged, the
    apply's own outcome stands (its error, if any, is what the caller sees)."""
    applied = attempt.report.applied
    message = None
    if error is not None:
        text = str(error).strip() or type(error).__name__
        message = f"{type(error).__name__}: {text}"[:MESSAGE_LIMIT]
    row = ApplyRow(
        started_at=attempt.started,
        finished_at=utcnow(),
        actor=ctx.actor,
        source=ctx.source,
        outcome="failed" if error is not None else "succeeded",
        plan_file=attempt.plan_file,
        plan_hash=attempt.plan_hash,
        pending=len(attempt.plan.pending) if attempt.plan is not None else 0,
        counts=json.dumps(change_counts(applied), sort_keys=True),
        applied=json.dumps([c.address for c in applied]),
        serial=attempt.report.serial or None,
        error=message,
    )
    try:
        applies_table.record_apply(ctx.engine, row)
    except Exception as failure:  # noqa: BLE001  (the apply is done; said on stderr)
        logger.error(f"costor: error: the apply's summary was not recorded: {failure!r}")


def apply_json(row: ApplyRow) -> dict[str, Any]:
    """One apply's summary, as ``/api/v1/applies`` shows it."""
    return {
        "id": row.id,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "actor": row.actor,
        "source": row.source,
        "outcome": row.outcome,
        "plan_file": row.plan_file,
        "plan_hash": row.plan_hash,
        "pending": row.pending,
        "counts": json.loads(row.counts),
        "applied": json.loads(row.applied),
        "serial": row.serial,
        "error": row.error,
    }


@dataclass(frozen=True)
class ApplyHistory:
    """The newest applies (newest first) and the state's serial now (the revision of
    the applied configuration: bumped by every change an apply commits)."""

    serial: int
    applies: list[dict[str, Any]]

    @property
    def last(self) -> dict[str, Any] | None:
        return self.applies[0] if self.applies else None

    def to_json(self) -> list[dict[str, Any]]:
        return self.applies


def apply_history(ctx: Context, *, limit: int = 20) -> ApplyHistory:
    """The newest ``limit`` (1 to :data:`MAX_HISTORY`) applies' summaries."""
    if not 1 <= limit <= MAX_HISTORY:
        raise UsageError(message=f"limit must be from 1 to {MAX_HISTORY}, not {limit}")
    rows = applies_table.recent_applies(ctx.engine, limit=limit)
    return ApplyHistory(ensure_meta(ctx.engine).serial, [apply_json(row) for row in rows])


def _iso(value: datetime) -> str:
    """A stored time as ISO 8601 in UTC (SQLite hands it back without its zone)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


def _apply(
    ctx: Context,
    attempt: _Attempt,
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
            attempt.plan = plan
        else:
            plan = make_plan(ctx, targets=targets, refresh_only=refresh_only)
            attempt.plan = plan
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
            attempt.report.serial = plan.binding.serial
            attempt.report.schedules = sync_schedules(ctx.engine, ctx.inventory)
            return ApplyOutcome(plan, attempt.report)
        report = apply_plan(ctx, plan, path=shown_as, on_change=on_change, report=attempt.report)
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
    report: ApplyReport | None = None,
) -> ApplyReport:
    """Carry out ``plan``; the caller holds the state lock (:func:`costor.db.state.state_lock`).
    ``report`` (a new one by default) is filled as the changes are carried out, so a
    caller still has what was done when a change fails."""
    check_applyable(plan)
    check_fresh(ctx, plan, path=path)
    desired = {r.address: r.attributes for r in desired_resources(ctx.inventory)}
    report = report if report is not None else ApplyReport()
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
