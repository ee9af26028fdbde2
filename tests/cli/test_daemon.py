"""The site daemon for real: `costor serve` processes, the job queue in SQLite and
PostgreSQL, schedules, kill -9 of a worker, SIGTERM, maintenance, webhooks, self-tests,
`status` and `check` coverage."""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Site, tree_digest
from support.inventory import costor_table

from costor.db import queue as jobs
from costor.db.session import open_engine

SERVE = ("serve", "--tick", "0.2", "--retry-delay", "0")


def inventory(root: Path, source: Path, *, extra_policy: str = "", extra_site: str = "") -> Path:
    text = "\n".join(
        [
            costor_table(),
            "[sites.hq]",
            extra_site,
            "",
            "[pools.main]",
            'site = "hq"',
            'backend = "local"',
            'path = "pool"',
            'passphrase = { env = "COSTOR_TEST_PASSPHRASE" }',
            "pack_size_mib = 4",
            'prune = { schedule = "0 4 * * *", safety_window = "0" }',
            "",
            "[policies.nightly]",
            'schedule = "0 2 * * *"',
            "retention = { last = 2 }",
            'check = { schedule = "0 5 * * 0", read_data_subset = "34%" }',
            'selftest = { schedule = "0 6 * * *", files = 5 }',
            extra_policy,
            "",
            "[clients.alpha]",
            'site = "hq"',
            'pool = "main"',
            'policy = "nightly"',
            'transport = "local"',
            f"paths = [{json.dumps(str(source))}]",
        ]
    )
    path = root / "inventory.toml"
    path.write_text(text + "\n")
    return path


@pytest.fixture
def daemon_site(tmp_path: Path, source: Path) -> Site:
    site = Site(tmp_path, inventory(tmp_path, source), tmp_path / "pool")
    result = site.cli("apply", "--auto-approve", "--json")
    assert result.code == 0, result.stderr
    assert "backup:alpha" in result.json()["schedules"]["added"]
    return site


def make_due(site: Site, key: str, when: datetime | None = None) -> None:
    when = when or datetime.now(UTC) - timedelta(seconds=1)
    value: Any = when
    if site.database_url.startswith("sqlite"):  # as SQLAlchemy writes it: naive UTC
        value = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    site.sql("UPDATE schedules SET next_run = :t WHERE key = :k", t=value, k=key)


def job_rows(site: Site, *, cli: bool = False) -> list[dict[str, Any]]:
    """The jobs, oldest first; without ``cli``, not the backups run by `costor backup`
    (each is recorded as a job too: tests/cli/test_jobs_recorded.py)."""
    result = site.cli("jobs", "--json", "--limit", "500")
    assert result.code == 0, result.stderr
    return [job for job in reversed(result.json()) if cli or job["trigger"] != "cli"]


def wait_for(
    predicate: Any,
    timeout: float = 120,
    what: str = "",
    serve: Any = None,
    site: Any = None,
    every: float = 0.2,
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + diagnose(serve, site))


def writing(site: Site) -> bool:
    """Whether a backup has put a first pack in the (empty) pool: it is mid-write."""
    return any(path.is_file() for path in (site.pool_path / "packs").rglob("*"))


def running_job(site: Site) -> Any:
    """``[(id, pid)]`` of the running job once its process has said its pid, else None."""
    rows = site.sql("SELECT id, pid FROM jobs WHERE state = 'running'")
    return rows if rows and rows[0][1] else None


def diagnose(serve: Any, site: Any) -> str:
    """What the daemon and its jobs said, for a test that timed out waiting on them."""
    parts = []
    if site is not None:
        parts.append("jobs: " + json.dumps(job_rows(site), indent=1, default=str))
        for log in sorted((site.root / ".costor" / "logs").glob("job-*.log")):
            parts.append(f"{log.name}:\n{log.read_text(errors='replace')[-4000:]}")
    if serve is not None and serve.poll() is None:
        serve.kill()
        _, err = serve.communicate(timeout=30)
        parts.append("serve stderr:\n" + err.decode(errors="replace")[-8000:])
    return "\n" + "\n".join(parts)


def test_apply_keeps_schedules_and_a_removed_client_loses_its(daemon_site: Site) -> None:
    rows = daemon_site.sql("SELECT key, kind, target, cron FROM schedules ORDER BY key")
    assert rows == [
        ("backup:alpha", "backup", "alpha", "0 2 * * *"),
        ("check:main:nightly", "check", "main", "0 5 * * 0"),
        ("prune:main", "prune", "main", "0 4 * * *"),
        ("selftest:alpha", "selftest", "alpha", "0 6 * * *"),
    ]
    (next_run,) = daemon_site.sql("SELECT next_run FROM schedules WHERE key = 'backup:alpha'")[0]
    again = daemon_site.cli("apply", "--auto-approve", "--json").json()
    assert again["schedules"] == {"added": [], "changed": [], "removed": []}
    assert daemon_site.sql("SELECT next_run FROM schedules WHERE key = 'backup:alpha'")[0] == (
        next_run,
    )
    # A queued run of the client goes with it.
    make_due(daemon_site, "backup:alpha")
    engine = open_engine(daemon_site.database_url)
    assert len(jobs.enqueue_due(engine)) == 1
    text = daemon_site.inventory.read_text()
    daemon_site.inventory.write_text(text[: text.index("[clients.alpha]")])
    removed = daemon_site.cli("apply", "--auto-approve", "--json")
    assert removed.code == 0, removed.stderr
    # The pool's check came from alpha's policy: it goes too; the pool's prune stays.
    assert set(removed.json()["schedules"]["removed"]) == {
        "backup:alpha",
        "selftest:alpha",
        "check:main:nightly",
    }
    assert [r["state"] for r in job_rows(daemon_site)] == ["cancelled"]


def test_missed_runs_run_once_and_each_run_is_queued_once(daemon_site: Site) -> None:
    engine = open_engine(daemon_site.database_url)
    make_due(daemon_site, "backup:alpha", datetime.now(UTC) - timedelta(days=3))
    # Several schedulers ticking at the same moment (threads here; processes below).
    now = datetime.now(UTC)
    results: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda: results.append(jobs.enqueue_due(engine, now)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]  # three missed nights: one run
    (next_run,) = daemon_site.sql("SELECT next_run FROM schedules WHERE key = 'backup:alpha'")[0]
    if isinstance(next_run, str):
        next_run = datetime.fromisoformat(next_run)
    assert next_run.replace(tzinfo=UTC) > now
    # While that run is still queued, a new slot queues nothing more.
    make_due(daemon_site, "backup:alpha")
    assert jobs.enqueue_due(engine) == []


def test_serve_runs_due_jobs_backup_then_forget(daemon_site: Site, source: Path) -> None:
    make_due(daemon_site, "backup:alpha")
    result = daemon_site.run_process(*SERVE, "--once")
    assert result.code == 0, result.stderr
    rows = job_rows(daemon_site)
    assert [(r["kind"], r["state"], r["trigger"]) for r in rows] == [
        ("backup", "succeeded", "schedule"),
        ("forget", "succeeded", "after-backup"),
    ]
    assert rows[0]["result"]["snapshot_id"] and rows[0]["attempt"] == 1
    snapshots = daemon_site.cli("snapshots", "--json").json()
    assert [s["id"] for s in snapshots] == [rows[0]["result"]["snapshot_id"]]
    status = daemon_site.cli("status", "--json").json()
    [alpha] = status["clients"]
    assert alpha["last_backup_job"]["state"] == "succeeded" and alpha["age_s"] < 120
    assert alpha["rpo_s"] == 2 * 86400  # twice the schedule's interval
    assert alpha["health"] == "warning"  # never checked, never self-tested yet
    assert status["instances"] == []  # serve --once has exited


def test_a_worker_killed_mid_backup_is_retried_and_the_pool_is_clean(
    daemon_site: Site, source: Path, tmp_path: Path
) -> None:
    (source / "big.bin").write_bytes(os.urandom(200 * 1024 * 1024))  # about a second's work
    assert not writing(daemon_site)
    daemon_site.cli("jobs", "add", "backup", "alpha")
    serve = daemon_site.process(*SERVE)
    try:
        [(job_id, pid)] = wait_for(
            lambda: running_job(daemon_site),
            what="the backup to start",
            serve=serve,
            site=daemon_site,
        )
        # Kill it in the middle of writing: as soon as its first pack is in the pool (the
        # whole backup takes about a second, so a fixed sleep can miss it: it did in CI).
        wait_for(lambda: writing(daemon_site), 60, "a first pack", serve, daemon_site, 0.005)
        os.kill(pid, signal.SIGKILL)

        def retried() -> Any:
            rows = job_rows(daemon_site)
            assert rows[0]["state"] != "succeeded", "the kill came after the backup finished"
            return len(rows) >= 2 and rows[1]["state"] == "succeeded" and rows

        rows = wait_for(retried, what="the retry to succeed", serve=serve, site=daemon_site)
        assert serve.poll() is None  # the daemon is still up
    finally:
        serve.send_signal(signal.SIGTERM)
        out, err = serve.communicate(timeout=120)
    assert serve.returncode == 0, err.decode()
    assert rows[0]["state"] == "interrupted" and "signal 9" in rows[0]["error"]
    assert rows[1]["trigger"] == "retry" and rows[1]["attempt"] == 2
    check = daemon_site.cli("check", "--read-data", "--json")
    assert check.code == 0, check.stdout
    target = tmp_path / "restored"
    restore = daemon_site.cli("restore", "alpha:latest", "--target", str(target))
    assert restore.code == 0, restore.stderr
    assert tree_digest(target / str(source).lstrip("/")) == tree_digest(source)


def test_sigterm_lets_the_running_job_finish(daemon_site: Site, source: Path) -> None:
    (source / "big.bin").write_bytes(os.urandom(300 * 1024 * 1024))
    daemon_site.cli("jobs", "add", "backup", "alpha")
    serve = daemon_site.process(*SERVE, "--grace", "300")
    wait_for(lambda: writing(daemon_site), 120, "a first pack", serve, daemon_site, 0.005)
    signalled = datetime.now(UTC)
    serve.send_signal(signal.SIGTERM)
    daemon_site.cli("jobs", "add", "selftest", "alpha")  # queued: must not start now
    out, err = serve.communicate(timeout=300)
    assert serve.returncode == 0, err.decode()
    assert b"starting no new jobs" in err
    rows = job_rows(daemon_site)
    assert [(r["kind"], r["state"]) for r in rows] == [
        ("backup", "succeeded"),
        ("selftest", "queued"),
    ]
    assert datetime.fromisoformat(rows[0]["finished_at"]) > signalled  # it ran on, to the end


def test_sigterm_after_the_grace_interrupts_and_requeues(daemon_site: Site, source: Path) -> None:
    (source / "big.bin").write_bytes(os.urandom(300 * 1024 * 1024))
    daemon_site.cli("jobs", "add", "backup", "alpha")
    serve = daemon_site.process(*SERVE, "--grace", "0")
    wait_for(lambda: writing(daemon_site), 120, "a first pack", serve, daemon_site, 0.005)
    serve.send_signal(signal.SIGTERM)
    out, err = serve.communicate(timeout=120)
    assert serve.returncode == 0, err.decode()
    rows = job_rows(daemon_site)
    assert [(r["kind"], r["state"]) for r in rows] == [
        ("backup", "interrupted"),
        ("backup", "queued"),
    ]
    assert "SIGTERM" in rows[0]["error"]
    # The next daemon takes the retry and the pool checks clean.
    result = daemon_site.run_process(*SERVE, "--once")
    assert result.code == 0, result.stderr
    assert job_rows(daemon_site)[1]["state"] == "succeeded"
    assert daemon_site.cli("check", "--json").code == 0


def test_maintenance_starts_no_new_jobs(daemon_site: Site) -> None:
    on = daemon_site.cli("maintenance", "on", "--reason", "disk swap", "--json")
    assert on.code == 0 and on.json()["sites"][0]["maintenance"] is True
    daemon_site.cli("jobs", "add", "backup", "alpha")
    serve = daemon_site.process(*SERVE)
    time.sleep(3)
    assert [r["state"] for r in job_rows(daemon_site)] == ["queued"]
    status = daemon_site.cli("status", "--json").json()
    assert status["sites"][0]["maintenance"] is True and len(status["instances"]) == 1
    assert daemon_site.cli("maintenance", "off").code == 0
    wait_for(lambda: job_rows(daemon_site)[0]["state"] == "succeeded", what="the backup")
    serve.send_signal(signal.SIGTERM)
    serve.communicate(timeout=60)
    assert serve.returncode == 0


def test_maintenance_in_the_inventory(tmp_path: Path, source: Path) -> None:
    site = Site(tmp_path, inventory(tmp_path, source, extra_site="maintenance = true"), tmp_path)
    assert site.cli("apply", "--auto-approve").code == 0
    site.cli("jobs", "add", "backup", "alpha")
    assert site.run_process(*SERVE, "--once").code == 0
    assert [r["state"] for r in job_rows(site)] == ["queued"]
    assert "maintenance = true in the inventory" in site.cli("maintenance").stdout


def test_a_second_serve_on_sqlite_is_refused(daemon_site: Site) -> None:
    if not daemon_site.database_url.startswith("sqlite"):
        pytest.skip("SQLite only: on PostgreSQL several instances are the point")
    first = daemon_site.process(*SERVE)
    try:
        wait_for(lambda: daemon_site.cli("status", "--json").json()["instances"], what="serve")
        second = daemon_site.run_process(*SERVE)
        assert second.code == 1
        assert "Another `costor serve`" in second.stderr and "PostgreSQL" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


def test_two_instances_on_postgresql_run_each_job_once(daemon_site: Site) -> None:
    if daemon_site.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL only")
    serves = [daemon_site.process(*SERVE) for _ in range(2)]
    try:
        wait_for(
            lambda: len(daemon_site.cli("status", "--json").json()["instances"]) == 2,
            what="two instances",
        )

        def backups_done(count: int) -> bool:
            rows = job_rows(daemon_site)
            return sum(r["kind"] == "backup" and r["state"] == "succeeded" for r in rows) == count

        for round_ in range(3):
            make_due(daemon_site, "backup:alpha")
            wait_for(lambda n=round_ + 1: backups_done(n), what=f"backup {round_ + 1}")
        for _ in range(4):  # manual jobs, claimed by whichever instance is first
            daemon_site.cli("jobs", "add", "check", "main")
        wait_for(
            lambda: (
                sum(
                    r["kind"] == "check" and r["state"] == "succeeded"
                    for r in job_rows(daemon_site)
                )
                == 4
            ),
            what="the checks",
        )
        time.sleep(2)  # time enough for a duplicate to show
    finally:
        for serve in serves:
            serve.send_signal(signal.SIGTERM)
        for serve in serves:
            serve.communicate(timeout=120)
    rows = job_rows(daemon_site)
    backups = [r for r in rows if r["kind"] == "backup"]
    assert len(backups) == 3 and all(r["attempt"] == 1 for r in backups)
    assert len({r["instance"] for r in rows}) == 2  # both instances took work
    assert len(daemon_site.cli("snapshots", "--json").json()) == 2  # retention: last 2
    assert all(s.returncode == 0 for s in serves)


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TEST_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook?token=s3cret")
    yield Receiver.received
    server.shutdown()


def test_webhooks_on_failure_and_success(
    tmp_path: Path, source: Path, webhook: list[dict[str, Any]]
) -> None:
    notify = 'notify = { webhook = { env = "TEST_WEBHOOK" }, on = ["failure", "success"] }'
    site = Site(tmp_path, inventory(tmp_path, source, extra_policy=notify), tmp_path / "pool")
    plan = site.cli("plan", "--json")
    assert "s3cret" not in plan.stdout
    assert site.cli("apply", "--auto-approve").code == 0
    site.cli("jobs", "add", "selftest", "alpha")  # no snapshot yet: fails
    assert site.run_process(*SERVE, "--once").code == 0
    site.cli("jobs", "add", "backup", "alpha")
    assert site.run_process(*SERVE, "--once").code == 0
    events = [(h["event"], h["job"]["kind"], h["job"]["state"]) for h in webhook]
    assert events == [("failure", "selftest", "failed"), ("success", "backup", "succeeded")]
    assert "no snapshot yet" in webhook[0]["job"]["error"]
    assert webhook[1]["job"]["result"]["snapshot_id"]
    rows = job_rows(site)
    assert all("s3cret" not in json.dumps(r) for r in rows)
    assert site.cli("status", "--json").json()["clients"][0]["health"] == "critical"


def test_an_unreachable_webhook_does_not_change_the_outcome(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WEBHOOK", "http://127.0.0.1:9/hook?token=s3cret")  # discard port
    notify = 'notify = { webhook = { env = "TEST_WEBHOOK" }, on = ["success"], timeout_s = 2 }'
    site = Site(tmp_path, inventory(tmp_path, source, extra_policy=notify), tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    site.cli("jobs", "add", "backup", "alpha")
    assert site.run_process(*SERVE, "--once").code == 0
    [row] = job_rows(site)
    assert row["state"] == "succeeded"
    assert "notification: webhook http://127.0.0.1 not reached" in row["error"]
    assert "s3cret" not in row["error"]


def test_selftest_passes_then_catches_damage(daemon_site: Site, source: Path) -> None:
    assert daemon_site.cli("backup", "alpha").code == 0
    ok = daemon_site.cli("jobs", "add", "selftest", "alpha", "--json").json()["id"]
    assert daemon_site.cli("jobs", "run", str(ok)).code == 0
    [row] = job_rows(daemon_site)
    assert row["state"] == "succeeded" and row["result"]["files_checked"] == 3
    assert row["result"]["compared_with_source"] == 3 and row["result"]["ok"] is True
    # Flip a byte in every data pack: the restore fails to authenticate.
    for pack in (daemon_site.pool_path / "packs").rglob("*"):
        if pack.is_file() and pack.stat().st_size > 100_000:
            data = bytearray(pack.read_bytes())
            data[1000] ^= 0xFF
            pack.write_bytes(bytes(data))
    bad = daemon_site.cli("jobs", "add", "selftest", "alpha", "--json").json()["id"]
    assert daemon_site.cli("jobs", "run", str(bad)).code == 1
    row = job_rows(daemon_site)[-1]
    assert row["state"] == "failed" and "Self-test of alpha failed" in row["error"]
    assert row["result"]["failures"]
    status = daemon_site.cli("status", "--json").json()
    assert status["health"] == "critical"
    assert any("self-test failed" in p for p in status["clients"][0]["problems"])


def test_subset_checks_cover_the_pool_least_recently_verified_first(
    daemon_site: Site, source: Path
) -> None:
    for i in range(3):
        (source / f"more{i}.bin").write_bytes(os.urandom(5 * 1024 * 1024))
        assert daemon_site.cli("backup", "alpha").code == 0
    packs = {p.name for p in (daemon_site.pool_path / "packs").rglob("*") if p.is_file()}
    seen: list[set[str]] = []
    for _ in range(3):  # 34% each: three runs read every pack once
        before = dict(daemon_site.sql("SELECT pack_id, last_verified FROM packs"))
        result = daemon_site.cli("check", "--read-data-subset", "34%", "--json")
        assert result.code == 0, result.stdout
        after = dict(daemon_site.sql("SELECT pack_id, last_verified FROM packs"))
        seen.append({p for p in after if after[p] != before.get(p)})
    assert all(seen) and set().union(*seen) == packs
    assert not seen[0] & seen[1]  # no pack read twice before every pack was read once
    assert not (seen[0] | seen[1]) & (seen[2] - seen[0])  # then the oldest ones again


def test_prune_cli_reclaims_after_forget(daemon_site: Site, source: Path, tmp_path: Path) -> None:
    (source / "gone.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    assert daemon_site.cli("backup", "alpha").code == 0
    (source / "gone.bin").unlink()
    for _ in range(2):
        assert daemon_site.cli("backup", "alpha").code == 0
    forget = daemon_site.cli("forget", "--json")
    assert forget.code == 0, forget.stderr
    dry = daemon_site.cli("prune", "--dry-run", "--json").json()["pools"][0]
    assert dry["packs_condemned"] > 0 and dry["packs_deleted"] == 0
    result = daemon_site.cli("prune", "--json")  # the pool's safety_window is 0
    assert result.code == 0, result.stderr
    report = result.json()["pools"][0]
    # gone.bin shared packs with other files: whole packs go, and a pack still mostly
    # needed stays (below the 50% repack threshold).
    assert report["bytes_unused"] > 3 * 1024 * 1024 * 0.9
    assert report["bytes_reclaimed"] > 1024 * 1024
    assert daemon_site.cli("check", "--read-data").code == 0
    target = tmp_path / "restored"
    assert daemon_site.cli("restore", "alpha:latest", "--target", str(target)).code == 0
    assert tree_digest(target / str(source).lstrip("/")) == tree_digest(source)
    human = daemon_site.cli("prune", "--safety-window", "1h")
    assert human.code == 0 and "reclaimed" in human.stdout
    usage = daemon_site.cli("prune", "--repack-threshold", "150%")
    assert usage.code != 0


def test_status_reports_a_late_client(daemon_site: Site) -> None:
    assert daemon_site.cli("backup", "alpha").code == 0
    old = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    daemon_site.sql("UPDATE snapshots SET time = :t", t=old)
    status = daemon_site.cli("status", "--json").json()
    [alpha] = status["clients"]
    assert alpha["health"] == "critical" and alpha["age_s"] > 2 * 86400
    assert any("RPO" in p for p in alpha["problems"])
    human = daemon_site.cli("status")
    assert "critical" in human.stdout and "RPO 2.0d" in human.stdout


def test_prune_while_a_backup_writes_loses_nothing(
    daemon_site: Site, source: Path, tmp_path: Path
) -> None:
    """Processes, not threads: prunes with a zero window run again and again while a
    backup writes new packs and reuses data that was just forgotten."""
    (source / "old.bin").write_bytes(os.urandom(20 * 1024 * 1024))
    assert daemon_site.cli("backup", "alpha").code == 0
    first = daemon_site.cli("snapshots", "--json").json()[0]["id"]
    # Forget it by hand (retention keeps 2): its data is unreferenced, but the next
    # backup of the same tree will want it again.
    from support.fixtures import PASSPHRASE

    from costor.store.backends import LocalBackend
    from costor.store.pool import Pool

    Pool.open(LocalBackend(daemon_site.pool_path), PASSPHRASE).delete_snapshot(first)
    daemon_site.sql("DELETE FROM snapshots WHERE id = :i", i=first)
    (source / "new.bin").write_bytes(os.urandom(150 * 1024 * 1024))
    backup = daemon_site.process("backup", "alpha", "--json")
    prunes = 0
    while backup.poll() is None:
        result = daemon_site.run_process("prune", "--safety-window", "0", "--json")
        assert result.code == 0, result.stderr
        prunes += 1
    out, err = backup.communicate()
    assert backup.returncode == 0, err.decode()
    assert prunes >= 1
    # The backup reused old.bin's data, condemned meanwhile: it is taken back, not lost.
    final = daemon_site.run_process("prune", "--safety-window", "0", "--json")
    assert final.code == 0, final.stderr
    check = daemon_site.cli("check", "--read-data", "--json")
    assert check.code == 0, check.stdout
    target = tmp_path / "restored"
    assert daemon_site.cli("restore", "alpha:latest", "--target", str(target)).code == 0
    assert tree_digest(target / str(source).lstrip("/")) == tree_digest(source)


def test_a_job_left_running_by_a_dead_daemon_is_retried(daemon_site: Site) -> None:
    """kill -9 of a whole daemon and its worker: the row still says running, and nothing
    beats for it. The next daemon interrupts it and runs the retry."""
    engine = open_engine(daemon_site.database_url)
    job_id = jobs.enqueue(engine, "backup", "alpha", site="hq")
    claimed = jobs.claim(engine, "gone-host:1:dead")
    assert claimed is not None and claimed.id == job_id
    old = datetime.now(UTC) - timedelta(minutes=5)
    value: Any = old
    if daemon_site.database_url.startswith("sqlite"):
        value = old.strftime("%Y-%m-%d %H:%M:%S.%f")
    daemon_site.sql("UPDATE jobs SET heartbeat_at = :t WHERE id = :i", t=value, i=job_id)
    result = daemon_site.run_process(*SERVE, "--once")
    assert result.code == 0, result.stderr
    rows = job_rows(daemon_site)
    assert [(r["kind"], r["state"], r["trigger"]) for r in rows[:2]] == [
        ("backup", "interrupted", "manual"),
        ("backup", "succeeded", "retry"),
    ]
    assert "stopped (killed or crashed)" in rows[0]["error"]
    assert rows[1]["attempt"] == 2


def test_jobs_are_forked_from_the_daemon_and_outlive_it_holding_none_of_its_locks(
    daemon_site: Site, source: Path
) -> None:
    """A job is a fork of the daemon (its imports and pool keys, no new interpreter): its
    command line is the daemon's. kill -9 of the daemon leaves it running to its end,
    and on SQLite a new daemon can start meanwhile: the job holds no lock of the old."""
    (source / "big.bin").write_bytes(os.urandom(200 * 1024 * 1024))
    daemon_site.cli("jobs", "add", "backup", "alpha")
    serve = daemon_site.process(*SERVE)
    try:
        [(job_id, pid)] = wait_for(
            lambda: running_job(daemon_site), what="the backup", serve=serve, site=daemon_site
        )
        job_argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        serve_argv = Path(f"/proc/{serve.pid}/cmdline").read_bytes().split(b"\0")
        assert job_argv == serve_argv and b"serve" in job_argv
        os.kill(serve.pid, signal.SIGKILL)
        serve.communicate(timeout=60)
        successor = daemon_site.process(*SERVE)
        try:
            wait_for(
                lambda: job_rows(daemon_site)[0]["state"] == "succeeded",
                what="the orphaned job to finish",
                serve=successor,
                site=daemon_site,
            )
            assert successor.poll() is None, successor.communicate()[1].decode()
        finally:
            successor.send_signal(signal.SIGTERM)
            successor.communicate(timeout=120)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()
    [row] = job_rows(daemon_site)
    assert row["id"] == job_id and row["attempt"] == 1 and row["result"]["snapshot_id"]
    assert daemon_site.cli("check", "--json").code == 0


def test_a_daemon_that_loaded_a_large_index_forks_jobs_that_finish(
    daemon_site: Site, source: Path
) -> None:
    """The daemon loads each pool's index at start (kept between jobs); hashing a large
    segment there once started BLAKE3's thread pool, and every forked job then hung in
    its first pack's hash (util/hashthreads.py)."""
    many = source / "many"
    many.mkdir()
    for number in range(4000):
        (many / f"{number}.txt").write_bytes(os.urandom(64))
    assert daemon_site.cli("backup", "alpha").code == 0
    segments = [p for p in (daemon_site.pool_path / "index").rglob("*") if p.is_file()]
    assert max(p.stat().st_size for p in segments) > 128 * 1024  # threaded when hashed
    (source / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # packs to hash
    daemon_site.cli("jobs", "add", "backup", "alpha")
    serve = daemon_site.process(*SERVE)
    try:
        wait_for(
            lambda: job_rows(daemon_site)[-1]["state"] == "succeeded",
            60,
            "the job forked after the index was loaded",
            serve,
            daemon_site,
        )
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            serve.communicate(timeout=120)
    assert daemon_site.cli("check", "--json").code == 0
