"""``costor maintenance``: pause a site's jobs (running ones finish, no new ones
start) or resume them, and show which sites are paused and why. The daemon asks
:func:`maintenance_sites` before it claims a job.

(Named for the site, not ``maintenance``: forget, prune, check and self-test are the
pools' maintenance, a different subject.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from costor.db import sites as db_sites
from costor.errors import UnknownResource, UsageError
from costor.ops.audit import audited
from costor.ops.context import Context


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


def maintenance_sites(ctx: Context) -> set[str]:
    """Sites in maintenance: ``maintenance = true`` in the applied inventory, or
    ``costor maintenance on``."""
    return set(maintenance_reasons(ctx))


def maintenance_reasons(ctx: Context) -> dict[str, str | None]:
    """Sites in maintenance -> the reason given (``costor maintenance on --reason``),
    or a note that the inventory says so."""
    sites: dict[str, str | None] = {
        name: "maintenance = true in the inventory"
        for name, site in ctx.inventory.sites.items()
        if site.maintenance
    }
    for site, reason in db_sites.paused_sites(ctx.engine).items():
        sites[site] = reason or sites.get(site)
    return sites


def set_maintenance(ctx: Context, site: str, on: bool, reason: str | None = None) -> None:
    if site not in ctx.inventory.sites:
        raise UnknownResource(kind="site", name=site)
    action = "maintenance.on" if on else "maintenance.off"
    with audited(ctx, action, f"site:{site}", detail={"reason": reason} if on else None):
        db_sites.set_maintenance(ctx.engine, site, on, reason)
