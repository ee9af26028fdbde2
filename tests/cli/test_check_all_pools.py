"""costor check without --pool checks every pool it can and reports the others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import client_table, local_pool, site_table, write_tables


def _pool(name: str, passphrase_env: str = "COSTOR_TEST_PASSPHRASE") -> str:
    return local_pool(name, path=name, passphrase_env=passphrase_env)


@pytest.fixture
def four_pools(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    """``good`` and ``hurt`` hold a backup each; ``gone`` loses its storage and
    ``locked``'s passphrase is changed in the environment after apply."""
    monkeypatch.setenv("LOCKED_PASSPHRASE", "the passphrase at apply time")
    inventory = write_tables(
        tmp_path,
        site_table(),
        _pool("good"),
        _pool("gone"),
        _pool("hurt"),
        _pool("locked", "LOCKED_PASSPHRASE"),
        *(
            client_table(client, [source], pool=pool)
            for client, pool in (("alpha", "good"), ("beta", "hurt"))
        ),
    )
    site = Site(tmp_path, inventory, tmp_path / "good")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    for client in ("alpha", "beta"):
        assert site.cli("backup", client).code == 0
    shutil.rmtree(tmp_path / "gone")
    monkeypatch.setenv("LOCKED_PASSPHRASE", "someone changed it")
    return site


def test_unopenable_pools_do_not_stop_the_others(four_pools: Site) -> None:
    result = four_pools.cli("check", "--read-data")
    assert result.code == 1, result.stdout + result.stderr
    for name in ("good", "hurt"):
        assert f"pool {name}: 1 snapshot(s)" in result.stdout
    assert result.stdout.count("no errors were found") == 2
    assert "pool gone: not checked: No CoStor pool at" in result.stderr
    assert "pool locked: not checked: Wrong passphrase" in result.stderr
    assert "2 pool(s) checked, 2 could not be checked (gone, locked)" in result.stdout

    doc = four_pools.cli("check", "--json")
    assert doc.code == 1
    report = doc.json()
    assert report["ok"] is False and report["damaged"] is False
    assert [p["pool"] for p in report["pools"]] == ["good", "hurt"]
    assert all(p["ok"] for p in report["pools"])
    not_checked = {p["pool"]: p for p in report["not_checked"]}
    assert not_checked.keys() == {"gone", "locked"}
    assert not_checked["gone"]["error_type"] == "PoolNotFound"
    assert "Wrong passphrase" in not_checked["locked"]["error"]


def test_damage_anywhere_is_the_worst_outcome(four_pools: Site) -> None:
    pack = max((four_pools.root / "hurt").glob("packs/*/*/*"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    result = four_pools.cli("check", "--read-data")
    assert result.code == 3, result.stdout + result.stderr
    assert "DAMAGE damaged_pack" in result.stdout and "pool good: 1 snapshot(s)" in result.stdout
    assert "pool locked: not checked" in result.stderr
    doc = four_pools.cli("check", "--read-data", "--json")
    assert doc.code == 3
    assert doc.json()["damaged"] is True and len(doc.json()["not_checked"]) == 2


def test_one_named_pool_that_cannot_be_opened_is_an_error(four_pools: Site) -> None:
    result = four_pools.cli("check", "--pool", "locked")
    assert result.code == 1 and "Wrong passphrase" in result.stderr
    assert four_pools.cli("check", "--pool", "good").code == 0
