"""Every backup is a job, whoever started it; a job records its own outcome, and one
whose process still runs is never taken for dead (so never run twice); `status` says
when no daemon runs and why a site is in maintenance."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from support.fixtures import Site

from costor.db import queue as jobs
from costor.db.session import open_engine


def test_a_backup_from_the_cli_is_a_job_in_jobs_and_status(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    [job] = applied.cli("jobs", "--json").json()
    assert (job["kind"], job["target"], job["state"], job["trigger"]) == (
        "backup",
        "alpha",
        "succeeded",
        "cli",
    )
    assert job["result"]["snapshot_id"]
    status = applied.cli("status", "--json").json()
    assert status["clients"][0]["last_backup_job"]["id"] == job["id"]

    listing = applied.cli("jobs")
    header, row = listing.stdout.splitlines()
    assert header.split()[:6] == ["ID", "STARTED", "(UTC)", "KIND", "TARGET", "STATE"]
    assert "succeeded" in row and "cli" in row


def test_a_failed_backup_from_the_cli_is_recorded_as_failed(
    applied: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "not the passphrase")
    result = applied.cli("backup", "alpha")
    assert result.code == 1 and "Wrong passphrase" in result.stderr
    [job] = applied.cli("jobs", "--json").json()
    assert job["state"] == "failed" and "Wrong passphrase" in job["error"]
    [client] = applied.cli("status", "--json").json()["clients"]
    assert client["last_backup_job"]["state"] == "failed"
    assert any("last backup job failed" in p for p in client["problems"])
    # Not retried by a daemon: a run from a terminal is its operator's to repeat.
    assert applied.sql("SELECT count(*) FROM jobs WHERE state = 'queued'") == [(0,)]


def _old(site: Site, when: datetime) -> object:
    if site.database_url.startswith("sqlite"):  # as SQLAlchemy writes it: naive UTC
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return when


def test_a_late_heartbeat_of_a_live_process_is_not_death(applied: Site) -> None:
    """The process is alive on this host: however late its heartbeat, recover leaves
    it running (it was once taken for dead on a loaded machine and run again)."""
    engine = open_engine(applied.database_url)
    try:
        job_id = jobs.enqueue(engine, "backup", "alpha")
        claimed = jobs.claim_job(engine, job_id, jobs.claimant("serve"))
        assert claimed is not None
        jobs.heartbeat(engine, job_id, pid=os.getpid())
        long_ago = datetime.now(UTC) - timedelta(minutes=10)
        applied.sql(
            "UPDATE jobs SET heartbeat_at = :t WHERE id = :i", t=_old(applied, long_ago), i=job_id
        )
        assert jobs.recover(engine) == []
        # A PID that does not run (or ran since before the job) is a dead process.
        applied.sql("UPDATE jobs SET pid = :p WHERE id = :i", p=2**22 + 1, i=job_id)
        assert jobs.recover(engine, retry_delay=3600) == [job_id]
    finally:
        engine.dispose()


def test_a_job_taken_for_dead_that_completes_keeps_its_outcome_and_is_not_rerun(
    applied: Site,
) -> None:
    engine = open_engine(applied.database_url)
    try:
        job_id = jobs.enqueue(engine, "backup", "alpha")
        assert jobs.claim_job(engine, job_id, "otherhost:1:abc") is not None  # not seen here
        long_ago = datetime.now(UTC) - timedelta(minutes=10)
        applied.sql(
            "UPDATE jobs SET heartbeat_at = :t WHERE id = :i", t=_old(applied, long_ago), i=job_id
        )
        assert jobs.recover(engine, retry_delay=3600) == [job_id]
        rows = applied.sql("SELECT state, trigger FROM jobs ORDER BY id")
        assert rows == [("interrupted", "manual"), ("queued", "retry")]
        # ...but it ran on, and now finishes: its outcome is recorded, the retry dropped.
        finished = jobs.finish(engine, job_id, "succeeded", result={"snapshot_id": "x"})
        assert finished is not None and finished.state == "succeeded"
        rows = applied.sql("SELECT id, state FROM jobs ORDER BY id")
        assert rows == [(job_id, "succeeded")]
    finally:
        engine.dispose()


def test_status_reports_no_daemon_and_the_maintenance_reason(applied: Site) -> None:
    status = applied.cli("status", "--json").json()
    # No policy, so nothing is scheduled: a warning, not yet critical.
    assert status["health"] == "warning"
    assert any("no `costor serve` is running" in p for p in status["problems"])
    assert status["instances"] == []

    assert applied.cli("maintenance", "on", "--reason", "disk swap until 14:00").code == 0
    status = applied.cli("status", "--json").json()
    [site] = status["sites"]
    assert site["maintenance"] is True and site["maintenance_reason"] == "disk swap until 14:00"
    human = applied.cli("status").stdout
    assert "maintenance: disk swap until 14:00" in human
    assert "no `costor serve` is running" in human
    shown = applied.cli("maintenance")
    assert "site hq: maintenance on (disk swap until 14:00)" in shown.stdout
