"""costor pool keys / add-key --label / remove-key: rotating a pool's passphrase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fixtures import PASSPHRASE, Site
from support.inventory import s3_pool, site_table, write_tables
from support.s3servers import S3Server, make_s3_backend, moto_server  # noqa: F401  (fixture)

NEW = "a new passphrase nobody has seen"


def _slots(site: Site, pool: str = "main") -> list[dict[str, object]]:
    listed = site.cli("pool", "keys", "--pool", pool, "--json")
    assert listed.code == 0, listed.stderr
    slots: list[dict[str, object]] = listed.json()["slots"]
    return slots


def test_rotate_a_passphrase(applied: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    [old] = _slots(applied)
    assert old["kdf"] == "argon2id" and old["label"] == ""
    assert isinstance(old["created"], str) and old["created"].endswith("Z")
    assert old["opens_with_inventory_passphrase"] is True

    monkeypatch.setenv("NEWPW", NEW)
    added = applied.cli(
        "pool", "add-key", "--pool", "main", "--new-passphrase-env", "NEWPW",
        "--label", "rotation 2026, after the laptop theft", "--kdf", "scrypt", "--json",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    new_id = added.json()["id"]
    assert added.json()["key_slot"] == f"keys/{new_id}"
    slots = {slot["id"]: slot for slot in _slots(applied)}
    assert slots.keys() == {old["id"], new_id}
    assert slots[new_id]["label"] == "rotation 2026, after the laptop theft"
    assert slots[new_id]["kdf"] == "scrypt"
    assert slots[new_id]["opens_with_inventory_passphrase"] is False
    human = applied.cli("pool", "keys", "--pool", "main")
    assert human.code == 0 and new_id in human.stdout and "laptop theft" in human.stdout

    # The slot the inventory's passphrase opens is not removed by mistake ...
    refused = applied.cli("pool", "remove-key", "--pool", "main", str(old["id"]))
    assert refused.code == 1 and "--force" in refused.stderr
    assert len(list((applied.pool_path / "keys").iterdir())) == 2

    # ... but once the inventory holds the new passphrase, the old slot goes.
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", NEW)
    removed = applied.cli("pool", "remove-key", "--pool", "main", str(old["id"])[:8], "--json")
    assert removed.code == 0, removed.stderr
    assert removed.json()["id"] == old["id"] and removed.json()["remaining"] == 1
    assert [p.name for p in (applied.pool_path / "keys").iterdir()] == [new_id]
    assert applied.cli("snapshots").code == 0  # the new passphrase opens the pool

    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", PASSPHRASE)
    leaked = applied.cli("snapshots")
    assert leaked.code == 1
    assert "Wrong passphrase for pool" in leaked.stderr and "no key slot opens" in leaked.stderr


def test_refusals(applied: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    [only] = _slots(applied)
    last = applied.cli("pool", "remove-key", "--pool", "main", str(only["id"]), "--force")
    assert last.code == 1 and "last key slot" in last.stderr
    unknown = applied.cli("pool", "remove-key", "--pool", "main", "0" * 32)
    assert unknown.code == 1 and "No key slot" in unknown.stderr

    monkeypatch.setenv("NEWPW", NEW)
    assert (
        applied.cli("pool", "add-key", "--pool", "main", "--new-passphrase-env", "NEWPW").code == 0
    )
    # A passphrase that opens no slot may not remove any.
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "not the passphrase")
    wrong = applied.cli("pool", "remove-key", "--pool", "main", str(only["id"]), "--force")
    assert wrong.code == 1 and "Wrong passphrase" in wrong.stderr
    assert len(list((applied.pool_path / "keys").iterdir())) == 2
    listed = _slots(applied)  # listing still works, and shows that nothing opens
    assert [s["opens_with_inventory_passphrase"] for s in listed] == [False, False]

    # --force removes the inventory's own slot; the inventory must then change.
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", PASSPHRASE)
    forced = applied.cli("pool", "remove-key", "--pool", "main", str(only["id"]), "--force")
    assert forced.code == 0, forced.stderr
    assert "no longer opens" in forced.stdout
    assert applied.cli("snapshots").code == 1
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", NEW)
    assert applied.cli("snapshots").code == 0


def test_a_duplicate_slot_of_the_inventory_passphrase_may_go(
    applied: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    [first] = _slots(applied)
    monkeypatch.setenv("SAMEPW", PASSPHRASE)
    assert (
        applied.cli("pool", "add-key", "--pool", "main", "--new-passphrase-env", "SAMEPW").code == 0
    )
    removed = applied.cli("pool", "remove-key", "--pool", "main", str(first["id"]))
    assert removed.code == 0, removed.stderr
    assert applied.cli("snapshots").code == 0


def test_slots_without_created_or_label_are_listed(applied: Site) -> None:
    """Slots written before labels existed (and any without a created time)."""
    [slot_file] = (applied.pool_path / "keys").iterdir()
    doc = json.loads(slot_file.read_bytes())
    del doc["created"]
    doc.pop("label", None)
    slot_file.write_text(json.dumps(doc))
    [slot] = _slots(applied)
    assert slot["created"] is None and slot["label"] == ""
    assert slot["opens_with_inventory_passphrase"] is True
    human = applied.cli("pool", "keys", "--pool", "main")
    assert "unknown" in human.stdout
    assert applied.cli("snapshots").code == 0


def test_rotation_on_s3(
    moto_server: S3Server,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = moto_server.new_bucket()
    monkeypatch.setenv("TEST_S3_ACCESS_KEY", moto_server.access_key)
    monkeypatch.setenv("TEST_S3_SECRET_KEY", moto_server.secret_key)
    inventory = write_tables(tmp_path, site_table(), s3_pool("cloud", moto_server.endpoint, bucket))
    site = Site(tmp_path, inventory, tmp_path / "unused")
    assert site.cli("apply", "--auto-approve").code == 0
    [old] = _slots(site, "cloud")
    monkeypatch.setenv("NEWPW", NEW)
    assert site.cli("pool", "add-key", "--pool", "cloud", "--new-passphrase-env", "NEWPW").code == 0
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", NEW)
    removed = site.cli("pool", "remove-key", "--pool", "cloud", str(old["id"]))
    assert removed.code == 0, removed.stderr
    backend = make_s3_backend(moto_server, bucket, "costor")
    assert [info.name for info in backend.list("keys/")] != [f"keys/{old['id']}"]
    assert len(list(backend.list("keys/"))) == 1
    assert site.cli("check").code == 0
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", PASSPHRASE)
    assert "Wrong passphrase" in site.cli("check", "--pool", "cloud").stderr
