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
from datetime import datetime, timedelta
from typing import Any

from costor.ops.context import Context, utcnow

LEVELS = ("ok", "warning", "critical")


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def status(ctx: Context) -> dict[str, Any]:
    from sqlmodel import col, select

    from costor.config.model import duration_seconds
    from costor.db.models import ClientRow, InstanceRow, JobRow, ScheduleRow, SnapshotRow
    from costor.db.session import session_scope
    from costor.ops.schedules import interval
    from costor.ops.serve import maintenance_reasons

    now = utcnow()
    inventory = ctx.inventory
    with session_scope(ctx.engine, write=False) as session:
        rows = {r.name: r for r in session.exec(select(ClientRow)).all()}
        snapshots = session.exec(select(SnapshotRow.client, SnapshotRow.time)).all()
        finished = session.exec(
            select(JobRow)
            .where(col(JobRow.state).in_(("succeeded", "failed")))
            .order_by(col(JobRow.finished_at))
        ).all()
        queued = session.exec(select(JobRow).where(col(JobRow.state) == "queued")).all()
        running = session.exec(select(JobRow).where(col(JobRow.state) == "running")).all()
        instances = session.exec(select(InstanceRow)).all()
        scheduled = session.exec(select(ScheduleRow.key)).all()
    unapplied = ctx.unapplied_changes()
    latest_snapshot: dict[str, datetime] = {}
    for taken_by, time in snapshots:
        when = _parse_time(time)
        if taken_by not in latest_snapshot or when > latest_snapshot[taken_by]:
            latest_snapshot[taken_by] = when
    last_job: dict[tuple[str, str], Any] = {}
    for job in finished:  # oldest first: the last one wins
        last_job[(job.kind, job.target)] = job

    def job_doc(job: Any) -> dict[str, Any] | None:
        if job is None:
            return None
        return {
            "id": job.id,
            "state": job.state,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "error": job.error,
        }

    clients: list[dict[str, Any]] = []
    for name in sorted(inventory.clients):
        client = inventory.clients[name]
        row = rows.get(name)
        names = [name, *(json.loads(row.former_names) if row else [])]
        times = [latest_snapshot[n] for n in names if n in latest_snapshot]
        last = max(times) if times else None
        policy = inventory.policies.get(client.policy) if client.policy else None
        rpo: timedelta | None = None
        if policy is not None:
            rpo = (
                timedelta(seconds=duration_seconds(policy.rpo))
                if policy.rpo
                else 2 * interval(policy.schedule, now)
            )
        age = (now - last) if last else None
        backup_job = last_job.get(("backup", name))
        check_job = last_job.get(("check", client.pool))
        selftest_job = last_job.get(("selftest", name))
        problems: list[tuple[str, str]] = []
        if rpo is not None and (age is None or age > rpo):
            problems.append(
                (
                    "critical",
                    "no backup yet"
                    if age is None
                    else f"last good backup {_human(age)} ago, RPO {_human(rpo)}",
                )
            )
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
        change = unapplied.get(f"client.{name}")
        if change is not None:
            problems.append(
                (
                    "warning",
                    f"the inventory has unapplied {'removal' if change == 'removed' else 'changes'}"
                    " of this client: it runs as applied until `costor apply`",
                )
            )
        health = max((level for level, _ in problems), key=LEVELS.index, default="ok")
        clients.append(
            {
                "client": name,
                "site": client.site,
                "pool": client.pool,
                "policy": client.policy,
                "last_backup": last.isoformat() if last else None,
                "age_s": round(age.total_seconds()) if age is not None else None,
                "rpo_s": round(rpo.total_seconds()) if rpo is not None else None,
                "last_backup_job": job_doc(backup_job),
                "last_check": job_doc(check_job),
                "last_selftest": job_doc(selftest_job),
                "unapplied": change,
                "health": health,
                "problems": [message for _level, message in problems],
            }
        )
    paused = maintenance_reasons(ctx)
    sites = []
    for site in sorted(inventory.sites):
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
        for i in instances
        if (now - (_aware(i.heartbeat_at) or now)).total_seconds() < 60
    ]
    site_problems: list[tuple[str, str]] = []
    if not alive:
        site_problems.append(
            (
                "critical" if scheduled else "warning",
                "no `costor serve` is running (no heartbeat in the last 60 s): "
                + (
                    f"{len(scheduled)} schedule(s) and {len(queued)} queued job(s) wait"
                    if scheduled
                    else f"{len(queued)} queued job(s) wait"
                ),
            )
        )
    if ctx.working_problems:
        site_problems.append(
            (
                "warning",
                f"{ctx.inventory_path} does not validate ({len(ctx.working_problems)} "
                "error(s), `costor validate` shows them): the site runs the applied "
                "configuration",
            )
        )
    levels = [str(s["health"]) for s in sites] + [level for level, _ in site_problems]
    return {
        "health": max(levels, key=LEVELS.index, default="ok"),
        "problems": [message for _level, message in site_problems],
        "inventory": {
            "valid": not ctx.working_problems,
            "errors": [str(d) for d in ctx.working_problems],
            "unapplied": unapplied,
        },
        "sites": sites,
        "clients": clients,
        "jobs": {"queued": len(queued), "running": len(running)},
        "instances": alive,
    }


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds}s"
