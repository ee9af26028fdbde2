"""costor audit end to end: real commands leave records (the CLI's actor, the daemon's
jobs as ``system``), ``audit --json`` filters them, ``audit verify`` passes on the
untouched log and names the first broken link after the table is tampered with through
SQL, as another tool with access to the database would; concurrent commands form one
chain; an action that must be recorded first does not start when the log cannot be
written. SQLite, or PostgreSQL in the PostgreSQL pass (costor.db.audit's own tests:
tests/db/test_audit_chain.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Site
from support.inventory import write_local_inventory

from costor.db import audit
from costor.db.session import open_engine
from costor.ops.context import os_actor


def _records(site: Site, *args: str) -> list[dict[str, Any]]:
    result = site.cli("audit", "--json", *args)
    assert result.code == 0, result.stderr
    records: list[dict[str, Any]] = result.json()
    return records


def _verify(site: Site) -> tuple[int, dict[str, Any]]:
    result = site.cli("audit", "verify", "--json")
    return result.code, result.json()


def test_commands_are_recorded_with_their_actor_and_outcome(applied: Site, tmp_path: Path) -> None:
    site = applied
    assert site.cli("backup", "alpha").code == 0
    restored = tmp_path / "restored"
    assert site.cli("restore", "alpha:latest", "--target", str(restored)).code == 0
    assert (
        site.cli("restore", "alpha:latest", "--target", str(tmp_path / "dry"), "--dry-run").code
        == 0
    )
    assert site.cli("forget", "--client", "alpha").code == 0
    assert site.cli("check").code == 0
    assert site.cli("snapshots").code == 0  # reads no content: not recorded
    assert site.cli("maintenance", "on", "--reason", "disk swap").code == 0
    assert site.cli("maintenance", "off").code == 0
    assert site.cli("force-unlock", "no-such-lock").code == 1  # fails: recorded as failed
    assert site.cli("db", "upgrade").code == 0

    records = list(reversed(_records(site)))  # oldest first
    actions = [(r["action"], r["target"], r["outcome"]) for r in records]
    assert actions == [
        ("apply", "state", "started"),
        ("apply", "state", "ok"),
        ("backup", "client:alpha", "ok"),
        ("restore", "client:alpha", "started"),
        ("restore", "client:alpha", "ok"),
        ("forget", "client:alpha", "started"),
        ("forget", "client:alpha", "ok"),
        ("check", "pool:main", "ok"),
        ("maintenance.on", "site:hq", "ok"),
        ("maintenance.off", "site:hq", "ok"),
        ("force-unlock", "state", "started"),
        ("force-unlock", "state", "failed"),
        ("db.upgrade", "state", "ok"),
    ]
    assert {r["actor"] for r in records} == {os_actor()}
    assert {r["source"] for r in records} == {"cli"}
    by_action = {(r["action"], r["outcome"]): r for r in records}
    backup = by_action[("backup", "ok")]
    snapshot = backup["detail"]["snapshot"]
    assert backup["detail"]["pool"] == "main" and backup["detail"]["trigger"] == "cli"
    restore = by_action[("restore", "ok")]
    assert restore["detail"]["snapshot"] == snapshot
    assert restore["detail"]["target"] == str(restored) and restore["detail"]["files"] > 0
    # The started record and the outcome of one command share its request id.
    assert restore["request_id"] == by_action[("restore", "started")]["request_id"]
    assert restore["request_id"] != backup["request_id"]
    failed = by_action[("force-unlock", "failed")]["detail"]
    assert failed["error"] == "StateError" and failed["exit_code"] == 1
    assert by_action[("maintenance.on", "ok")]["detail"] == {"reason": "disk swap"}

    code, check = _verify(site)
    assert code == 0 and check["intact"] and check["records"] == len(records)
    text = site.cli("audit", "verify")
    assert text.code == 0 and "chain intact" in text.stdout


def test_filters(applied: Site) -> None:
    site = applied
    assert site.cli("backup", "alpha").code == 0
    assert site.cli("maintenance", "on").code == 0
    [record] = _records(site, "--action", "backup")
    assert record["target"] == "client:alpha"
    assert [r["action"] for r in _records(site, "--target", "site:*")] == ["maintenance.on"]
    assert len(_records(site, "--actor", os_actor())) == 4
    assert _records(site, "--actor", "user:*") == []
    assert [r["action"] for r in _records(site, "--limit", "1")] == ["maintenance.on"]
    assert len(_records(site, "--since", "1h")) == 4
    assert _records(site, "--since", "2999-01-01") == []
    assert len(_records(site, "--until", "2999-01-01T00:00:00Z")) == 4
    bad = site.cli("audit", "--since", "yesterday-ish")
    assert bad.code == 1 and "neither a duration" in bad.stderr

    text = site.cli("audit", "--action", "backup")
    assert text.code == 0 and "client:alpha" in text.stdout and "backup" in text.stdout


def test_jobs_are_recorded_as_the_system_and_name_their_job(applied: Site) -> None:
    site = applied
    queued = site.cli("jobs", "add", "backup", "alpha", "--json")
    assert queued.code == 0, queued.stderr
    job_id = queued.json()["id"]
    assert site.cli("jobs", "run", str(job_id)).code == 0
    [backup] = _records(site, "--action", "backup")
    assert backup["actor"] == "system" and backup["request_id"] == f"job-{job_id}"
    assert backup["detail"]["trigger"] is None  # the job row is its record
    [added] = _records(site, "--action", "jobs.add")
    assert added["actor"] == os_actor() and added["detail"] == {"kind": "backup", "job": job_id}
    assert added["target"] == "client:alpha"


# --- tampering -------------------------------------------------------------------------


@pytest.fixture
def logged(applied: Site) -> tuple[Site, list[int]]:
    """A site whose log holds a few records; their ids, oldest first."""
    site = applied
    assert site.cli("backup", "alpha").code == 0
    assert site.cli("maintenance", "on").code == 0
    assert site.cli("maintenance", "off").code == 0
    ids = [r["id"] for r in reversed(_records(site))]
    assert len(ids) == 5 and _verify(site)[0] == 0
    return site, ids


def _broken(site: Site) -> dict[str, Any]:
    code, check = _verify(site)
    assert code == 3 and not check["intact"]
    text = site.cli("audit", "verify")
    assert text.code == 3
    broken: dict[str, Any] = check["broken"]
    assert f"broken at record {broken['record']} ({broken['kind']})" in text.stdout
    return broken


def test_a_changed_record_is_named(logged: tuple[Site, list[int]]) -> None:
    site, ids = logged
    site.sql("UPDATE audit_records SET outcome = 'failed' WHERE id = :id", id=ids[2])
    broken = _broken(site)
    assert (broken["record"], broken["kind"]) == (ids[2], "changed")


def test_a_deleted_record_is_named(logged: tuple[Site, list[int]]) -> None:
    site, ids = logged
    site.sql("DELETE FROM audit_records WHERE id = :id", id=ids[2])
    broken = _broken(site)
    assert (broken["record"], broken["kind"]) == (ids[2], "deleted")
    assert f"record {ids[2]} was deleted" in broken["reason"]


def test_an_inserted_record_is_named(logged: tuple[Site, list[int]]) -> None:
    """A forger who knows how the hash is made adds a well-formed record after the last
    one (a restore that never happened, say) but cannot update the head unnoticed."""
    site, ids = logged
    site.sql(
        "INSERT INTO audit_records (id, time, actor, action, target, outcome, source, "
        "request_id, detail, prev_hash, hash) SELECT id + 1, time, actor, 'restore', target, "
        "outcome, source, request_id, detail, hash, 'x' FROM audit_records WHERE id = :id",
        id=ids[-1],
    )
    engine = open_engine(site.database_url)
    try:
        [forged] = audit.find_records(engine, limit=1)
        site.sql(
            "UPDATE audit_records SET hash = :h WHERE id = :id",
            h=audit.record_hash(forged.prev_hash, forged),
            id=forged.id,
        )
    finally:
        engine.dispose()
    broken = _broken(site)
    assert (broken["record"], broken["kind"]) == (ids[-1] + 1, "inserted")


def test_a_cut_tail_is_named(logged: tuple[Site, list[int]]) -> None:
    site, ids = logged
    site.sql("DELETE FROM audit_records WHERE id = :id", id=ids[-1])
    broken = _broken(site)
    assert (broken["record"], broken["kind"]) == (ids[-1], "truncated")
    assert "tail was cut" in broken["reason"]


def test_names_from_the_table_are_escaped_on_the_terminal(logged: tuple[Site, list[int]]) -> None:
    site, ids = logged
    site.sql("UPDATE audit_records SET actor = :a WHERE id = :id", a="evil\n\x1b[2Jx", id=ids[0])
    shown = site.cli("audit", "--limit", "10")
    assert shown.code == 0
    assert "\x1b" not in shown.stdout and "evil\\n\\x1b[2Jx" in shown.stdout


# --- concurrency and failure -----------------------------------------------------------


def test_concurrent_commands_form_one_chain(tmp_path: Path, source: Path) -> None:
    site = Site(
        tmp_path,
        write_local_inventory(tmp_path, {"alpha": [source], "beta": [source]}),
        tmp_path / "pool",
    )
    assert site.cli("apply", "--auto-approve").code == 0
    commands = [
        ("backup", "alpha"),
        ("backup", "beta"),
        ("maintenance", "on"),
        ("jobs", "add", "check", "main"),
    ]
    processes = [site.process(*command) for command in commands]
    for process in processes:
        _out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()
    code, check = _verify(site)
    assert code == 0, check
    assert check["records"] == 2 + len(commands)
    assert {r["action"] for r in _records(site)} == {
        "apply",
        "backup",
        "maintenance.on",
        "jobs.add",
    }


def test_an_action_recorded_first_does_not_start_without_the_log(
    applied: Site, tmp_path: Path
) -> None:
    """With the log unwritable, a restore (it reads backed-up content) does not start;
    a backup goes on and says on stderr that its record was not written."""
    site = applied
    assert site.cli("backup", "alpha").code == 0
    site.sql("ALTER TABLE audit_records RENAME TO audit_records_away")
    try:
        target = tmp_path / "restored"
        refused = site.cli("restore", "alpha:latest", "--target", str(target))
        assert refused.code == 1
        assert (
            "audit log cannot be written, so restore of client:alpha did not start"
            in refused.stderr
        )
        assert not target.exists() or not any(target.iterdir())
        forget = site.cli("forget", "--client", "alpha")
        assert forget.code == 1 and "so forget of client:alpha did not start" in forget.stderr
        backup = site.cli("backup", "alpha")
        assert backup.code == 0
        assert "the audit log was not written: backup client:alpha ok" in backup.stderr
    finally:
        site.sql("ALTER TABLE audit_records_away RENAME TO audit_records")
    assert [r["action"] for r in _records(site)] == ["backup", "apply", "apply"]
    assert _verify(site)[0] == 0  # nothing was written meanwhile: the chain is whole
