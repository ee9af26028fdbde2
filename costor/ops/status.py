"""``costor status``: per client, the last good backup and its age against the policy's
RPO, the last check of its pool and its last self-test; a worst-of health.

Health, per client: ``critical`` when the last self-test or the last check of its pool
failed, or it has no good backup within its RPO; ``warning`` when its last backup job
failed but a snapshot is still within the RPO, or it was never checked or self-tested
although its policy schedules it; else ``ok``. A client without a policy is ``ok`` with
no RPO. A client whose working inventory differs from what was applied says so
(``unapplied``, and a ``warning``): it keeps running as applied until ``costor apply``.
The site's health is the worst of its clients'.

The whole installation's health is also ``critical`` when no ``costor serve`` has beaten
its heartbeat within a minute while schedules exist (nothing would run them), and
``warning`` when the working inventory does not validate (the site runs what was
applied; the next ``costor apply`` will fail until it is fixed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from costor.config.model import duration_seconds
from costor.db import catalogue, clients, instances
from costor.db import jobs as job_history
from costor.db import schedules as db_schedules
from costor.db.session import session_scope
from costor.ops.context import Context
from costor.ops.maintenance.site import maintenance_reasons
from costor.util.clock import utcnow
from costor.util.cron import interval

LEVELS = ("ok", "warning", "critical")


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class _Facts:
    """What status reads from the state, in one read transaction."""

    former_names: dict[str, list[str]]
    latest_snapshot: dict[str, datetime]
    last_job: dict[tuple[str, str], Any]
    counts: dict[str, int]
    instances: list[Any]
    schedules: int


@dataclass(frozen=True)
class StatusReport:
    """``costor status``: the installation's health, then each site's and each client's
    (their documents as ``costor status --json`` shows them), the queue and the live
    ``costor serve`` instances."""

    health: str
    problems: list[str]
    inventory: dict[str, Any]  # valid, errors, unapplied
    sites: list[dict[str, Any]]
    clients: list[dict[str, Any]]
    jobs: dict[str, int]  # queued, running
    instances: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "health": self.health,
            "problems": self.problems,
            "inventory": self.inventory,
            "sites": self.sites,
            "clients": self.clients,
            "jobs": self.jobs,
            "instances": self.instances,
        }


def status(ctx: Context) -> StatusReport:
    now = utcnow()
    facts = _read_facts(ctx)
    unapplied = ctx.unapplied_changes()
    clients = [
        _client_status(ctx, name, facts, unapplied.get(f"client.{name}"), now)
        for name in sorted(ctx.inventory.clients)
    ]
    paused = maintenance_reasons(ctx)
    sites = []
    for site in sorted(ctx.inventory.sites):
        mine = [c for c in clients if c["site"] == site]
        site_health = max((str(c["health"]) for c in mine), key=LEVELS.index, default="ok")
        sites.append(
            {
                "site": site,
                "maintenance": site in paused,
                "maintenance_reason": paused.get(site),
                "health": site_health,
            }
        )
    alive = [
        {
            "id": i.id,
            "hostname": i.hostname,
            "pid": i.pid,
            "started_at": i.started_at.isoformat(),
            "heartbeat_at": i.heartbeat_at.isoformat(),
            "stopping": i.stopping,
        }
        for i in facts.instances
        if (now - (_aware(i.heartbeat_at) or now)).total_seconds() < 60
    ]
    site_problems = _site_problems(ctx, alive, facts)
    levels = [str(s["health"]) for s in sites] + [level for level, _ in site_problems]
    return StatusReport(
        health=max(levels, key=LEVELS.index, default="ok"),
        problems=[message for _level, message in site_problems],
        inventory={
            "valid": not ctx.working_problems,
            "errors": [str(d) for d in ctx.working_problems],
            "unapplied": unapplied,
        },
        sites=sites,
        clients=clients,
        jobs={"queued": facts.counts["queued"], "running": facts.counts["running"]},
        instances=alive,
    )


def _read_facts(ctx: Context) -> _Facts:
    with session_scope(ctx.engine, write=False) as session:
        former = {r.name: json.loads(r.former_names) for r in clients.client_rows(session)}
        latest = catalogue.latest_snapshot_times(session)
        last_job = job_history.last_outcomes(session)
        counts = job_history.count_by_state(session, "queued", "running")
        alive = instances.all_instances(session)
        schedules = db_schedules.count_schedules(session)
    return _Facts(
        former_names=former,
        latest_snapshot={client: _parse_time(time) for client, time in latest.items()},
        last_job=last_job,
        counts=counts,
        instances=alive,
        schedules=schedules,
    )


def _job_doc(job: Any) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "id": job.id,
        "state": job.state,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "error": job.error,
    }


def _client_status(
    ctx: Context, name: str, facts: _Facts, change: str | None, now: datetime
) -> dict[str, Any]:
    client = ctx.inventory.clients[name]
    names = [name, *facts.former_names.get(name, [])]
    times = [facts.latest_snapshot[n] for n in names if n in facts.latest_snapshot]
    last = max(times) if times else None
    policy = ctx.inventory.policies.get(client.policy) if client.policy else None
    rpo = _rpo(policy, now)
    age = (now - last) if last else None
    backup_job = facts.last_job.get(("backup", name))
    check_job = facts.last_job.get(("check", client.pool))
    selftest_job = facts.last_job.get(("selftest", name))
    problems = _client_problems(
        client, policy, rpo, age, backup_job, check_job, selftest_job, change
    )
    health = max((level for level, _ in problems), key=LEVELS.index, default="ok")
    return {
        "client": name,
        "site": client.site,
        "pool": client.pool,
        "policy": client.policy,
        "last_backup": last.isoformat() if last else None,
        "age_s": round(age.total_seconds()) if age is not None else None,
        "rpo_s": round(rpo.total_seconds()) if rpo is not None else None,
        "last_backup_job": _job_doc(backup_job),
        "last_check": _job_doc(check_job),
        "last_selftest": _job_doc(selftest_job),
        "unapplied": change,
        "health": health,
        "problems": [message for _level, message in problems],
    }


def _rpo(policy: Any, now: datetime) -> timedelta | None:
    if policy is None:
        return None
    if policy.rpo:
        return timedelta(seconds=duration_seconds(policy.rpo))
    return 2 * interval(policy.schedule, now)


def _client_problems(
    client: Any,
    policy: Any,
    rpo: timedelta | None,
    age: timedelta | None,
    backup_job: Any,
    check_job: Any,
    selftest_job: Any,
    change: str | None,
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if rpo is not None and (age is None or age > rpo):
        late = (
            "no backup yet"
            if age is None
            else f"last good backup {_human(age)} ago, RPO {_human(rpo)}"
        )
        problems.append(("critical", late))
    if backup_job is not None and backup_job.state == "failed":
        problems.append(("warning", f"last backup job failed: {backup_job.error}"))
    if selftest_job is not None and selftest_job.state == "failed":
        problems.append(("critical", f"last self-test failed: {selftest_job.error}"))
    if check_job is not None and check_job.state == "failed":
        problems.append(("critical", f"last check of pool {client.pool} failed"))
    if policy is not None and policy.check is not None and check_job is None:
        problems.append(("warning", f"pool {client.pool} never checked"))
    if policy is not None and policy.selftest is not None and selftest_job is None:
        problems.append(("warning", "never self-tested"))
    if change is not None:
        what = "removal" if change == "removed" else "changes"
        problems.append(
            (
                "warning",
                f"the inventory has unapplied {what} of this client: it runs as applied "
                "until `costor apply`",
            )
        )
    return problems


def _site_problems(ctx: Context, alive: list[Any], facts: _Facts) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    queued = facts.counts["queued"]
    if not alive:
        waiting = (
            f"{facts.schedules} schedule(s) and {queued} queued job(s) wait"
            if facts.schedules
            else f"{queued} queued job(s) wait"
        )
        problems.append(
            (
                "critical" if facts.schedules else "warning",
                f"no `costor serve` is running (no heartbeat in the last 60 s): {waiting}",
            )
        )
    if ctx.working_problems:
        problems.append(
            (
                "warning",
                f"{ctx.inventory_path} does not validate ({len(ctx.working_problems)} "
                "error(s), `costor validate` shows them): the site runs the applied "
                "configuration",
            )
        )
    return problems


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds}s"
