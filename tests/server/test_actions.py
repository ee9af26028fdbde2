"""The routes that change things, against a real `costor serve` (its daemon runs the
jobs they queue): back up now, cancel a queued and a running job, maintenance on and
off, check / prune / forget now; each audited as the token that asked. SQLite and
(the suite's PostgreSQL pass) PostgreSQL."""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables

from costor.cli.main import main

USERS = """
[groups.admins]
roles = ["admin"]

[groups.ops]
roles = ["operator"]

[users.ada]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.otto]
groups = ["ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""
ENDED = ("succeeded", "failed", "interrupted", "cancelled")


class Served:
    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site = site
        self.process = process
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.token = ""

    def ask(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.http.request(method, url, headers=headers, **kwargs)

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.ask("GET", f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_job(self, job_id: int, states: tuple[str, ...], timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} is still {self.job(job_id)['state']}")

    def maintenance(self, on: bool) -> None:
        body = {"on": on, "reason": "a test"} if on else {"on": False}
        response = self.ask("PUT", "/api/v1/maintenance", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["sites"][0]["maintenance"] is on


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    sources = {}
    for name in ("alpha", "beta"):
        source = tmp_path / f"src-{name}"
        source.mkdir()
        (source / "file.txt").write_text(f"{name}\n" * 100)
        sources[name] = [source]
    inventory = write_tables(tmp_path, *local_tables(sources), USERS)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    process, base_url = start_serve(site)
    served = Served(site, base_url, process)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(
            ["token", "create", "-c", str(inventory), "--user", "otto", "--scope", "operate"]
        )
    assert code == 0, err.getvalue()
    served.token = out.getvalue().strip()
    try:
        yield served
    finally:
        served.http.close()
        stop_serve(process)


def test_backup_now_is_a_job_the_daemon_runs(served: Served) -> None:
    response = served.ask("POST", "/api/v1/clients/alpha/backup")
    assert response.status_code == 202, response.text
    queued = response.json()
    assert (queued["kind"], queued["target"], queued["trigger"]) == ("backup", "alpha", "manual")
    assert response.headers["Location"] == f"/api/v1/jobs/{queued['id']}"
    done = served.wait_job(queued["id"], ENDED)
    assert done["state"] == "succeeded", done["error"]
    snapshots = served.ask("GET", "/api/v1/snapshots", params={"client": "alpha"}).json()
    assert [s["id"] for s in snapshots] == [done["result"]["snapshot_id"]]
    # Audited as the token that asked, from its address, under the request's id.
    token_id = served.token.split("_")[1]
    records = served.site.cli("audit", "--json", "--action", "jobs.add").json()
    [record] = [r for r in records if r["actor"] == f"token:{token_id}"]
    assert record["target"] == "client:alpha" and record["source"] == "127.0.0.1"
    assert record["request_id"] == response.headers["X-Request-Id"]
    unknown = served.ask("POST", "/api/v1/clients/nobody/backup")
    assert unknown.status_code == 404 and unknown.json()["error"] == "UnknownResource"


def test_maintenance_on_holds_new_jobs_until_off(served: Served) -> None:
    served.maintenance(True)
    shown = served.ask("GET", "/api/v1/maintenance").json()
    assert shown["sites"] == [
        {"site": "hq", "maintenance": True, "by_inventory": False, "reason": "a test"}
    ]
    job = served.ask("POST", "/api/v1/clients/beta/backup").json()
    time.sleep(2)  # ten ticks of the daemon
    assert served.job(job["id"])["state"] == "queued"
    served.maintenance(False)
    assert served.wait_job(job["id"], ENDED)["state"] == "succeeded"


def test_a_cancelled_queued_job_never_runs(served: Served) -> None:
    served.maintenance(True)
    job = served.ask("POST", "/api/v1/clients/alpha/backup").json()
    cancelled = served.ask("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    token_id = served.token.split("_")[1]
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["error"] == f"cancelled by token:{token_id}"
    served.maintenance(False)
    time.sleep(2)
    assert served.job(job["id"])["state"] == "cancelled"
    assert served.ask("GET", "/api/v1/snapshots").json() == []
    again = served.ask("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "JobNotCancellable"
    assert served.ask("POST", "/api/v1/jobs/999999/cancel").status_code == 404
    records = served.site.cli("audit", "--json", "--action", "jobs.cancel").json()
    assert [r["outcome"] for r in records] == ["failed", "ok"]  # newest first


def test_a_cancelled_running_job_is_stopped_and_not_retried(served: Served) -> None:
    (served.site.root / "src-beta" / "big.bin").write_bytes(os.urandom(300 * 1024 * 1024))
    job = served.ask("POST", "/api/v1/clients/beta/backup").json()
    running = served.wait_job(job["id"], ("running", *ENDED))
    assert running["state"] == "running", "the backup ended before it could be cancelled"
    pid = _wait(lambda: _pid(served.site, job["id"]), "the job's process")
    response = served.ask("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    _wait(lambda: not Path(f"/proc/{pid}").exists(), "the job's process to stop")
    time.sleep(1)  # a retry, if one were queued, would show now
    jobs = served.ask("GET", "/api/v1/jobs").json()
    assert [(j["id"], j["state"]) for j in jobs] == [(job["id"], "cancelled")]
    log = (served.site.root / ".costor" / "logs" / f"job-{job['id']}.log").read_text()
    assert "SIGTERM" in log, log
    # The client backs up again afterwards.
    again = served.ask("POST", "/api/v1/clients/beta/backup").json()
    assert served.wait_job(again["id"], ENDED)["state"] == "succeeded"


def test_check_forget_prune_now_and_the_cli_cancel(served: Served) -> None:
    backup = served.ask("POST", "/api/v1/clients/alpha/backup").json()
    served.wait_job(backup["id"], ENDED)
    for route, kind in [
        ("/api/v1/pools/main/check", "check"),
        ("/api/v1/clients/alpha/forget", "forget"),
        ("/api/v1/pools/main/prune", "prune"),
        ("/api/v1/clients/alpha/selftest", "selftest"),
    ]:
        response = served.ask("POST", route)
        assert response.status_code == 202, (route, response.text)
        job = served.wait_job(response.json()["id"], ENDED)
        assert (job["kind"], job["state"]) == (kind, "succeeded"), job["error"]
    assert served.ask("POST", "/api/v1/pools/nowhere/prune").status_code == 404
    # costor jobs cancel, the same use case.
    served.maintenance(True)
    queued = served.site.cli("jobs", "add", "backup", "beta", "--json").json()
    cancelled = served.site.cli("jobs", "cancel", str(queued["id"]))
    assert cancelled.code == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    assert served.job(queued["id"])["state"] == "cancelled"


def _pid(site: Site, job_id: int) -> int | None:
    rows = site.sql("SELECT pid FROM jobs WHERE id = :id AND state = 'running'", id=job_id)
    return int(rows[0][0]) if rows and rows[0][0] else None


def _wait(predicate: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
