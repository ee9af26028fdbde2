"""``costor maintenance``: pause a site's jobs (running ones finish, no new ones
start) or resume them, and show which sites are paused and why.

(Named for the site, not ``maintenance``: forget, prune, check and self-test are the
pools' maintenance, a different subject.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from costor.errors import UsageError
from costor.ops.context import Context
from costor.ops.serve import maintenance_reasons, set_maintenance


@dataclass(frozen=True)
class SiteMaintenance:
    """One site: whether it is in maintenance, whether its inventory says so, and the
    reason given."""

    site: str
    maintenance: bool
    by_inventory: bool
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "maintenance": self.maintenance,
            "by_inventory": self.by_inventory,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class MaintenanceOutcome:
    """Every declared site, by name."""

    sites: list[SiteMaintenance]

    def to_json(self) -> dict[str, Any]:
        return {"sites": [site.to_json() for site in self.sites]}


def maintenance(
    ctx: Context, *, on: bool | None = None, site: str | None = None, reason: str | None = None
) -> MaintenanceOutcome:
    """With ``on`` (True: on, False: off), put ``site`` (default: the only declared
    site) in maintenance or take it out, ``reason`` shown by status; then the state of
    every site."""
    if on is not None:
        if site is None:
            if len(ctx.inventory.sites) != 1:
                raise UsageError(message="several sites are declared: name one with --site")
            [site] = ctx.inventory.sites
        set_maintenance(ctx, site, on, reason)
    paused = maintenance_reasons(ctx)
    declared = {name for name, entry in ctx.inventory.sites.items() if entry.maintenance}
    return MaintenanceOutcome(
        sites=[
            SiteMaintenance(
                site=name,
                maintenance=name in paused,
                by_inventory=name in declared,
                reason=paused.get(name),
            )
            for name in sorted(ctx.inventory.sites)
        ]
    )
