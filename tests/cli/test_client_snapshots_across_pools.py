"""A client's snapshots are one set across every pool that holds them (issue 17).

A client moved from pool A to pool B, and back, keeps the snapshots it left behind:
``snapshots --client`` lists them as ``snapshots`` does, ``CLIENT:latest`` is the newest
in any pool, and ``forget`` applies the client's retention over all of them, deleting
each removed snapshot in the pool that holds it.
"""

from __future__ import annotations

from pathlib import Path

from support.fixtures import Site
from support.inventory import client_table, local_pool, rewrite_tables, site_table, write_tables


def tables(source: Path, pool: str) -> list[str]:
    """Pools ``a`` and ``b`` (in ./pool-a, ./pool-b), client ``c`` in ``pool``."""
    return [
        site_table(),
        local_pool("a", path="pool-a"),
        local_pool("b", path="pool-b"),
        '[policies.short]\nschedule = "0 2 * * *"\nretention = { last = 1 }\n',
        client_table("c", [source], 'policy = "short"', pool=pool),
    ]


def move_to(site: Site, source: Path, pool: str) -> None:
    rewrite_tables(site.inventory, *tables(source, pool))  # the same [costor] table
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr


def backup(site: Site) -> str:
    result = site.cli("backup", "c", "--json")
    assert result.code == 0, result.stderr
    return str(result.json()["snapshot_id"])


def listed(site: Site, *args: str) -> dict[str, str]:
    """id -> pool of ``costor snapshots --json``."""
    result = site.cli("snapshots", "--json", *args)
    assert result.code == 0, result.stderr
    return {s["id"]: s["pool"] for s in result.json()}


def manifests(site: Site, pool: str) -> set[str]:
    directory = site.root / f"pool-{pool}" / "snapshots"
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_a_client_moved_between_pools_keeps_one_set_of_snapshots(
    tmp_path: Path, source: Path
) -> None:
    inventory = write_tables(tmp_path, *tables(source, "a"))
    site = Site(tmp_path, inventory, tmp_path / "pool-a")
    assert site.cli("apply", "--auto-approve").code == 0
    first = backup(site)

    move_to(site, source, "b")
    (source / "docs" / "second.txt").write_text("taken in pool b")
    second = backup(site)
    assert listed(site) == {first: "a", second: "b"}
    assert listed(site, "--client", "c") == {first: "a", second: "b"}

    move_to(site, source, "a")  # and back
    assert listed(site, "--client", "c") == {first: "a", second: "b"}
    # c:latest is the newest in any pool, not the newest in the client's pool.
    ls = site.cli("ls", "c:latest", str(source / "docs"), "--json")
    assert ls.code == 0, ls.stderr
    assert str(source / "docs" / "second.txt") in {e["path"] for e in ls.json()}
    target = tmp_path / "restored"
    restored = site.cli("restore", "c:latest", "--target", str(target), "--json")
    assert restored.code == 0, restored.stderr
    assert restored.json()["snapshot_id"] == second
    assert (target / str(source / "docs" / "second.txt").lstrip("/")).read_text() == (
        "taken in pool b"
    )

    # Retention (last = 1) over both pools: the older snapshot, in a, goes.
    dry = site.cli("forget", "--client", "c", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    [decided] = dry.json()["clients"]
    assert [(k["id"], k["pools"]) for k in decided["kept"]] == [(second, ["b"])]
    assert [(r["id"], r["pools"]) for r in decided["removed"]] == [(first, ["a"])]

    third = backup(site)  # in a again
    result = site.cli("forget", "--client", "c", "--json")
    assert result.code == 0, result.stderr
    [decided] = result.json()["clients"]
    assert [k["id"] for k in decided["kept"]] == [third]
    assert {r["id"]: r["pools"] for r in decided["removed"]} == {first: ["a"], second: ["b"]}
    assert manifests(site, "a") == {third} and manifests(site, "b") == set()
    assert listed(site) == {third: "a"}
    catalogue = {row[0] for row in site.sql("SELECT id FROM snapshots")}
    assert catalogue == {third}

    # The same for every client at once (no filter): nothing left to remove.
    again = site.cli("forget", "--json")
    assert again.code == 0, again.stderr
    assert again.json()["total"] == {"kept": 1, "removed": 0}
