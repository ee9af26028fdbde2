"""The jobs pages against a real `costor serve` (its daemon runs the jobs): the
history and its filters, what an end user sees of it, cancelling (jobs.manage, with the
CSRF token), and a job followed live: its page's stream of HTML fragments (progress
with a moving <progress>, log lines, state, then the outcome and the end)."""

# ruff: noqa: F811  (the fixtures imported from ui_site are the tests' parameters)
from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

import pytest
from ui_site import Page, Served, served, ui_site  # noqa: F401  (fixtures)

from costor.server.ui.jobs import eta_words, progress_view

pytestmark = pytest.mark.timeout(300)
ENDED = ("succeeded", "failed", "interrupted", "cancelled")
FILES, FILE_SIZE = 20_000, 4096  # random: nothing dedups, a few seconds of work


def _jobs(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-job="(\d+)"', html)]


def _state(page: Page, job_id: int) -> str:
    found = re.search(
        r'id="job-state"[^>]*><span class="badge \w+">(\w+)<', page.get(f"/jobs/{job_id}").text
    )
    assert found, "no state on the job's page"
    return found.group(1)


def _wait(page: Page, job_id: int, states: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while (state := _state(page, job_id)) not in states:
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        time.sleep(0.2)
    return state


def _back_up(page: Page, client: str) -> int:
    queued = page.post(f"/clients/{client}/backup")
    assert queued.status_code == 303, queued.text
    return int(queued.headers["location"].rsplit("/", 1)[1])


def _events(text: str) -> list[tuple[str, str]]:
    """(event name, data) of a server-sent event stream."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data or name != "message":
            events.append((name, "\n".join(data)))
    return events


def test_eta_and_progress_in_words() -> None:
    assert eta_words(None) == "estimating…"
    assert eta_words(0.2) == "about 1 s"  # never "0 s" while it runs
    assert eta_words(42) == "about 42 s"
    assert eta_words(130) == "about 2 min"
    assert eta_words(2 * 3600 + 5 * 60) == "about 2 h 5 min"
    document: dict[str, Any] = {
        "phase": "transferring",
        "files": 1200,
        "files_total": 5000,
        "bytes": 3 * 2**20,
        "bytes_total": 10 * 2**20,
        "rate_bps": 2**20,
        "eta_s": 7.0,
        "percent": 30.0,
        "elapsed_s": 3.0,
        "warnings": 0,
    }
    view = progress_view(document, "running")
    assert view is not None
    assert view["percent"] == 30.0 and view["eta"] == "about 7 s"
    assert view["files"] == "1,200 of 5,000" and view["rate"] == "1.0 MiB/s"
    ended = progress_view({**document, "phase": "done"}, "succeeded")
    assert ended is not None and ended["eta"] == ""


def test_the_history_newest_first_and_its_filters(served: Served) -> None:
    page = served.page("ada")
    first = _back_up(page, "alpha")
    _wait(page, first, ENDED)
    second = _back_up(page, "beta")
    _wait(page, second, ENDED)
    everything = page.get("/jobs")
    assert everything.status_code == 200
    assert 'hx-trigger="every 10s"' in everything.text  # the first page follows
    assert 'hx-trigger="every 10s"' not in page.get("/jobs?offset=1").text
    shown = _jobs(everything.text)
    assert shown[:2] == [second, first] and shown == sorted(shown, reverse=True)
    of_beta = _jobs(page.get("/jobs?target=beta").text)
    assert second in of_beta and first not in of_beta
    assert _jobs(page.get("/jobs?kind=backup&state=succeeded").text)[:2] == [second, first]
    assert _jobs(page.get("/jobs?kind=prune").text) == []
    assert "No jobs match these filters." in page.get("/jobs?state=running&target=nobody").text
    job = page.get(f"/jobs/{first}")
    assert job.status_code == 200 and 'id="job-log"' in job.text
    assert "succeeded" in job.text and 'data-testid="result"' in job.text
    assert "sse-connect" not in job.text  # an ended job is not followed
    assert page.get("/jobs/999999").status_code == 404
    assert page.get("/jobs/0").status_code == 400  # not a job id at all


def test_an_end_user_sees_only_their_clients_jobs(served: Served) -> None:
    ada = served.page("ada")
    alpha_job = _back_up(ada, "alpha")
    beta_job = _back_up(ada, "beta")
    _wait(ada, beta_job, ENDED)
    _wait(ada, alpha_job, ENDED)
    eve = served.page("eve")
    listed = eve.get("/jobs")
    assert listed.status_code == 200
    assert alpha_job in _jobs(listed.text) and beta_job not in _jobs(listed.text)
    assert "beta" not in listed.text
    assert eve.get(f"/jobs/{alpha_job}").status_code == 200
    hidden = eve.get(f"/jobs/{beta_job}")
    assert hidden.status_code == 404 and "Not found" in hidden.text
    assert eve.get(f"/jobs/{beta_job}/events").status_code == 404
    assert _jobs(eve.get("/jobs?target=beta").text) == []
    assert 'id="cancel-job"' not in eve.get(f"/jobs/{alpha_job}").text


def test_an_operator_cancels_a_queued_job(served: Served) -> None:
    assert served.site.cli("maintenance", "on", "--reason", "the cancel test").code == 0
    try:
        otto = served.page("otto")
        job_id = _back_up(otto, "alpha")
        page = otto.get(f"/jobs/{job_id}")
        assert 'id="cancel-job"' in page.text and "queued" in page.text
        assert 'sse-connect="/jobs/' in page.text
        assert 'id="job-progress"' in page.text
        home = otto.get("/")
        assert "maintenance" in home.text and 'id="attention" class="attention"' in home.text
        aud = served.page("aud")
        assert 'id="cancel-job"' not in aud.get(f"/jobs/{job_id}").text
        assert aud.post(f"/jobs/{job_id}/cancel").status_code == 403
        assert served.page("eve").post(f"/jobs/{job_id}/cancel").status_code == 403
        assert otto.http.post(f"/jobs/{job_id}/cancel", data={"csrf": "forged"}).status_code == 403
        assert _state(otto, job_id) == "queued"
        cancelled = otto.post(f"/jobs/{job_id}/cancel")
        assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/jobs/{job_id}"
        assert _state(otto, job_id) == "cancelled"
        assert 'id="cancel-job"' not in otto.get(f"/jobs/{job_id}").text
        again = otto.post(f"/jobs/{job_id}/cancel")
        assert again.status_code == 409 and "cannot be cancelled" in again.text
        records = served.site.cli("audit", "--json", "--action", "jobs.cancel").json()
        assert records[1]["actor"] == "user:otto" and records[1]["outcome"] == "ok"
    finally:
        assert served.site.cli("maintenance", "off").code == 0


def test_a_running_job_is_followed_live(served: Served) -> None:
    many = served.site.root / "src-alpha" / "many"
    many.mkdir()
    for n in range(FILES):
        (many / f"f{n:05}.bin").write_bytes(os.urandom(FILE_SIZE))
    otto = served.page("otto")
    # The job waits in the queue (maintenance) until its page's stream is open, so the
    # stream sees the whole run however fast this machine backs up.
    assert served.site.cli("maintenance", "on", "--reason", "the live test").code == 0
    try:
        job_id = _back_up(otto, "alpha")
        read: dict[str, Any] = {}

        def follow() -> None:
            with otto.http.stream("GET", f"/jobs/{job_id}/events", timeout=120) as stream:
                read["status"] = stream.status_code
                read["type"] = stream.headers["content-type"]
                read["text"] = "".join(stream.iter_text())

        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(1)  # the stream is open (its first state event: queued)
    finally:
        assert served.site.cli("maintenance", "off").code == 0
    deadline = time.monotonic() + 60
    while "<progress" not in (running := otto.get("/dashboard/running").text):
        assert time.monotonic() < deadline, "the job never showed its progress"
        time.sleep(0.05)
    assert f'data-job="{job_id}"' in running and f"Job {job_id}: backup of alpha" in running
    follower.join(timeout=120)
    assert read["status"] == 200 and read["type"].startswith("text/event-stream")
    values: set[str] = set()
    events = _events(read["text"])
    names = [name for name, _data in events]
    assert names[-2:] == ["actions", "ended"], names[-5:]
    assert "outcome" in names and "state" in names and "log" in names
    facts = [data for name, data in events if name == "facts"]
    assert facts and "Finished" in facts[-1] and "attempt 1 of" in facts[-1]
    assert 'id="job-state"' in facts[-1] and "succeeded" in facts[-1]
    for name, data in events:
        if name == "progress":
            found = re.search(r'<progress[^>]* value="([\d.]+)"', data)
            if found:
                values.add(found.group(1))
            assert ">0 s<" not in data
    # The bar moved: seen part way and at the end. (Three values or more are the
    # browser test's, tests/ui, on a backup made to last; this one may take a second.)
    assert len(values) >= 2 and min(float(v) for v in values) < 100, values
    states = [data for name, data in events if name == "state"]
    assert "succeeded" in states[-1]
    outcome = next(data for name, data in events if name == "outcome")
    assert "succeeded" in outcome and "files new" in outcome
    lines = [data for name, data in events if name == "log"]
    assert any("backup alpha started" in line for line in lines)
    page = otto.get(f"/jobs/{job_id}")
    assert "backup alpha succeeded" in page.text and "sse-connect" not in page.text
