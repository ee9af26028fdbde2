"""costor.ops.control.plan's saved plans: written signed under the state's key, read back only
when made against this state and unchanged. Called without the CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import write_local_inventory

from costor.errors import PlanFileInvalid, PlanForeign, UsageError
from costor.ops.context import Context
from costor.ops.control.plan import make_plan, read_plan_file, write_plan_file


def planning(site: Site) -> Context:
    return Context(site.inventory, resolve_secrets=True, configuration="working")


def test_a_written_plan_reads_back_the_same(site: Site, tmp_path: Path) -> None:
    ctx = planning(site)
    plan = make_plan(ctx)
    path = tmp_path / "saved.plan"
    write_plan_file(ctx, plan, path=str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    assert read_plan_file(ctx, path=str(path)).to_json() == plan.to_json()


def test_a_changed_plan_file_is_refused(site: Site, tmp_path: Path) -> None:
    ctx = planning(site)
    path = tmp_path / "saved.plan"
    write_plan_file(ctx, make_plan(ctx), path=str(path))
    body = json.loads(path.read_text())
    body["plan"]["resource_changes"][0]["reason"] = "edited by hand"
    path.write_text(json.dumps(body))
    with pytest.raises(PlanFileInvalid, match="signature does not match"):
        read_plan_file(ctx, path=str(path))
    with pytest.raises(PlanFileInvalid):
        read_plan_file(ctx, path=str(tmp_path / "missing.plan"))


def test_a_plan_of_another_state_is_foreign(site: Site, tmp_path: Path, source: Path) -> None:
    other_root = tmp_path / "other"
    other_root.mkdir()
    other = Site(
        other_root, write_local_inventory(other_root, {"alpha": [source]}), other_root / "pool"
    )
    path = tmp_path / "other.plan"
    other_ctx = planning(other)
    write_plan_file(other_ctx, make_plan(other_ctx), path=str(path))
    with pytest.raises(PlanForeign):
        read_plan_file(planning(site), path=str(path))


def test_an_unwritable_plan_file_is_a_usage_error(site: Site, tmp_path: Path) -> None:
    ctx = planning(site)
    with pytest.raises(UsageError, match="cannot write the plan file"):
        write_plan_file(ctx, make_plan(ctx), path=str(tmp_path / "no-such-dir" / "p.plan"))
