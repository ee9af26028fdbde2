"""A job, live (costor/server/events.py), against a real `costor serve`: a backup job of
a client with enough data to take a few seconds, watched over server-sent events; who
may watch it; many watchers of one job; a watcher that leaves. SQLite and (the suite's
PostgreSQL pass) PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables

from costor.db import joblogs, queue
from costor.db.session import open_engine
from costor.errors import JobNotFound
from costor.server.events import WatcherHub, state_reader
from costor.server.gate import Gate
from costor.util.clock import utcnow

USERS = """
[groups.ops]
roles = ["operator"]

[groups.beta-ops]
roles = ["operator"]
clients = ["beta"]

[users.otto]
groups = ["ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.bea]
groups = ["beta-ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""
FILES, FILE_SIZE = 30_000, 4096  # random, so nothing dedups: many files, a few seconds' work


@dataclass
class Event:
    kind: str
    data: dict[str, Any]
    id: str | None


@dataclass
class Watched:
    """What one SSE client saw of a job."""

    events: list[Event] = field(default_factory=list)
    comments: int = 0
    status: int = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == kind]


class Served:
    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site = site
        self.base_url = base_url
        self.process = process
        self.stderr: str | None = None
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.tokens: dict[str, str] = {}

    def stop(self) -> str:
        """Stop the server (once); its log."""
        if self.stderr is None:
            self.stderr = stop_serve(self.process)
        return self.stderr

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def start_backup(self, client: str) -> int:
        response = self.http.post(f"/api/v1/clients/{client}/backup", headers=self.headers("otto"))
        assert response.status_code == 202, response.text
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/jobs/{job_id}", headers=self.headers("otto"))
        assert response.status_code == 200, response.text
        return dict(response.json())

    def watch(
        self, who: str, job_id: int, *, headers: dict[str, str] | None = None, **params: Any
    ) -> Watched:
        """Read the job's event stream to its end (or its refusal)."""
        seen = Watched()
        with (
            httpx.Client(base_url=self.base_url, timeout=120) as client,
            client.stream(
                "GET",
                f"/api/v1/jobs/{job_id}/events",
                headers=self.headers(who) | (headers or {}),
                params=params,
            ) as response,
        ):
            seen.status = response.status_code
            if response.status_code != 200:
                response.read()
                seen.events.append(Event("error", response.json(), None))
                return seen
            assert response.headers["content-type"].startswith("text/event-stream")
            parse(response.iter_lines(), seen)
        return seen


def parse(lines: Iterator[str], seen: Watched) -> None:
    """The SSE wire format: ``event:``, ``data:``, ``id:`` lines, a blank line ends one;
    a line starting with ``:`` is a comment (a ping)."""
    kind, data, event_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                seen.events.append(Event(kind, json.loads("\n".join(data)), event_id))
            kind, data, event_id = "message", [], None
        elif line.startswith(":"):
            seen.comments += 1
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    env = ENV | {"COSTOR_EVENTS_PING_S": "0.5"}  # heartbeats seen within a job's run
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    root = tmp_path_factory.mktemp("events")
    sources: dict[str, list[Path]] = {}
    for name in ("alpha", "beta"):
        source = root / f"src-{name}"
        source.mkdir()
        sources[name] = [source]
    for n in range(FILES):
        (sources["alpha"][0] / f"f{n:03}.bin").write_bytes(os.urandom(FILE_SIZE))
    (sources["beta"][0] / "small.txt").write_text("beta\n")
    inventory = write_tables(root, *local_tables(sources), USERS)
    site = Site(root, inventory, root / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    process, base_url = start_serve(site)
    served = Served(site, base_url, process)
    try:
        for user in ("otto", "bea"):
            made = site.cli("token", "create", "--user", user, "--scope", "operate")
            assert made.code == 0, made.stderr
            served.tokens[user] = made.stdout.strip()
        yield served
    finally:
        served.http.close()
        served.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fresh_data(served: Served) -> None:
    """New random content in alpha's files: the next backup has all of it to store."""
    source = served.site.root / "src-alpha"
    for path in sorted(source.iterdir()):
        path.write_bytes(os.urandom(FILE_SIZE))


def test_a_watcher_sees_a_backup_job_live(served: Served) -> None:
    job_id = served.start_backup("alpha")
    seen = served.watch("otto", job_id)
    assert seen.status == 200
    progress = seen.of("progress")
    # Progress while it ran: at least three different points, moving forward.
    distinct = {(p["phase"], p["files"], p["bytes"]) for p in progress}
    assert len(distinct) >= 3, progress
    counted = [p["bytes"] for p in progress]
    assert counted == sorted(counted)
    assert {"scanning", "transferring"} & {p["phase"] for p in progress}
    running = [p for p in progress if p["phase"] != "done"]
    assert all(p["eta_s"] is None or p["eta_s"] >= 1 for p in running)  # never 0 s early
    assert any(p["rate_bps"] for p in running)
    last = progress[-1]
    assert (last["phase"], last["percent"], last["eta_s"]) == ("done", 100.0, 0.0)
    assert last["files"] == FILES and last["bytes"] == FILES * FILE_SIZE
    assert (last["files_total"], last["bytes_total"]) == (FILES, FILES * FILE_SIZE)
    # Its log, every line once and in order, ending with its outcome.
    lines = seen.of("log")
    numbers = [line["seq"] for line in lines]
    assert numbers == list(range(1, len(numbers) + 1))
    assert lines[0]["text"].startswith(f"job {job_id}: backup alpha started")
    assert any(line["text"] == f"job {job_id}: backup alpha succeeded" for line in lines)
    # Its end, last, after every line.
    assert seen.events[-1].kind == "state"
    end = seen.events[-1].data
    assert (end["id"], end["state"], end["ended"]) == (job_id, "succeeded", True)
    assert end["last_seq"] == numbers[-1] and seen.events[-1].id == str(numbers[-1])
    # Each change of state once, in the order it happened.
    states = [state["state"] for state in seen.of("state")]
    order = ["queued", "running", "succeeded"]
    assert states[-1] == "succeeded" and states == sorted(set(states), key=order.index)
    # Heartbeats: comment lines, between the events.
    assert seen.comments >= 1
    # The job's document carries the last progress too.
    assert served.job(job_id)["progress"] == last


def test_an_ended_jobs_stream_and_resuming_it(served: Served) -> None:
    job_id = served.start_backup("beta")
    deadline = time.monotonic() + 60
    while served.job(job_id)["state"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    whole = served.watch("otto", job_id)
    assert [e.kind for e in whole.events][-2:] == ["progress", "state"]
    numbers = [line["seq"] for line in whole.of("log")]
    assert len(numbers) >= 3
    # Last-Event-ID (a browser reconnecting), or ?after=: only the lines after it.
    resumed = served.watch("otto", job_id, headers={"Last-Event-ID": str(numbers[1])})
    assert [line["seq"] for line in resumed.of("log")] == numbers[2:]
    after = served.watch("otto", job_id, after=numbers[-1])
    assert after.of("log") == [] and after.of("state")[-1]["ended"] is True
    bad = served.watch("otto", job_id, headers={"Last-Event-ID": "x1"})
    assert bad.status == 400 and bad.events[0].data["error"] == "UsageError"


def test_a_restore_job_reports_its_progress(served: Served) -> None:
    target = served.site.root / "restored"
    response = served.http.post(
        "/api/v1/snapshots/alpha:latest/restore",
        json={"target": str(target)},
        headers=served.headers("otto"),
    )
    assert response.status_code == 202, response.text
    seen = served.watch("otto", response.json()["id"])
    assert seen.events[-1].data["state"] == "succeeded", seen.events[-1].data
    progress = seen.of("progress")
    assert {p["phase"] for p in progress} <= {"restoring", "finishing", "done"}
    last = progress[-1]
    assert (last["phase"], last["files"], last["bytes"]) == ("done", FILES, FILES * FILE_SIZE)


def test_another_clients_job_is_not_found(served: Served) -> None:
    job_id = served.start_backup("alpha")
    refused = served.watch("bea", job_id)
    assert refused.status == 404 and refused.events[0].data["error"] == "JobNotFound"
    missing = served.watch("otto", 999_999)
    assert missing.status == 404 and missing.events[0].data["error"] == "JobNotFound"
    served.watch("otto", job_id)  # to its end, before the next test


def test_many_watchers_all_see_the_end(served: Served) -> None:
    _fresh_data(served)
    job_id = served.start_backup("alpha")
    results: list[Watched] = []
    lock = threading.Lock()

    def one() -> None:
        seen = served.watch("otto", job_id)
        with lock:
            results.append(seen)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len(results) == 20
    for seen in results:
        assert seen.status == 200
        assert seen.events[-1].kind == "state" and seen.events[-1].data["state"] == "succeeded"
        numbers = [line["seq"] for line in seen.of("log")]
        assert numbers == list(range(1, len(numbers) + 1))
        assert seen.of("progress")[-1]["phase"] == "done"


def test_a_watcher_that_leaves_frees_its_place(served: Served) -> None:
    _fresh_data(served)
    job_id = served.start_backup("alpha")
    with (
        httpx.Client(base_url=served.base_url, timeout=60) as client,
        client.stream(
            "GET", f"/api/v1/jobs/{job_id}/events", headers=served.headers("otto")
        ) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert first.startswith(("event:", "id:", "data:", ":"))
    # The client went away mid-job; the job goes on, and its end is still told.
    seen = served.watch("otto", job_id)
    assert seen.events[-1].data["state"] == "succeeded"


def test_the_server_said_who_left(served: Served) -> None:
    """Last (it stops the server): its log says when watchers left and polling stopped.
    The watcher that left mid-job above was the only one: its poller stopped then, not
    at the job's end; the job ended unwatched by that poller."""
    log = served.stop()
    assert "the last of 1 watcher(s) left; polling stopped" in log, log[-3000:]
    assert "job succeeded; polling stopped (20 watcher(s))" in log


# --- the hub in-process, on a real state database: one poller however many watch ------


class _Gate:
    """The gate's door for the hub's reads: the state's engine (costor/server/gate.py)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @contextmanager
    def use(self, **_who: Any) -> Iterator[Any]:
        yield SimpleNamespace(engine=self.engine)


def _run_job(engine: Any, job_id: int, lines: int, every: float) -> None:
    """A job's process, roughly: log lines and progress while it runs, then its end."""
    for n in range(1, lines + 1):
        joblogs.append_lines(engine, job_id, [joblogs.LogLine(utcnow(), "INFO", f"line {n}")])
        queue.record_progress(engine, job_id, {"phase": "x", "files": n})
        time.sleep(every)
    queue.finish(engine, job_id, "succeeded")


def test_fifty_watchers_share_one_poller(state_url: str) -> None:
    engine = open_engine(state_url)
    job_id = queue.enqueue(engine, "backup", "alpha")
    assert queue.claim(engine, "host:1:a") is not None
    hub = WatcherHub(state_reader(cast(Gate, _Gate(engine))))
    hub.every = 0.1

    async def watch_all() -> tuple[list[list[Any]], int, float]:
        started = time.monotonic()

        async def one() -> list[Any]:
            return [event async for event in hub.watch(job_id)]

        watchers = [asyncio.create_task(one()) for _ in range(50)]
        for _ in range(100):
            await asyncio.sleep(0.05)
            if hub.watching() == {job_id: 50}:
                break
        assert hub.watching() == {job_id: 50}
        polls = hub.polls
        worker = asyncio.create_task(asyncio.to_thread(_run_job, engine, job_id, 20, 0.05))
        results = await asyncio.gather(*watchers)
        await worker
        return results, hub.polls - polls, time.monotonic() - started

    results, polls, took = asyncio.run(watch_all())
    for events in results:
        lines = [e.data["seq"] for e in events if e.kind == "log"]
        assert lines == list(range(1, 21))
        assert events[-1].kind == "state" and events[-1].data["state"] == "succeeded"
        assert events[-1].id == "20"
        assert [e.data["files"] for e in events if e.kind == "progress"][-1] == 20
    # One read per period for all fifty while the job ran, not fifty.
    assert 3 <= polls <= took / hub.every + 3, (polls, took)
    assert hub.watching() == {}
    engine.dispose()


def test_a_watcher_that_leaves_stops_the_poller(state_url: str) -> None:
    engine = open_engine(state_url)
    job_id = queue.enqueue(engine, "backup", "alpha")
    hub = WatcherHub(state_reader(cast(Gate, _Gate(engine))))
    hub.every = 0.05

    async def leave() -> tuple[Any, dict[int, int], int, int]:
        events = hub.watch(job_id)
        first = await anext(events)  # the queued job's state
        watching = hub.watching()
        await events.aclose()  # the client went away
        polls = hub.polls
        await asyncio.sleep(0.3)
        return first, watching, polls, hub.polls

    first, watching, polls, later = asyncio.run(leave())
    assert (first.kind, first.data["state"]) == ("state", "queued")
    assert watching == {job_id: 1}
    assert hub.watching() == {} and later == polls  # no more reads once it left

    async def missing() -> None:
        async for _event in hub.watch(999_999):
            pass

    with pytest.raises(JobNotFound):
        asyncio.run(missing())
    engine.dispose()
