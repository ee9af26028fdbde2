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
from typing import TYPE_CHECKING, Any

from costor.db import schedules as db_schedules
from costor.db.models import ScheduleRow
from costor.db.session import session_scope
from costor.ops.jobs.kinds import JOB_KINDS
from costor.util.clock import utcnow
from costor.util.cron import next_time

if TYPE_CHECKING:
    from costor.config.model import Inventory
    from costor.db.session import Engine


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


def sync_schedules(engine: Engine, inventory: Inventory) -> dict[str, list[str]]:
    """Make the schedules table match the inventory; returns the keys added, changed
    and removed."""
    now = utcnow()
    changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    with session_scope(engine) as session:
        # Only what exists in the state: a client or pool whose creation failed has none.
        clients, pools = db_schedules.schedule_targets(session)
        present = {"client": clients, "pool": pools}  # by what a kind's target names
        wanted = {
            d.key: d
            for d in desired_schedules(inventory)
            if d.target in present[JOB_KINDS[d.kind].target]
        }
        existing: dict[str, ScheduleRow] = db_schedules.schedules_by_key(session)
        for key, old in existing.items():
            if key not in wanted:
                session.delete(old)
                changes["removed"].append(key)
        if changes["removed"]:  # their queued runs go too
            db_schedules.cancel_queued_runs(session, changes["removed"], now)
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
