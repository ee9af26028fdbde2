"""costor.ops.maintenance.site: pausing a site's jobs, called without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import local_tables, site_table, write_tables

from costor.errors import UnknownResource, UsageError
from costor.ops.context import Context
from costor.ops.maintenance.site import MaintenanceOutcome, SiteMaintenance, maintenance


def test_on_off_and_show(applied: Site) -> None:
    ctx = Context(applied.inventory)
    assert maintenance(ctx) == MaintenanceOutcome(
        sites=[SiteMaintenance(site="hq", maintenance=False, by_inventory=False, reason=None)]
    )
    on = maintenance(ctx, on=True, reason="disk swap")  # the only site
    assert on.to_json() == {
        "sites": [{"site": "hq", "maintenance": True, "by_inventory": False, "reason": "disk swap"}]
    }
    assert maintenance(ctx).sites[0].reason == "disk swap"
    off = maintenance(ctx, on=False, site="hq", reason="ignored when off")
    assert off.sites == [SiteMaintenance("hq", False, False, None)]
    with pytest.raises(UnknownResource, match="site"):
        maintenance(ctx, on=True, site="nowhere")


def test_several_sites_need_one_named(tmp_path: Path, source: Path) -> None:
    inventory = write_tables(
        tmp_path, *local_tables({"alpha": [source]}), site_table("dr", "maintenance = true")
    )
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    ctx = Context(inventory)
    with pytest.raises(UsageError, match="several sites are declared: name one with --site"):
        maintenance(ctx, on=True)
    shown = maintenance(ctx, on=True, site="hq").to_json()["sites"]
    assert shown == [
        {
            "site": "dr",
            "maintenance": True,
            "by_inventory": True,
            "reason": "maintenance = true in the inventory",
        },
        {"site": "hq", "maintenance": True, "by_inventory": False, "reason": None},
    ]
