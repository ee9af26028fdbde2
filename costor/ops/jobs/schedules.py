"""Schedules derived from the inventory, kept in the state by ``costor apply``.

One row per recurring job (times are UTC, like cron on a UTC server):

- ``backup:CLIENT`` from the client's policy ``schedule`` (a ``forget`` follows each
  successful scheduled backup when the policy has a ``retention``);
- ``selftest:CLIENT`` from the policy's ``selftest.schedule``;
- ``check:POOL:POLICY`` from the ``check`` of a policy any client of the pool uses;
- ``prune:POOL`` from the pool's ``prune.schedule``.

A retired client (removed from the inventory) has no schedule. A schedule whose cron
is unchanged keeps its next run; a new or changed one starts from now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from costor.ops.context import utcnow

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from costor.config.model import Inventory


@dataclass(frozen=True)
class Desired:
    key: str
    kind: str
    target: str
    site: str | None
    cron: str
    params: dict[str, Any]


def desired_schedules(inventory: Inventory) -> list[Desired]:
    found: dict[str, Desired] = {}
    for name, client in sorted(inventory.clients.items()):
        policy = inventory.policies.get(client.policy) if client.policy else None
        if policy is None:
            continue
        found[f"backup:{name}"] = Desired(
            f"backup:{name}", "backup", name, client.site, policy.schedule, {}
        )
        if policy.selftest is not None:
            found[f"selftest:{name}"] = Desired(
                f"selftest:{name}",
                "selftest",
                name,
                client.site,
                policy.selftest.schedule,
                {"files": policy.selftest.files},
            )
        if policy.check is not None:
            key = f"check:{client.pool}:{policy.name}"
            params = {"read_data_subset": policy.check.read_data_subset}
            site = inventory.pools[client.pool].site
            found[key] = Desired(key, "check", client.pool, site, policy.check.schedule, params)
    for name, pool in sorted(inventory.pools.items()):
        if pool.prune.schedule is not None:
            found[f"prune:{name}"] = Desired(
                f"prune:{name}", "prune", name, pool.site, pool.prune.schedule, {}
            )
    return list(found.values())


def next_time(cron: str, after: datetime) -> datetime:
    from croniter import croniter

    return croniter(cron, after).get_next(datetime)


def interval(cron: str, after: datetime | None = None) -> timedelta:
    """The time between two consecutive runs of ``cron`` (the next two after ``after``)."""
    start = next_time(cron, after or utcnow())
    return next_time(cron, start) - start


def sync_schedules(engine: Engine, inventory: Inventory) -> dict[str, list[str]]:
    """Make the schedules table match the inventory; returns the keys added, changed
    and removed."""
    from sqlmodel import col, select, update

    from costor.db.models import ClientRow, JobRow, PoolRow, ScheduleRow
    from costor.db.session import session_scope

    now = utcnow()
    changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    with session_scope(engine) as session:
        # Only what exists in the state: a client or pool whose creation failed has none.
        clients = set(
            session.exec(select(ClientRow.name).where(col(ClientRow.retired_at).is_(None))).all()
        )
        pools = set(session.exec(select(PoolRow.name)).all())
        wanted = {
            d.key: d
            for d in desired_schedules(inventory)
            if (d.target in clients if d.kind in ("backup", "selftest") else d.target in pools)
        }
        existing: dict[str, ScheduleRow] = {
            r.key: r for r in session.exec(select(ScheduleRow)).all()
        }
        for key, old in existing.items():
            if key not in wanted:
                session.delete(old)
                changes["removed"].append(key)
        if changes["removed"]:  # their queued runs go too
            session.execute(
                update(JobRow)
                .where(
                    col(JobRow.schedule_key).in_(changes["removed"]),
                    col(JobRow.state) == "queued",
                )
                .values(state="cancelled", finished_at=now, error="its schedule was removed")
            )
        for key, desired in wanted.items():
            params = json.dumps(desired.params, sort_keys=True)
            row = existing.get(key)
            if row is None:
                row = ScheduleRow(
                    key=key,
                    kind=desired.kind,
                    target=desired.target,
                    site=desired.site,
                    cron=desired.cron,
                    params=params,
                    next_run=next_time(desired.cron, now),
                    updated_at=now,
                )
                changes["added"].append(key)
            elif (row.cron, row.site, row.params) != (desired.cron, desired.site, params):
                if row.cron != desired.cron:
                    row.next_run = next_time(desired.cron, now)
                row.cron, row.site, row.params, row.updated_at = (
                    desired.cron,
                    desired.site,
                    params,
                    now,
                )
                changes["changed"].append(key)
            else:
                continue
            session.add(row)
    return changes
