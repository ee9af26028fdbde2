"""The dashboard and the client page against a real `costor serve`: what each role
sees (an end user: their own clients only), the clients' health words, "back up now"
(backups.run, with the CSRF token), and names escaped."""

# ruff: noqa: F811  (the fixtures imported from ui_site are the tests' parameters)
from __future__ import annotations

import re
from typing import Any

import pytest
from ui_site import Served, served, ui_site  # noqa: F401  (fixtures)

from costor.server.ui.clients import size_class
from costor.server.ui.dashboard import attention, client_label, client_level, span_words

pytestmark = pytest.mark.timeout(180)


def _rows(html: str, attribute: str) -> list[str]:
    return re.findall(rf'<tr {attribute}="([^"]+)"', html)


def test_the_dashboard_shows_attention_sites_pools_clients_and_jobs_to_an_admin(
    served: Served,
) -> None:
    page = served.page("ada")
    home = page.get("/")
    assert home.status_code == 200, home.text
    for block in (
        'id="attention"',
        'id="sites"',
        'id="pools"',
        'id="clients"',
        'id="running-jobs"',
    ):
        assert block in home.text
    assert sorted(_rows(home.text, "data-client")) == ["alpha", "beta"]
    assert _rows(home.text, "data-pool"), home.text
    pool = re.search(r'<tr data-pool="main">(.*?)</tr>', home.text, re.S)
    assert pool and "never checked" in pool.group(1)
    assert "Added in 7 days" in home.text and re.search(r">\d[\d.]* (B|KiB)</td>", pool.group(1))
    assert 'hx-trigger="every 2s"' in home.text
    running = page.get("/dashboard/running")
    assert running.status_code == 200 and "No job is running." in running.text


def test_an_end_user_sees_only_their_own_client(served: Served) -> None:
    page = served.page("eve")
    home = page.get("/")
    assert home.status_code == 200
    assert _rows(home.text, "data-client") == ["alpha"]
    assert "beta" not in home.text
    assert 'href="/audit"' not in home.text
    assert page.get("/clients/alpha").status_code == 200
    hidden = page.get("/clients/beta")
    missing = page.get("/clients/no-such-client")
    assert hidden.status_code == missing.status_code == 404
    assert "Not found" in hidden.text
    same = re.compile(r"request [0-9a-f]+|beta|no-such-client")
    assert same.sub("X", hidden.text) == same.sub("X", missing.text)
    assert 'id="backup-now"' not in page.get("/clients/alpha").text  # no backups.run


def test_the_client_page_lists_its_snapshots_newest_first_on_a_timeline(served: Served) -> None:
    (served.site.root / "src-alpha" / "grown.txt").write_text("more\n" * 5000)
    assert served.site.cli("backup", "alpha").code == 0
    page = served.page("ada")
    response = page.get("/clients/alpha")
    assert response.status_code == 200, response.text
    snapshots = served.site.cli("snapshots", "--client", "alpha", "--json").json()
    assert len(snapshots) >= 2
    shown = _rows(response.text, "data-snapshot")
    assert shown == [s["id"] for s in reversed(snapshots)]
    assert f'href="/snapshots/{snapshots[0]["id"]}"' in response.text
    older, newer = snapshots[-2]["id"], snapshots[-1]["id"]
    assert f'href="/compare?a={older}&amp;b={newer}"' in response.text
    bars = re.findall(r'<a class="(h-\d+)" href="/snapshots/(\w+)"', response.text)
    assert [snapshot for _bar, snapshot in bars] == [s["id"] for s in snapshots]  # oldest left
    assert bars[-1][0] == "h-100" and bars[0][0] != "h-100"  # the newest is the largest
    assert 'data-testid="health"' in response.text and "none (no policy)" in response.text


def test_back_up_now_needs_backups_run_and_the_csrf_token(served: Served) -> None:
    otto = served.page("otto")
    client = otto.get("/clients/beta")
    assert 'id="backup-now"' in client.text
    refused = otto.http.post("/clients/beta/backup", data={"csrf": "wrong"})
    assert refused.status_code == 403
    no_token = otto.http.post("/clients/beta/backup")
    assert no_token.status_code == 403
    queued = otto.post("/clients/beta/backup")
    assert queued.status_code == 303, queued.text
    job_url = queued.headers["location"]
    assert re.fullmatch(r"/jobs/\d+", job_url)
    job = otto.get(job_url)
    assert job.status_code == 200 and "backup of beta" in job.text
    records = served.site.cli("audit", "--json", "--action", "jobs.add").json()
    assert records[0]["actor"] == "user:otto" and records[0]["target"] == "client:beta"
    aud = served.page("aud")
    assert aud.post("/clients/beta/backup").status_code == 403
    eve = served.page("eve")
    assert eve.post("/clients/beta/backup").status_code == 404
    assert eve.post("/clients/alpha/backup").status_code == 403


def test_a_page_without_a_session_goes_to_the_login(served: Served) -> None:
    page = served.page()
    assert page.get("/clients/alpha").status_code == 303
    assert page.http.post("/clients/alpha/backup").status_code == 303
    assert page.get("/dashboard/running").status_code == 303
    assert page.get("/jobs").status_code == 303


def test_a_poll_after_the_session_ended_sends_the_browser_to_the_login(served: Served) -> None:
    """Not the login form into the polled block, as following a 303 would."""
    page = served.page("ada")
    home = page.get("/")
    assert 'id="dashboard-live"' in home.text and 'hx-trigger="every 60s"' in home.text
    assert page.post("/logout").status_code == 303
    for url in ("/", "/dashboard/running", "/jobs"):
        polled = page.get(url, headers={"HX-Request": "true"})
        assert polled.status_code == 204 and polled.headers["HX-Redirect"] == "/login?next=%2F"
        assert polled.text == ""
    # Back to the page the browser showed (htmx names it), never to another site's.
    for shown, back in (
        ("http://127.0.0.1/jobs?state=failed", "/login?next=%2Fjobs%3Fstate%3Dfailed"),
        ("http://127.0.0.1//evil.example/x", "/login?next=%2F"),
    ):
        polled = page.get(
            "/dashboard/running", headers={"HX-Request": "true", "HX-Current-URL": shown}
        )
        assert polled.status_code == 204 and polled.headers["HX-Redirect"] == back


def _client(name: str, **facts: Any) -> dict[str, Any]:
    line = {
        "client": name,
        "site": "hq",
        "last_backup": "2026-12-07T10:00:00+00:00",
        "age_s": 600,
        "rpo_s": 86400,
        "health": "ok",
        "problems": [],
    }
    return {**line, **facts}


def test_what_needs_attention_comes_worst_first() -> None:
    document: dict[str, Any] = {
        "health": "critical",
        "problems": ["no `costor serve` is running"],
        "sites": [{"site": "hq", "maintenance": False, "maintenance_reason": None}],
        "clients": [
            _client("fine"),
            _client("late", age_s=90000, health="critical", problems=["last good backup 1.0d ago"]),
            _client("new", last_backup=None, age_s=None, rpo_s=None),
            _client("flaky", health="warning", problems=["last backup job failed: boom"]),
        ],
    }
    pools = [
        {"pool": "main", "last_check": {"job": 7, "state": "failed", "error": "bad pack"}},
        {"pool": "copy", "last_check": {"job": 8, "state": "succeeded", "error": None}},
    ]
    failed = [{"id": 9, "kind": "prune", "target": "main", "error": None}]
    items = attention(document, pools, failed)
    assert [item["level"] for item in items] == ["critical"] * 3 + ["warning"] * 3
    texts = " | ".join(item["text"] for item in items)
    assert "fine" not in texts and "pool main is damaged" in texts and "copy" not in texts
    assert "late (late)" in texts and "new (never backed up)" in texts
    assert "job 9 (prune of main) failed" in texts
    assert attention(None, [], []) == []
    assert [client_label(c) for c in document["clients"]] == [
        "ok",
        "late",
        "never backed up",
        "warning",
    ]
    assert client_level(document["clients"][2]) == "warning"  # no policy, still no copy


def test_timeline_bars_by_size() -> None:
    assert size_class(0, 0) == "h-10"
    assert size_class(1, 1000) == "h-10"  # a tenth at least: every snapshot shows
    assert size_class(500, 1000) == "h-50"
    assert size_class(1000, 1000) == "h-100"


def test_an_rpo_in_words() -> None:
    assert [span_words(s) for s in (None, 1800, 3600, 86400, 36 * 3600, 2.5 * 86400)] == [
        "–",
        "30 min",
        "1 h",
        "1 day",
        "36 h",
        "2.5 days",
    ]
