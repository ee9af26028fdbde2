"""The routes that read what the site recorded, against a real `costor serve`: a job's
log (over the API and `costor jobs log`), the applies and the sites, the audit log and
its verification; who may read each. SQLite and (the suite's PostgreSQL pass)
PostgreSQL.

One served site for the module (each test adds to its state; the tampering test is
last)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables

from costor.errors import UsageError

USERS = """
[groups.admins]
roles = ["admin"]

[groups.ops]
roles = ["operator"]

[groups.auditors]
roles = ["auditor"]

[groups.enid]
roles = ["end-user"]
clients = ["beta"]

[groups.beta-ops]
roles = ["operator"]
clients = ["beta"]

[users.ada]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.otto]
groups = ["ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.aud]
groups = ["auditors"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.enid]
groups = ["enid"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.bea]
groups = ["beta-ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""
ENDED = ("succeeded", "failed", "interrupted", "cancelled")
SCOPES = {"ada": "admin", "otto": "operate", "aud": "read", "enid": "read", "bea": "read"}


class Served:
    def __init__(self, site: Site, base_url: str) -> None:
        self.site = site
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.tokens: dict[str, str] = {}

    def ask(self, who: str, url: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.http.request(method, url, headers=headers, **kwargs)

    def get(self, who: str, url: str, **params: Any) -> Any:
        response = self.ask(who, url, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def token_id(self, who: str) -> str:
        return self.tokens[who].split("_")[1]

    def backup(self, client: str) -> dict[str, Any]:
        response = self.ask("otto", f"/api/v1/clients/{client}/backup", method="POST")
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = self.get("otto", f"/api/v1/jobs/{job_id}")
            if job["state"] in ENDED:
                assert job["state"] == "succeeded", job["error"]
                return dict(job)
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not end")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    saved = {key: os.environ.get(key) for key in ENV}
    os.environ.update(ENV)
    tmp_path = tmp_path_factory.mktemp("records")
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
    served = Served(site, base_url)
    try:
        for user, scope in SCOPES.items():
            made = site.cli("token", "create", "--user", user, "--scope", scope)
            assert made.code == 0, made.stderr
            served.tokens[user] = made.stdout.strip()
        yield served
    finally:
        served.http.close()
        stop_serve(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- a job's log ---------------------------------------------------------------------


def test_a_backup_jobs_log_over_the_api(served: Served) -> None:
    job = served.backup("alpha")
    log = served.get("otto", f"/api/v1/jobs/{job['id']}/log")
    assert (log["job"], log["state"], log["ended"], log["more"]) == (
        job["id"],
        "succeeded",
        True,
        False,
    )
    lines = log["lines"]
    numbers = [line["seq"] for line in lines]
    assert numbers == list(range(1, len(lines) + 1)) and log["first_seq"] == 1
    assert log["next"] == numbers[-1]
    texts = [line["text"] for line in lines]
    assert texts[0].startswith(f"job {job['id']}: backup alpha started (attempt 1 of ")
    assert texts.count(f"job {job['id']}: backup alpha succeeded") == 1  # once, not per logger
    # The report, logged as indented JSON, is one line per line of it.
    assert any(text.strip().startswith('"snapshot_id": ') for text in texts)
    assert {line["level"] for line in lines} == {"INFO"}
    assert all(line["time"].endswith("+00:00") for line in lines)
    # after=N: only the lines numbered after N; after the last: none.
    later = served.get("otto", f"/api/v1/jobs/{job['id']}/log", after=2)
    assert [line["seq"] for line in later["lines"]] == numbers[2:]
    assert later["lines"] == lines[2:]
    assert served.get("otto", f"/api/v1/jobs/{job['id']}/log", after=log["next"])["lines"] == []
    for bad_after in ("-1", str(2**31), "x"):
        bad = served.ask("otto", f"/api/v1/jobs/{job['id']}/log", params={"after": bad_after})
        assert bad.status_code == 400 and bad.json()["error"] == "UsageError", bad.text
    missing = served.ask("otto", "/api/v1/jobs/999999/log")
    assert missing.status_code == 404 and missing.json()["error"] == "JobNotFound"


def test_the_cli_reads_the_same_log(served: Served) -> None:
    job = served.backup("alpha")
    api = served.get("ada", f"/api/v1/jobs/{job['id']}/log")
    shown = served.site.cli("jobs", "log", str(job["id"]))
    assert shown.code == 0, shown.stderr
    printed = shown.stdout.splitlines()
    assert len(printed) == len(api["lines"])
    assert printed[0].endswith(api["lines"][0]["text"])
    assert f"job {job['id']}: backup alpha succeeded" in shown.stdout
    as_json = served.site.cli("jobs", "log", str(job["id"]), "--json")
    assert as_json.code == 0 and as_json.json() == api
    # --follow on an ended job prints it all and stops once nothing more can come.
    started = time.monotonic()
    followed = served.site.cli("jobs", "log", str(job["id"]), "--follow")
    assert followed.code == 0 and followed.stdout == shown.stdout
    assert time.monotonic() - started < 15
    usage = served.site.cli("jobs", "log", "seven")
    assert usage.code == UsageError.exit_code and "usage: costor jobs log ID" in usage.stderr
    missing = served.site.cli("jobs", "log", "999999")
    assert missing.code != 0 and "no job 999999" in missing.stderr.lower()


def test_follow_prints_a_running_jobs_lines_until_it_ends(served: Served) -> None:
    """`costor jobs log --follow` started while the job is queued prints its lines as
    they come and returns once it has ended."""
    on = served.ask("ada", "/api/v1/maintenance", method="PUT", json={"on": True})
    assert on.status_code == 200, on.text
    queued = served.ask("otto", "/api/v1/clients/beta/backup", method="POST").json()
    follower = served.site.process("jobs", "log", str(queued["id"]), "--follow", env=ENV)
    try:
        time.sleep(2)
        assert follower.poll() is None, "--follow returned while the job was queued"
        off = served.ask("ada", "/api/v1/maintenance", method="PUT", json={"on": False})
        assert off.status_code == 200, off.text
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err.decode()
    assert f"job {queued['id']}: backup beta succeeded" in out.decode()
    assert f"job {queued['id']}: backup beta started" in out.decode()


def test_a_job_log_is_seen_only_by_who_sees_the_job(served: Served) -> None:
    alpha = served.backup("alpha")
    beta = served.backup("beta")
    # enid (end-user on beta) reads beta's job log, not alpha's: that job does not exist for her.
    assert served.get("enid", f"/api/v1/jobs/{beta['id']}/log")["lines"]
    hidden = served.ask("enid", f"/api/v1/jobs/{alpha['id']}/log")
    assert hidden.status_code == 404 and hidden.json()["error"] == "JobNotFound"
    assert served.ask("bea", f"/api/v1/jobs/{alpha['id']}/log").status_code == 404
    assert served.ask("aud", f"/api/v1/jobs/{alpha['id']}/log").status_code == 200
    no_token = served.http.get(f"/api/v1/jobs/{alpha['id']}/log")
    assert no_token.status_code == 401


# --- applies and sites -----------------------------------------------------------------


def test_each_apply_is_summarised(served: Served) -> None:
    first = served.get("ada", "/api/v1/applies")[-1]  # the fixture's, oldest
    assert first["outcome"] == "succeeded" and first["error"] is None
    assert first["actor"].startswith("os:") and first["source"] == "cli"
    assert first["counts"]["created"]["client"] == 2
    assert first["counts"]["created"]["pool"] == 1
    assert first["counts"]["deleted"] == {} and first["plan_hash"] is None
    assert "client.alpha" in first["applied"] and first["pending"] == len(first["applied"])
    assert first["serial"] and first["started_at"] <= first["finished_at"]
    # A saved plan with nothing to do: applied, its file's hash recorded.
    plan_file = served.site.root / "saved.plan"
    assert served.site.cli("plan", "--out", str(plan_file)).code == 0
    applied = served.site.cli("apply", str(plan_file))
    assert applied.code == 0, applied.stderr
    [saved] = served.get("ada", "/api/v1/applies", limit=1)
    assert saved["plan_hash"] == hashlib.sha256(plan_file.read_bytes()).hexdigest()
    assert (saved["outcome"], saved["applied"], saved["pending"]) == ("succeeded", [], 0)
    # A file that is not a plan: refused, and recorded as failed with why.
    bogus = served.site.root / "bogus.plan"
    bogus.write_text("not a plan")
    refused = served.site.cli("apply", str(bogus))
    assert refused.code != 0
    [failed] = served.get("ada", "/api/v1/applies", limit=1)
    assert failed["outcome"] == "failed" and failed["error"].startswith("PlanFileInvalid: ")
    assert failed["plan_file"] == str(bogus) and failed["counts"]["created"] == {}
    newest_first = [a["id"] for a in served.get("ada", "/api/v1/applies")]
    assert newest_first == sorted(newest_first, reverse=True) and len(newest_first) >= 3
    # config.read on every client: an operator on some clients, an end user: 403.
    for who in ("bea", "enid"):
        denied = served.ask(who, "/api/v1/applies")
        assert denied.status_code == 403 and denied.json()["error"] == "PermissionDenied"
    assert served.ask("ada", "/api/v1/applies", params={"limit": 0}).status_code == 400


def test_sites_as_applied(served: Served) -> None:
    [site] = served.get("otto", "/api/v1/sites")
    status = served.get("otto", "/api/v1/status")
    [line] = status["sites"]
    assert site["site"] == line["site"] == "hq"
    assert site["listen"] == "127.0.0.1:8443" and site["tls"] is False
    assert (site["health"], site["maintenance"]) == (line["health"], line["maintenance"])
    assert site["clients"] == ["alpha", "beta"]
    [last] = served.get("otto", "/api/v1/applies", limit=1)
    assert site["applied"]["last_apply"] == last
    assert site["applied"]["serial"] >= (last["serial"] or 0)
    # Limited to beta: the site's name and beta's health, nothing else.
    beta = next(c for c in status["clients"] if c["client"] == "beta")
    assert served.get("bea", "/api/v1/sites") == [{"site": "hq", "health": beta["health"]}]
    # An end user (config.read on beta, her client): the same, from her client's health.
    assert served.get("enid", "/api/v1/sites") == [{"site": "hq", "health": beta["health"]}]


# --- the audit log -----------------------------------------------------------------------


def test_the_audit_log_with_filters(served: Served) -> None:
    served.backup("alpha")
    otto = f"token:{served.token_id('otto')}"
    everything = served.get("aud", "/api/v1/audit")
    assert everything == served.site.cli("audit", "--json").json()
    ids = [r["id"] for r in everything]
    assert ids == sorted(ids, reverse=True)
    added = served.get("aud", "/api/v1/audit", action="jobs.add")
    assert added and {r["action"] for r in added} == {"jobs.add"}
    assert added == served.site.cli("audit", "--json", "--action", "jobs.add").json()
    by_otto = served.get("aud", "/api/v1/audit", actor=otto)
    assert by_otto and {r["actor"] for r in by_otto} == {otto}
    alpha = served.get("aud", "/api/v1/audit", target="client:alpha", action="jobs.add")
    assert alpha and {(r["target"], r["action"]) for r in alpha} == {("client:alpha", "jobs.add")}
    pattern = served.get("aud", "/api/v1/audit", target="client:*")
    assert {r["target"] for r in pattern} >= {"client:alpha", "client:beta"}
    assert served.get("aud", "/api/v1/audit", actor="nobody") == []
    assert served.get("aud", "/api/v1/audit", since="1h") == everything
    assert served.get("aud", "/api/v1/audit", since="2999-01-01") == []
    # Pages: limit and offset, a Link to the next page.
    first = served.ask("aud", "/api/v1/audit", params={"limit": 2})
    assert first.json() == everything[:2]
    assert 'rel="next"' in first.headers["Link"] and "offset=2" in first.headers["Link"]
    assert served.get("aud", "/api/v1/audit", limit=2, offset=2) == everything[2:4]
    last_page = served.ask("aud", "/api/v1/audit", params={"offset": len(everything) - 1})
    assert last_page.json() == everything[-1:] and "Link" not in last_page.headers
    bad = served.ask("aud", "/api/v1/audit", params={"since": "yesterday-ish"})
    assert bad.status_code == 400 and bad.json()["error"] == "UsageError"
    assert served.ask("aud", "/api/v1/audit", params={"limit": 5000}).status_code == 400
    # Reading the log is not recorded.
    assert served.get("ada", "/api/v1/audit", limit=1) == everything[:1]


def test_audit_read_on_the_whole_site_only(served: Served) -> None:
    assert served.ask("ada", "/api/v1/audit").status_code == 200
    for who in ("otto", "bea", "enid"):  # operators (no audit.read), an end user
        for route in ("/api/v1/audit", "/api/v1/audit/verify"):
            denied = served.ask(who, route)
            assert denied.status_code == 403, (who, route, denied.text)
            assert denied.json()["error"] == "PermissionDenied"


def test_audit_verify_answers_200_broken_or_not(served: Served) -> None:
    """Last in the module: it breaks the chain."""
    intact = served.get("aud", "/api/v1/audit/verify")
    assert intact["intact"] is True and intact["broken"] is None
    assert intact == served.site.cli("audit", "verify", "--json").json()
    [(first_id,)] = served.site.sql("SELECT MIN(id) FROM audit_records")
    served.site.sql("UPDATE audit_records SET outcome = 'denied' WHERE id = :id", id=first_id)
    broken = served.get("aud", "/api/v1/audit/verify")
    assert broken["intact"] is False and broken["broken"]["record"] == first_id
    cli = served.site.cli("audit", "verify", "--json")
    assert cli.code == 3 and cli.json() == broken
