"""costor forget end to end: real pools, the real CLI, SQLite or PostgreSQL.

Manifests are content-addressed, so a snapshot's time cannot be rewritten: extra
snapshots with chosen times are saved through the store API, pointing at the tree of a
real backup, and recorded in the catalogue as a backup would record them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Site, tree_digest
from support.inventory import BASE_TABLES, client_table, rewrite_tables, write_tables

from costor.ops.context import Context

NIGHTLY = "{ last = 1, daily = 3, weekly = 3 }"

# Newest first after the real backup (taken now): 03-16T10 is daily 2020-03-16 and
# weekly 2020-W12, 03-09 daily 2020-03-09 and weekly 2020-W11; the rest goes.
OLD_TIMES = [
    "2020-03-02T02:00:00.000000Z",
    "2020-03-03T02:00:00.000000Z",
    "2020-03-03T14:00:00.000000Z",
    "2020-03-09T02:00:00.000000Z",
    "2020-03-16T02:00:00.000000Z",
    "2020-03-16T10:00:00.000000Z",
]
KEPT_OLD = {"2020-03-16T10:00:00.000000Z", "2020-03-09T02:00:00.000000Z"}


def tables(clients: dict[str, tuple[Path, str | None]], *, nightly: bool = True) -> list[str]:
    """The base site and pool, the policies, and local clients ``{name: (path, policy)}``."""
    policies = ['[policies.keepall]\nschedule = "0 3 * * *"\n']
    if nightly:
        policies.insert(0, f'[policies.nightly]\nschedule = "0 2 * * *"\nretention = {NIGHTLY}\n')
    return [
        *BASE_TABLES,
        *policies,
        *(
            client_table(name, [path], *([f'policy = "{policy}"'] if policy else []))
            for name, (path, policy) in clients.items()
        ),
    ]


def rewrite(site: Site, clients: dict[str, tuple[Path, str | None]], **options: Any) -> None:
    rewrite_tables(site.inventory, *tables(clients, **options))  # the same [costor] table


@pytest.fixture
def retention_site(tmp_path: Path, source: Path) -> Site:
    inventory = write_tables(
        tmp_path,
        *tables(
            {"alpha": (source, "nightly"), "beta": (source, "keepall"), "gamma": (source, None)}
        ),
    )
    site = Site(tmp_path, inventory, tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    return site


def backup_with_history(site: Site, client: str, times: list[str]) -> tuple[str, list[str]]:
    """One real backup of ``client``, then a snapshot of the same tree at each time."""
    backup = site.cli("backup", client, "--json")
    assert backup.code == 0, backup.stderr
    real = backup.json()["snapshot_id"]
    ctx = Context(site.inventory)
    try:
        pool = ctx.open_pool("main", load_index=False)
        base = pool.load_snapshot(real)
        ids = []
        for time in times:
            old = dataclasses.replace(base, time=time, parent=None, counters={}, id="")
            pool.save_snapshot(old)
            ctx.record_snapshot(pool, old, {})
            ids.append(old.id)
    finally:
        ctx.engine.dispose()
    return real, ids


def listed(site: Site, *args: str) -> dict[str, str]:
    """id -> time of ``costor snapshots --json``."""
    result = site.cli("snapshots", "--json", *args)
    assert result.code == 0, result.stderr
    return {s["id"]: s["time"] for s in result.json()}


def catalogue(site: Site) -> set[str]:
    return {row[0] for row in site.sql("SELECT id FROM snapshots")}


def by_client(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["client"]: c for c in document["clients"]}


def test_dry_run_then_forget(retention_site: Site, source: Path, tmp_path: Path) -> None:
    site = retention_site
    real, old = backup_with_history(site, "alpha", OLD_TIMES)
    beta_real, beta_old = backup_with_history(site, "beta", OLD_TIMES[:2])
    gamma = site.cli("backup", "gamma", "--json").json()["snapshot_id"]
    time_of = {**dict(zip(old, OLD_TIMES, strict=True)), **listed(site)}
    expected_removed = {sid for sid in old if time_of[sid] not in KEPT_OLD}
    before = listed(site)
    assert len(before) == 7 + 3 + 1

    dry = site.cli("forget", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    report = dry.json()
    assert report["dry_run"] is True and report["ok"] is True
    assert report["total"] == {"kept": 7, "removed": 4}
    clients = by_client(report)
    alpha = clients["alpha"]
    assert alpha["policy"] == "nightly" and alpha["retired"] is False
    assert alpha["retention"] == {"last": 1, "daily": 3, "weekly": 3}
    assert {r["id"] for r in alpha["removed"]} == expected_removed
    assert [k["id"] for k in alpha["kept"]][0] == real  # newest first
    reasons = {k["time"]: k["reasons"] for k in alpha["kept"]}
    assert reasons["2020-03-16T10:00:00.000000Z"] == [
        "daily snapshot (2020-03-16)",
        "weekly snapshot (2020-W12)",
    ]
    assert reasons["2020-03-09T02:00:00.000000Z"] == [
        "daily snapshot (2020-03-09)",
        "weekly snapshot (2020-W11)",
    ]
    assert reasons[time_of[real]][0] == "last snapshot"
    assert clients["beta"]["keep_all"] == "policy 'keepall' has no retention"
    assert {k["id"] for k in clients["beta"]["kept"]} == {beta_real, *beta_old}
    assert clients["beta"]["removed"] == []
    assert clients["gamma"]["keep_all"] == "the client has no policy"
    assert [k["id"] for k in clients["gamma"]["kept"]] == [gamma]
    assert listed(site) == before  # nothing removed
    assert catalogue(site) == set(before)

    human = site.cli("forget", "--dry-run", "--client", "alpha")
    assert human.code == 0, human.stderr
    assert "would remove 4 snapshot(s)" in human.stdout
    lines = {line.split()[0]: line for line in human.stdout.splitlines()[2:9]}
    for sid in expected_removed:
        assert " remove" in lines[sid[:12]]
    assert "daily snapshot (2020-03-09), weekly snapshot (2020-W11)" in human.stdout
    assert "client beta" not in human.stdout  # --client: only alpha

    done = site.cli("forget", "--json")
    assert done.code == 0, done.stderr
    assert done.json()["dry_run"] is False and done.json()["total"]["removed"] == 4
    after = listed(site)
    assert set(after) == set(before) - expected_removed
    assert catalogue(site) == set(after)
    on_disk = {p.name for p in (site.pool_path / "snapshots").iterdir()}
    assert on_disk == set(after)

    again = site.cli("forget")  # idempotent
    assert again.code == 0 and "removed 0 snapshot(s)" in again.stdout
    assert site.cli("check").code == 0

    kept_old = next(sid for sid in old if sid in after)
    target = tmp_path / "restored"
    restored = site.cli("restore", kept_old[:12], "--target", str(target))
    assert restored.code == 0, restored.stderr
    assert tree_digest(target / str(source).lstrip("/")) == tree_digest(source)


def test_retired_client_keeps_its_policy(retention_site: Site, source: Path) -> None:
    site = retention_site
    real, old = backup_with_history(site, "alpha", OLD_TIMES)
    rewrite(site, {"beta": (source, "keepall"), "gamma": (source, None)})
    assert site.cli("apply", "--auto-approve").code == 0  # alpha retired
    assert site.sql("SELECT policy FROM clients WHERE name = 'alpha'") == [("nightly",)]

    result = site.cli("forget", "--client", "alpha", "--json")
    assert result.code == 0, result.stderr
    [alpha] = result.json()["clients"]
    assert alpha["retired"] is True and alpha["policy"] == "nightly"
    assert len(alpha["removed"]) == 4
    assert set(listed(site, "--client", "alpha")) == {real} | {
        sid for sid, time in zip(old, OLD_TIMES, strict=True) if time in KEPT_OLD
    }
    human = site.cli("forget", "--dry-run")
    assert "client alpha (pool main, policy nightly, retired)" in human.stdout


def test_policy_no_longer_declared_keeps_everything(retention_site: Site, source: Path) -> None:
    site = retention_site
    backup_with_history(site, "alpha", OLD_TIMES[:3])
    # alpha retired, and no client uses nightly any more: the policy goes too.
    rewrite(site, {"beta": (source, "keepall")}, nightly=False)
    assert "nightly" not in site.inventory.read_text()
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("forget", "--client", "alpha", "--json")
    assert result.code == 0, result.stderr
    [alpha] = result.json()["clients"]
    assert alpha["keep_all"] == "policy 'nightly' is no longer declared"
    assert (len(alpha["kept"]), alpha["removed"]) == (4, [])
    assert len(listed(site, "--client", "alpha")) == 4


def test_renamed_client_forgets_snapshots_taken_under_its_old_name(
    retention_site: Site,
) -> None:
    site = retention_site
    real, old = backup_with_history(site, "alpha", OLD_TIMES)
    text = site.inventory.read_text().replace("[clients.alpha]", "[clients.omega]")
    site.inventory.write_text(text + '\n[[moved]]\nfrom = "client.alpha"\nto = "client.omega"\n')
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("forget", "--client", "omega", "--json")
    assert result.code == 0, result.stderr
    [omega] = result.json()["clients"]
    assert len(omega["removed"]) == 4 and len(omega["kept"]) == 3
    assert all(entry["taken_as"] == "alpha" for entry in omega["kept"] + omega["removed"])
    assert len(listed(site, "--client", "omega")) == 3


def test_unknown_client_and_one_not_applied_yet(retention_site: Site, source: Path) -> None:
    site = retention_site
    result = site.cli("forget", "--client", "nobody")
    assert result.code == 1
    assert "nobody" in result.stderr
    # Declared in a pool not initialised yet: no snapshots, nothing to do, no error.
    # Until applied it is not even considered: what runs is what was applied.
    site.inventory.write_text(
        site.inventory.read_text()
        + '\n[pools.other]\nsite = "hq"\nbackend = "local"\npath = "other"\n'
        + 'passphrase = { env = "COSTOR_TEST_PASSPHRASE" }\n\n'
        + '[clients.delta]\nsite = "hq"\npool = "other"\npolicy = "nightly"\n'
        + f"paths = [{json.dumps(str(source))}]\n"
    )
    result = site.cli("forget", "--json")
    assert result.code == 0, result.stderr
    assert "delta" not in by_client(result.json())
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("forget", "--json")
    assert result.code == 0, result.stderr
    delta = by_client(result.json())["delta"]
    assert (delta["kept"], delta["removed"], delta["errors"]) == ([], [], [])


def test_unreadable_manifest_blocks_its_client(retention_site: Site) -> None:
    site = retention_site
    _real, old = backup_with_history(site, "alpha", OLD_TIMES)
    _beta_real, beta_old = backup_with_history(site, "beta", OLD_TIMES[:1])
    before = listed(site)

    damaged = site.pool_path / "snapshots" / old[0]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0x01
    damaged.write_bytes(bytes(data))
    result = site.cli("forget", "--json")
    assert result.code == 1
    report = result.json()
    assert report["ok"] is False
    alpha = by_client(report)["alpha"]
    assert alpha["removed"] == [] and old[0][:12] in alpha["errors"][0]
    assert "alpha" in result.stderr and "nothing was removed" in result.stderr
    assert by_client(report)["beta"]["errors"] == []  # the catalogue says it is alpha's
    survivors = {p.name for p in (site.pool_path / "snapshots").iterdir()}
    assert survivors == set(before) | {old[0]}  # damaged one still there, nothing removed
    human = site.cli("forget", "--dry-run", "--client", "alpha")
    assert human.code == 1 and "ERROR snapshot" in human.stderr

    # Unknown to the catalogue: it may be anyone's, so no client of the pool that has
    # a retention loses any (beta and gamma keep everything anyway: no error for them).
    site.sql("DELETE FROM snapshots WHERE id = :id", id=old[0])
    site.inventory.write_text(site.inventory.read_text().replace('"keepall"', '"nightly"'))
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    result = site.cli("forget", "--json")
    assert result.code == 1
    clients = by_client(result.json())
    assert clients["alpha"]["errors"] and clients["beta"]["errors"]
    assert clients["alpha"]["removed"] == clients["beta"]["removed"] == []
    assert clients["gamma"]["errors"] == []  # no policy: nothing to lose
    assert {p.name for p in (site.pool_path / "snapshots").iterdir()} == survivors
    assert beta_old
