"""A changed costor-pool.json through the CLI (issue 19, item 3): backup, check and
restore refuse it with exit 3 (or a clear error), never a traceback, never a snapshot
written with the changed parameters; an old-format pool opens with a warning, is
upgraded by `costor pool upgrade`, and refuses tampering from then on; a planted key
slot asking for 16 GiB of memory is refused at once."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import PASSPHRASE, CliResult, Site, make_pool

from costor.store import crypto
from costor.store.backends import LocalBackend
from costor.store.pool import IDENTITY_NAME, Pool, read_key_slots


def _identity(site: Site) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((site.pool_path / IDENTITY_NAME).read_text())
    return doc


def _write_identity(site: Site, doc: dict[str, Any]) -> None:
    (site.pool_path / IDENTITY_NAME).write_text(json.dumps(doc, indent=2))


def _snapshots(site: Site) -> set[str]:
    return {p.name for p in (site.pool_path / "snapshots").iterdir()}


def _no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def _another_pools_identity(site: Site) -> dict[str, Any]:
    make_pool(site.root / "other")
    doc: dict[str, Any] = json.loads((site.root / "other" / IDENTITY_NAME).read_text())
    return doc


TAMPERINGS: dict[str, Any] = {
    "encryption none": lambda d, s: d.update(encryption="none"),
    "chunker": lambda d, s: d["chunker"].update(avg_size=4096, min_size=4096),
    "compression": lambda d, s: d.update(compression={"algorithm": "none"}),
    "pack size 1": lambda d, s: d.update(pack_size=1),
    "tag deleted": lambda d, s: d.pop("params_tag"),
    "tag replaced": lambda d, s: d.update(params_tag="ab" * 32),
    "rolled back to version 1": lambda d, s: (d.pop("params_tag"), d.update(version=1)),
    "another pool's, this uuid": lambda d, s: d.update(
        {**_another_pools_identity(s), "uuid": d["uuid"]}
    ),
    "another pool's": lambda d, s: d.update(_another_pools_identity(s)),
}


@pytest.mark.parametrize("case", sorted(TAMPERINGS))
def test_a_changed_identity_file_stops_backup_check_and_restore(
    applied: Site, case: str, tmp_path: Path
) -> None:
    assert applied.cli("backup", "alpha").code == 0
    before = _snapshots(applied)
    doc = _identity(applied)
    TAMPERINGS[case](doc, applied)
    _write_identity(applied, doc)
    foreign = case == "another pool's"  # another UUID: the foreign-pool error (exit 1)
    results = {
        "backup": applied.cli("backup", "alpha"),
        "check": applied.cli("check"),
        "restore": applied.cli("restore", "alpha:latest", "--target", str(tmp_path / "t")),
    }
    for command, result in results.items():
        _no_traceback(result)
        if foreign:
            assert result.code == 1, (command, result.stderr)
            assert "foreign or replaced pool" in result.stderr + result.stdout
        else:
            assert result.code == 3, (command, result.stderr, result.stdout)
            assert "refusing to open it" in result.stderr + result.stdout, command
    assert _snapshots(applied) == before
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


def test_plan_blocks_a_pool_that_refuses_to_open(applied: Site) -> None:
    """plan observes a tampered pool as a fact: adopting it (the state was lost) is
    blocked with the reason (exit 4, "plan blocked"), as for a wrong passphrase; the
    plan is not aborted."""
    doc = _identity(applied)
    doc.update(pack_size=1)
    _write_identity(applied, doc)
    applied.lose_state()
    planned = applied.cli("plan")
    _no_traceback(planned)
    assert planned.code == 4, planned.stdout + planned.stderr
    assert "pool.main" in planned.stdout and "refusing to open it" in planned.stdout


def _make_old(site: Site) -> None:
    """Turn the site's pool into one as CoStor wrote them before the tag."""
    backend = LocalBackend(site.pool_path)
    pool = Pool.open(backend, PASSPHRASE)
    old_master = replace(pool.master, params_bound=False)
    for name, _slot in read_key_slots(backend):
        backend.put(name, crypto.make_key_slot(old_master, PASSPHRASE, "argon2id", pool.uuid))
    doc = _identity(site)
    doc["version"] = 1
    del doc["params_tag"]
    _write_identity(site, doc)


def test_an_old_pool_is_upgraded_then_refuses_tampering(applied: Site) -> None:
    _make_old(applied)
    backup = applied.cli("backup", "alpha")
    assert backup.code == 0, backup.stderr
    assert backup.stderr.count("costor pool upgrade") == 1  # warned, once

    upgraded = applied.cli("pool", "upgrade", "main", "--json")
    assert upgraded.code == 0, upgraded.stderr
    doc = upgraded.json()
    assert doc["pool"] == "main" and doc["changed"] is True
    assert (doc["from_version"], doc["to_version"], doc["tagged"]) == (1, 2, True)
    assert (doc["slots_rebound"], doc["slots_other"]) == (1, 0)
    identity = _identity(applied)
    assert identity["version"] == 2 and len(identity["params_tag"]) == 64

    again = applied.cli("pool", "upgrade", "main")
    assert again.code == 0 and "already at format version 2" in again.stdout
    backup = applied.cli("backup", "alpha")
    assert backup.code == 0 and "pool upgrade" not in backup.stderr
    assert applied.cli("check").code == 0

    before = _snapshots(applied)
    for case in ("rolled back to version 1", "pack size 1", "encryption none"):
        tampered = json.loads(json.dumps(identity))
        TAMPERINGS[case](tampered, applied)
        _write_identity(applied, tampered)
        result = applied.cli("backup", "alpha")
        _no_traceback(result)
        assert result.code == 3 and "refusing to open it" in result.stderr, case
    assert _snapshots(applied) == before


def test_an_old_encrypted_pool_claiming_no_encryption_is_refused(applied: Site) -> None:
    _make_old(applied)
    doc = _identity(applied)
    doc["encryption"] = "none"
    _write_identity(applied, doc)
    for args in (("backup", "alpha"), ("check",), ("pool", "upgrade", "main")):
        result = applied.cli(*args)
        _no_traceback(result)
        assert result.code == 3, (args, result.stderr)
        assert "created encrypted" in result.stderr + result.stdout
    assert not (applied.pool_path / "snapshots").exists() or not _snapshots(applied)


def test_a_planted_key_slot_asking_for_16_gib_is_refused_at_once(applied: Site) -> None:
    [(real, _bytes)] = read_key_slots(LocalBackend(applied.pool_path))
    planted = {
        "version": 1,
        "kdf": "argon2id",
        "params": {"iterations": 3, "lanes": 4, "memory_cost_kib": 16 << 20},  # 16 GiB
        "salt": "AAAAAAAAAAAAAAAAAAAAAA==",
        "wrap": "aes-256-gcm",
        "wrapped_master_key": "AAAA",
    }
    (applied.pool_path / "keys" / ("0" * 32)).write_text(json.dumps(planted))
    assert applied.cli("backup", "alpha").code == 0  # passed over: the real slot opens
    (applied.pool_path / real).unlink()
    started = time.monotonic()
    result = applied.cli("backup", "alpha")
    assert time.monotonic() - started < 10
    _no_traceback(result)
    assert result.code == 3, result.stderr
    assert "0" * 32 in result.stderr and "over the cap" in result.stderr
