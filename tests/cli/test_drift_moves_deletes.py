"""What happens to real data when the world or the inventory changes: drift made outside
CoStor, renames with and without ``[[moved]]``, and deletions (clients retired with their
snapshots kept, pools that hold data never deleted implicitly)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support.fixtures import Site, make_pool, tree_digest
from support.inventory import cut_at


def replace(site: Site, old: str, new: str) -> None:
    text = site.inventory.read_text()
    assert old in text, old
    site.inventory.write_text(text.replace(old, new))


def pending(site: Site) -> list[dict[str, object]]:
    plan = site.cli("plan", "--json")
    assert plan.code == 0, plan.stderr
    return [
        c
        for c in plan.json()["resource_changes"]
        if c["change"]["actions"] != ["no-op"] or "previous_address" in c
    ]


def test_replaced_pool_identity_is_drift_that_apply_refuses(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    shutil.rmtree(applied.pool_path)
    other = make_pool(applied.pool_path)  # someone put another pool there

    plan = applied.cli("plan", "--detailed-exitcode")
    assert plan.code == 4  # drift, and blocked: never 2, which a pipeline would apply
    assert "drift" in plan.stdout and other.uuid in plan.stdout
    document = applied.cli("plan", "--json").json()
    [drift] = document["resource_drift"]
    assert drift["address"] == "pool.main" and other.uuid in drift["reason"]
    assert document["applyable"] is False

    # A change elsewhere is not applied while the pool is in doubt.
    replace(applied, 'transport = "local"', 'transport = "local"\none_file_system = true')
    refused = applied.cli("apply", "--auto-approve")
    assert refused.code == 1 and "Refusing to apply" in refused.stderr
    assert "--refresh-only" in refused.stderr

    accepted = applied.cli("apply", "--refresh-only", "--auto-approve", "--json")
    assert accepted.code == 0, accepted.stderr
    assert [c["operation"] for c in accepted.json()["applied"]] == ["refresh"]
    assert applied.cli("apply", "--auto-approve").code == 0
    assert applied.cli("plan", "--detailed-exitcode").code == 0
    assert applied.cli("backup", "alpha").code == 0  # into the pool that is there now


def test_vanished_pool_is_not_recreated_silently(applied: Site) -> None:
    shutil.rmtree(applied.pool_path)
    plan = applied.cli("plan", "--json").json()
    assert plan["resource_drift"][0]["change"]["actions"] == ["delete"]
    assert applied.cli("apply", "--auto-approve").code == 1
    assert not applied.pool_path.exists()  # not re-initialised over an unmounted disk
    assert applied.cli("apply", "--refresh-only", "--auto-approve").code == 0
    assert [c["operation"] for c in pending(applied)] == ["create"]


def test_row_edited_outside_costor_shows_as_drift(applied: Site) -> None:
    """An edit of the recorded client (as a later API or plain SQL would make it)."""
    [(attributes,)] = applied.sql("SELECT attributes FROM resources WHERE address = 'client.alpha'")
    edited = {**json.loads(attributes), "paths": ["/tmp/elsewhere"]}
    applied.sql(
        "UPDATE resources SET attributes = :a WHERE address = 'client.alpha'",
        a=json.dumps(edited),
    )
    plan = applied.cli("plan", "--detailed-exitcode")
    assert plan.code == 2
    assert "changed outside CoStor since the last apply: paths" in plan.stdout
    assert '~ paths = ["/tmp/elsewhere"] -> [' in plan.stdout
    assert applied.cli("apply", "--auto-approve").code == 0  # the inventory wins
    assert applied.cli("plan", "--detailed-exitcode").code == 0


def test_moved_client_keeps_its_snapshots_and_parent(
    applied: Site, source: Path, tmp_path: Path
) -> None:
    first = applied.cli("backup", "alpha", "--json").json()
    replace(applied, "[clients.alpha]", "[clients.beta]")
    applied.inventory.write_text(
        applied.inventory.read_text() + '\n[[moved]]\nfrom = "client.alpha"\nto = "client.beta"\n'
    )
    [change] = pending(applied)
    assert change["address"] == "client.beta" and change["previous_address"] == "client.alpha"
    assert change["change"]["actions"] == ["no-op"]
    assert "> client.beta" in applied.cli("plan").stdout
    assert applied.cli("apply", "--auto-approve").code == 0
    assert applied.cli("plan", "--detailed-exitcode").code == 0  # the block may stay

    listed = applied.cli("snapshots", "--client", "beta", "--json").json()
    assert [s["id"] for s in listed] == [first["snapshot_id"]]
    assert listed[0]["client"] == "beta" and listed[0]["taken_as"] == "alpha"
    second = applied.cli("backup", "beta", "--json").json()
    assert second["parent"] == first["snapshot_id"]  # change detection continues
    assert second["files_unmodified"] == first["files_new"] and second["files_new"] == 0
    restored = applied.cli("restore", first["snapshot_id"][:12], "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    assert tree_digest(tmp_path / "r" / str(source).lstrip("/")) == tree_digest(source)


def test_rename_without_moved_is_delete_and_create(applied: Site) -> None:
    first = applied.cli("backup", "alpha", "--json").json()
    replace(applied, "[clients.alpha]", "[clients.beta]")
    changes = {c["address"]: c for c in pending(applied)}
    assert changes["client.beta"]["change"]["actions"] == ["create"]
    assert changes["client.alpha"]["change"]["actions"] == ["delete"]
    assert "1 snapshot(s) in pool main are kept" in changes["client.alpha"]["reason"]
    assert applied.cli("apply", "--auto-approve").code == 0
    # The retired client's snapshots stay where they are, listable by its name.
    kept = applied.cli("snapshots", "--client", "alpha", "--json").json()
    assert [s["id"] for s in kept] == [first["snapshot_id"]]
    assert applied.cli("backup", "beta", "--json").json()["parent"] is None
    assert applied.cli("backup", "alpha").code == 1  # no longer declared


def test_pool_holding_data_is_never_deleted_implicitly(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    before = sorted(p.name for p in applied.pool_path.rglob("*"))
    cut_at(applied.inventory, "[pools.main]")  # pool and client gone

    plan = applied.cli("plan")
    assert (
        "Blocked: pool.main: it holds 1 snapshot(s) and is never deleted implicitly" in plan.stdout
    )
    refused = applied.cli("apply", "--auto-approve")
    assert refused.code == 1 and "never deleted implicitly" in refused.stderr
    assert sorted(p.name for p in applied.pool_path.rglob("*")) == before

    # destroy = false: the state forgets the pool, the data stays.
    applied.inventory.write_text(
        applied.inventory.read_text() + '\n[[removed]]\nfrom = "pool.main"\ndestroy = false\n'
    )
    operations = {c["address"]: c["operation"] for c in pending(applied)}
    assert operations == {"pool.main": "forget", "client.alpha": "retire"}
    assert applied.cli("apply", "--auto-approve").code == 0
    assert sorted(p.name for p in applied.pool_path.rglob("*")) == before
    assert applied.sql("SELECT count(*) FROM pools") == [(0,)]


def test_pool_destroyed_after_prevent_destroy_false(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    replace(applied, "pack_size_mib = 4", "pack_size_mib = 4\nprevent_destroy = false")
    assert applied.cli("apply", "--auto-approve").code == 0
    cut_at(applied.inventory, "[pools.main]")
    operations = {c["address"]: c["operation"] for c in pending(applied)}
    assert operations == {"pool.main": "destroy", "client.alpha": "retire"}
    result = applied.cli("apply", "--auto-approve")
    assert result.code == 0, result.stderr
    assert [p for p in applied.pool_path.rglob("*") if p.is_file()] == []
    assert applied.sql("SELECT count(*) FROM snapshots") == [(0,)]


def test_removed_client_with_destroy_deletes_its_snapshots(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    cut_at(
        applied.inventory, "[clients.alpha]", '[[removed]]\nfrom = "client.alpha"\ndestroy = true\n'
    )
    [change] = pending(applied)
    assert change["operation"] == "destroy" and "1 snapshot(s)" in change["reason"]
    assert applied.cli("apply", "--auto-approve").code == 0
    assert list((applied.pool_path / "snapshots").iterdir()) == []
    assert applied.cli("snapshots", "--json").json() == []
    assert applied.cli("check").code == 0  # unreferenced packs are prune's, not damage


def test_state_from_an_earlier_costor_is_adopted(site: Site) -> None:
    """Rows written by the first apply slice (pools and clients, no resources): the
    plan records their configuration; backups continue into the same pool."""
    from costor.db.session import open_engine, upgrade

    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    site.sql("DELETE FROM resources")
    site.sql("DELETE FROM state_meta")
    changes = {c["address"]: c for c in pending(site)}
    assert changes["pool.main"]["change"]["actions"] == ["update"]
    assert "earlier CoStor" in changes["pool.main"]["reason"]
    assert changes["client.alpha"]["change"]["actions"] == ["update"]
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("plan", "--detailed-exitcode").code == 0
    assert site.cli("backup", "alpha", "--json").json()["parent"] is not None
    assert open_engine and upgrade  # the schema path itself is tested in tests/db


# --- found in review: each was a way to lose data --------------------------------------


def drop_pool_and_clients(site: Site) -> None:
    cut_at(site.inventory, "[pools.main]")


def test_an_adopted_pool_counts_its_snapshots_before_any_delete(applied: Site) -> None:
    """The state is lost and rebuilt by adopting the pool: its snapshots are the pool's,
    not the catalogue's, so removing it is still refused."""
    assert applied.cli("backup", "alpha").code == 0
    applied.lose_state()
    assert applied.cli("apply", "--auto-approve").code == 0  # adopts the pool
    assert len(applied.cli("snapshots", "--json").json()) == 1
    drop_pool_and_clients(applied)
    refused = applied.cli("apply", "--auto-approve")
    assert refused.code == 1 and "holds 1 snapshot(s)" in refused.stderr
    assert len(list((applied.pool_path / "snapshots").iterdir())) == 1


def test_a_location_now_holding_other_data_is_not_destroyed(applied: Site) -> None:
    replace(applied, "pack_size_mib = 4", "pack_size_mib = 4\nprevent_destroy = false")
    assert applied.cli("apply", "--auto-approve").code == 0
    shutil.rmtree(applied.pool_path)  # another disk is mounted there now
    (applied.pool_path / "family-photos").mkdir(parents=True)
    (applied.pool_path / "family-photos" / "img1.jpg").write_bytes(b"\xff\xd8 photo")
    drop_pool_and_clients(applied)
    refused = applied.cli("apply", "--auto-approve")
    assert refused.code == 1 and "now holds other data" in refused.stderr
    assert (applied.pool_path / "family-photos" / "img1.jpg").read_bytes() == b"\xff\xd8 photo"
    # Forgetting it touches nothing.
    applied.inventory.write_text(
        applied.inventory.read_text() + '\n[[removed]]\nfrom = "pool.main"\ndestroy = false\n'
    )
    assert applied.cli("apply", "--auto-approve").code == 0
    assert (applied.pool_path / "family-photos" / "img1.jpg").is_file()


def test_rename_without_moved_at_the_same_location_destroys_nothing(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    before = sorted(p.name for p in applied.pool_path.rglob("*"))
    replace(applied, "[pools.main]", "[pools.nas]")
    replace(applied, 'pool = "main"', 'pool = "nas"')
    plan = applied.cli("plan")
    assert 'add [[moved]] from = "pool.main" to = "pool.nas"' in plan.stdout
    refused = applied.cli("apply", "--auto-approve")
    assert refused.code == 1
    assert sorted(p.name for p in applied.pool_path.rglob("*")) == before
    applied.inventory.write_text(
        applied.inventory.read_text() + '\n[[moved]]\nfrom = "pool.main"\nto = "pool.nas"\n'
    )
    assert applied.cli("apply", "--auto-approve").code == 0
    assert applied.cli("backup", "alpha", "--json").json()["parent"] is not None


def test_a_former_name_cannot_be_given_to_another_client(applied: Site, tmp_path: Path) -> None:
    assert applied.cli("backup", "alpha").code == 0
    replace(applied, "[clients.alpha]", "[clients.beta]")
    applied.inventory.write_text(
        applied.inventory.read_text() + '\n[[moved]]\nfrom = "client.alpha"\nto = "client.beta"\n'
    )
    assert applied.cli("apply", "--auto-approve").code == 0
    other = tmp_path / "other-host"
    other.mkdir()
    (other / "b").write_text("another host's file")
    cut_at(
        applied.inventory,
        "[[moved]]",
        f'[clients.alpha]\nsite = "hq"\npool = "main"\npaths = ["{other}"]\n',
    )
    refused = applied.cli("apply", "--auto-approve")
    assert refused.code == 1 and "'alpha' is a former name of client.beta" in refused.stderr


def test_a_pool_rename_keeps_a_retired_clients_snapshots_reachable(applied: Site) -> None:
    first = applied.cli("backup", "alpha", "--json").json()
    cut_at(applied.inventory, "[clients.alpha]")
    assert applied.cli("apply", "--auto-approve").code == 0  # alpha retired
    replace(applied, "[pools.main]", "[pools.nas]")
    applied.inventory.write_text(
        applied.inventory.read_text() + '\n[[moved]]\nfrom = "pool.main"\nto = "pool.nas"\n'
    )
    assert applied.cli("apply", "--auto-approve").code == 0
    listed = applied.cli("snapshots", "--client", "alpha", "--json")
    assert listed.code == 0, listed.stderr
    assert [s["id"] for s in listed.json()] == [first["snapshot_id"]]
    assert applied.cli("ls", "alpha:latest").code == 0


def test_a_destroyed_client_loses_its_snapshots_in_every_pool(
    applied: Site, tmp_path: Path
) -> None:
    assert applied.cli("backup", "alpha").code == 0
    applied.inventory.write_text(
        applied.inventory.read_text().replace(
            "[clients.alpha]",
            '[pools.second]\nsite = "hq"\nbackend = "local"\npath = "pool2"\n'
            'passphrase = { env = "COSTOR_TEST_PASSPHRASE" }\n\n[clients.alpha]',
        )
    )
    replace(applied, 'pool = "main"', 'pool = "second"')
    assert applied.cli("apply", "--auto-approve").code == 0
    assert applied.cli("backup", "alpha").code == 0
    cut_at(
        applied.inventory, "[clients.alpha]", '[[removed]]\nfrom = "client.alpha"\ndestroy = true\n'
    )
    [change] = pending(applied)
    assert "2 snapshot(s) in pool main, second" in change["reason"]
    assert applied.cli("apply", "--auto-approve").code == 0
    for pool in (applied.pool_path, tmp_path / "pool2"):
        assert list((pool / "snapshots").iterdir()) == []


def test_a_pool_of_another_cipher_is_not_adopted(site: Site) -> None:
    make_pool(site.pool_path, encryption="chacha20-poly1305")
    refused = site.cli("apply", "--auto-approve")
    assert refused.code == 1
    assert "has encryption = 'chacha20-poly1305' but the inventory says 'aes-256-gcm'" in (
        refused.stderr
    )


def test_a_passphrase_that_does_not_open_the_pool_is_caught_by_plan(
    applied: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "not the pool's passphrase")
    plan = applied.cli("plan", "--detailed-exitcode")
    assert "does not open the pool" in plan.stdout
    refused = applied.cli("apply", "--auto-approve")
    assert refused.code == 1 and "costor pool add-key" in refused.stderr
