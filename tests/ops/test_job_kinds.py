"""costor.ops.jobs.kinds and costor.ops.jobs.requests: the table of job kinds, and queueing
and listing jobs, called without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import local_pool, local_tables, site_table, write_tables

from costor.errors import CostorError, UnknownResource, UsageError
from costor.ops.context import Context
from costor.ops.jobs.kinds import JOB_KINDS, KINDS, execute, job_kind, site_of
from costor.ops.jobs.requests import JobQueued, job_history, queue_job


def test_the_kinds_and_what_their_targets_name() -> None:
    assert KINDS == ("backup", "forget", "prune", "check", "selftest", "restore")
    assert {name: kind.target for name, kind in JOB_KINDS.items()} == {
        "backup": "client",
        "forget": "client",
        "prune": "pool",
        "check": "pool",
        "selftest": "client",
        "restore": "client",  # the client whose machine receives the files
    }
    assert job_kind("prune").address("main") == "pool.main"
    assert job_kind("backup").address("alpha") == "client.alpha"
    with pytest.raises(CostorError, match="unknown job kind 'defrag'"):
        job_kind("defrag")


def test_site_of_a_target(tmp_path: Path, source: Path) -> None:
    inventory = write_tables(
        tmp_path,
        *local_tables({"alpha": [source]}),
        site_table("dr"),
        local_pool("far", site="dr", path="far", pack_size_mib=None),
    )
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    ctx = Context(inventory)
    assert site_of(ctx, "backup", "alpha") == "hq"
    assert site_of(ctx, "check", "far") == "dr"
    with pytest.raises(UnknownResource, match="client"):
        site_of(ctx, "selftest", "far")  # a pool is not a client
    with pytest.raises(UnknownResource, match="pool"):
        site_of(ctx, "prune", "alpha")


def test_execute_runs_a_kind_and_returns_its_report(applied: Site) -> None:
    ctx = Context(applied.inventory)
    backup = execute(ctx, "backup", "alpha", {})
    assert backup["client"] == "alpha" and backup["snapshot_id"]
    check = execute(ctx, "check", "main", {"read_data_subset": "50%"})
    assert check["ok"] is True and check["snapshots"] == 1
    with pytest.raises(CostorError, match="unknown job kind 'defrag'"):
        execute(ctx, "defrag", "main", {})


def test_queue_a_job_and_list_the_history(applied: Site) -> None:
    ctx = Context(applied.inventory)
    assert job_history(ctx).to_json() == []
    first = queue_job(ctx, kind="backup", target="alpha")
    second = queue_job(ctx, kind="prune", target="main")
    assert first == JobQueued(id=first.id, kind="backup", target="alpha")
    assert second.to_json() == {
        "id": second.id,
        "kind": "prune",
        "target": "main",
        "state": "queued",
    }
    history = job_history(ctx).to_json()
    assert [(d["id"], d["kind"], d["site"], d["state"], d["trigger"]) for d in history] == [
        (second.id, "prune", "hq", "queued", "manual"),
        (first.id, "backup", "hq", "queued", "manual"),
    ]
    assert [d["id"] for d in job_history(ctx, kind="backup").jobs] == [first.id]
    assert len(job_history(ctx, limit=1).jobs) == 1
    with pytest.raises(UnknownResource):
        queue_job(ctx, kind="backup", target="nobody")


def test_a_restore_job_needs_its_snapshot_and_target_before_it_is_queued(applied: Site) -> None:
    ctx = Context(applied.inventory)
    with pytest.raises(UsageError, match="needs a snapshot and a target"):
        queue_job(ctx, kind="restore", target="alpha")  # as `costor jobs add restore alpha`
    with pytest.raises(UsageError, match="absolute directory"):
        queue_job(ctx, kind="restore", target="alpha", params={"snapshot": "x", "target": "."})
    queued = queue_job(
        ctx, kind="restore", target="alpha", params={"snapshot": "x", "target": "/srv//back/"}
    )
    [job] = job_history(ctx, kind="restore").jobs
    assert job["id"] == queued.id and job["max_attempts"] == 1
    assert job["params"] == {
        "snapshot": "x",
        "target": "/srv/back",
        "path": "/",
        "include": [],
        "exclude": [],
    }
