"""A job's progress (costor/ops/jobs/progress.py): the ETA as a pure function (seeded by
the previous run, then the smoothed rate; never 0 s while work remains), the smoothed
rate, the flusher's cadence (never a write per report), many reporting threads; stored in
the job's row (migration 0008, costor.db.queue) on real SQLite or PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from costor.db import queue
from costor.db.session import MIGRATIONS, current_revision, open_engine, upgrade
from costor.ops.jobs.progress import (
    ETA_FLOOR_S,
    WARMUP_S,
    JobProgress,
    Rate,
    Seed,
    estimate_eta,
    phases_of,
)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _written() -> tuple[list[dict[str, Any]], Any]:
    docs: list[dict[str, Any]] = []
    return docs, docs.append


# --- the ETA ------------------------------------------------------------------------


def test_nothing_known_no_eta() -> None:
    assert estimate_eta(elapsed_s=0, done=0, total=None, rate=None) is None
    assert estimate_eta(elapsed_s=5, done=100, total=None, rate=50.0) is None  # no total
    assert estimate_eta(elapsed_s=5, done=100, total=1000, rate=None) is None  # no rate yet


def test_the_live_rate_alone() -> None:
    assert estimate_eta(elapsed_s=20, done=400, total=1000, rate=100.0) == 6.0


def test_never_zero_while_work_remains() -> None:
    # A tiny remainder at a high rate, the total reached but not finished, overrun seed.
    assert estimate_eta(elapsed_s=20, done=999, total=1000, rate=1e9) == ETA_FLOOR_S
    assert estimate_eta(elapsed_s=20, done=1000, total=1000, rate=10.0) == ETA_FLOOR_S
    assert estimate_eta(elapsed_s=20, done=1200, total=1000, rate=10.0) == ETA_FLOOR_S
    seed = Seed(duration_s=20.2)
    assert estimate_eta(elapsed_s=20, done=5, total=None, rate=None, seed=seed) == ETA_FLOOR_S
    # Only when the job finished is it 0.
    assert estimate_eta(elapsed_s=20, done=5, total=10, rate=1.0, finished=True) == 0.0


def test_seeded_by_the_previous_duration_at_the_start() -> None:
    seed = Seed(duration_s=60.0)
    assert estimate_eta(elapsed_s=0, done=0, total=None, rate=None, seed=seed) == 60.0
    assert estimate_eta(elapsed_s=15, done=0, total=None, rate=None, seed=seed) == 45.0
    # Ran longer than last time and nothing else is known: no guess.
    assert estimate_eta(elapsed_s=61, done=0, total=None, rate=None, seed=seed) is None


def test_seeded_by_the_previous_rate_when_its_bytes_are_known() -> None:
    seed = Seed(duration_s=100.0, bytes=10_000)  # 100 B/s last time
    # No total yet: last time's bytes stand in for it (3,000 left at 100 B/s).
    assert estimate_eta(
        elapsed_s=0, done=7_000, total=None, rate=None, seed=seed, seed_amount=10_000
    ) == pytest.approx(30.0)
    # A total known: last time's rate applied to what is left of it.
    assert estimate_eta(
        elapsed_s=0, done=0, total=20_000, rate=None, seed=seed, seed_amount=10_000
    ) == pytest.approx(200.0)
    # More done than last time's whole: its size no longer says anything.
    assert (
        estimate_eta(elapsed_s=0, done=12_000, total=None, rate=None, seed=seed, seed_amount=10_000)
        is None
    )


def test_the_live_rate_takes_over_from_the_seed() -> None:
    seed = Seed(duration_s=100.0, bytes=10_000)  # 100 B/s last time; now 1,000 B/s
    args: dict[str, Any] = {"done": 0, "total": 10_000, "rate": 1000.0, "seed": seed}
    start = estimate_eta(elapsed_s=0, seed_amount=10_000, **args)
    half = estimate_eta(elapsed_s=WARMUP_S / 2, seed_amount=10_000, **args)
    after = estimate_eta(elapsed_s=WARMUP_S, seed_amount=10_000, **args)
    later = estimate_eta(elapsed_s=WARMUP_S * 3, seed_amount=10_000, **args)
    assert start == pytest.approx(100.0)  # the seed alone
    assert half == pytest.approx(55.0)  # half each
    assert after == later == pytest.approx(10.0)  # the live rate alone


def test_a_stall_falls_back_to_the_seed_or_nothing() -> None:
    assert estimate_eta(elapsed_s=30, done=10, total=100, rate=0.0) is None
    seed = Seed(duration_s=100.0)
    assert estimate_eta(elapsed_s=30, done=10, total=100, rate=0.0, seed=seed) == 70.0


def test_the_seed_from_a_stored_document() -> None:
    assert Seed.from_previous(12.5, {"bytes": 2048, "files": 3}) == Seed(12.5, 2048, 3)
    assert Seed.from_previous(12.5, None) == Seed(12.5, None, None)
    assert Seed.from_previous(-1, {"bytes": 0, "files": "x"}) == Seed(0.0, None, None)


# --- the smoothed rate ----------------------------------------------------------------


def test_the_rate_is_smoothed_by_time() -> None:
    rate = Rate(half_life_s=2.0)
    assert rate.sample(0.0, 0) is None  # one point is no rate
    assert rate.sample(1.0, 100) == pytest.approx(100.0)  # the first interval as it is
    # A burst of 1,000/s for one half-life moves it half way.
    assert rate.sample(3.0, 2100) == pytest.approx(550.0)
    assert rate.sample(3.0, 2100) == pytest.approx(550.0)  # no time passed: unchanged
    # Nothing for a long time: it decays towards 0.
    decayed = rate.sample(23.0, 2100)
    assert decayed is not None and decayed < 1.0


def test_phases_of_each_kind() -> None:
    assert phases_of("backup") == ("scanning", "transferring")
    assert phases_of("check") == ("checking", None)
    assert phases_of("forget") == ("forget", None)


# --- the flusher -----------------------------------------------------------------------


def test_one_write_per_changed_document_not_per_report() -> None:
    clock = Clock()
    docs, write = _written()
    progress = JobProgress(write, phase="scanning", data_phase="transferring", clock=clock)
    assert progress.flush()
    clock.now += 0.5
    assert progress.flush()  # the rates are known now: 0
    clock.now += 0.5
    assert not progress.flush()  # nothing changed: nothing written
    assert [d["phase"] for d in docs] == ["scanning"] * 2
    for _ in range(10_000):
        progress.advance(files=1)
    clock.now += 0.5
    assert progress.flush() and len(docs) == 3 and docs[-1]["files"] == 10_000
    progress.set_total(20_000, 1 << 20)
    progress.advance(size=4096)  # the first bytes: transferring
    clock.now += 0.5
    assert progress.flush()
    doc = docs[-1]
    assert doc["phase"] == "transferring"
    assert (doc["files_total"], doc["bytes_total"], doc["bytes"]) == (20_000, 1 << 20, 4096)
    assert doc["percent"] == pytest.approx(0.4)
    assert doc["eta_s"] is not None and doc["eta_s"] >= ETA_FLOOR_S
    progress.warning("/x", "unreadable")
    progress.close()  # the engine is done
    clock.now += 0.5
    assert progress.flush() and (docs[-1]["phase"], docs[-1]["warnings"]) == ("finishing", 1)
    progress.finish(succeeded=True)
    last = docs[-1]
    assert (last["phase"], last["eta_s"], last["percent"], last["rate_bps"]) == (
        "done",
        0.0,
        100.0,
        0.0,
    )


def test_a_failed_job_ends_without_an_eta() -> None:
    docs, write = _written()
    progress = JobProgress(write, phase="checking", seed=Seed(30.0))
    progress.start()
    progress.advance(files=1, size=10)
    progress.finish(succeeded=False)
    assert (docs[-1]["phase"], docs[-1]["eta_s"], docs[-1]["percent"]) == ("checking", None, None)


def test_the_rate_drops_to_zero_when_nothing_advances() -> None:
    clock = Clock()
    docs, write = _written()
    progress = JobProgress(write, phase="x", clock=clock)
    progress.flush()
    for _ in range(4):
        progress.advance(files=1, size=1000)
        clock.now += 0.5
        progress.flush()
    assert docs[-1]["rate_bps"] == pytest.approx(2000.0)
    clock.now += 6.0  # a stall
    progress.flush()
    assert docs[-1]["rate_bps"] == 0.0 and docs[-1]["files_per_s"] == 0.0


def test_the_flusher_writes_about_twice_a_second() -> None:
    docs, write = _written()
    progress = JobProgress(write, phase="x", every=0.1).start()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        progress.advance(files=1, size=1)
    progress.finish(succeeded=True)
    # ~10 periods of 0.1 s, the first and the last: never one per advance.
    assert 5 <= len(docs) <= 14, len(docs)
    assert docs[-1]["files"] == docs[-1]["bytes"] > 1000


def test_a_cancel_between_the_flushers_making_and_its_start_still_finishes() -> None:
    # A SIGTERM raised in start() after the thread was made, before it started.
    docs, write = _written()
    progress = JobProgress(write, phase="x")
    progress._flusher = threading.Thread(target=lambda: None)
    progress.finish(succeeded=False)
    assert docs[-1]["phase"] == "x" and docs[-1]["eta_s"] is None


def test_many_threads_report_and_nothing_is_lost() -> None:
    docs, write = _written()
    progress = JobProgress(write, phase="x", every=0.01).start()

    def work() -> None:
        for _ in range(20_000):
            progress.advance(files=1, size=3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    progress.finish(succeeded=True)
    assert (docs[-1]["files"], docs[-1]["bytes"]) == (160_000, 480_000)
    counted = [d["files"] for d in docs]
    assert counted == sorted(counted)


def test_a_failing_write_does_not_stop_the_job() -> None:
    calls: list[dict[str, Any]] = []

    def write(doc: dict[str, Any]) -> None:
        calls.append(doc)
        raise OSError("database gone")

    progress = JobProgress(write, phase="x")
    progress.advance(files=1)
    assert progress.flush() is False
    progress.finish(succeeded=True)
    assert len(calls) == 2 and progress.writes == 0


# --- stored in the job's row ------------------------------------------------------------


def test_stored_while_running_and_seeding_the_next(state_url: str) -> None:
    engine = open_engine(state_url)
    first = queue.enqueue(engine, "backup", "web1")
    assert queue.previous_run(engine, "backup", "web1") is None
    assert queue.claim(engine, "host:1:a") is not None
    docs, _write = _written()
    progress = JobProgress(lambda doc: queue.record_progress(engine, first, doc), phase="scanning")
    progress.start()
    progress.set_total(2, 300)
    progress.advance(files=2, size=300)
    progress.finish(succeeded=True)
    row = queue.get_job(engine, first)
    assert row is not None
    shown = queue.job_json(row)["progress"]
    assert (shown["phase"], shown["files"], shown["bytes"]) == ("done", 2, 300)
    assert queue.finish(engine, first, "succeeded") is not None
    # An ended job's progress is not written over (a late flush).
    assert not queue.record_progress(engine, first, {"phase": "late"})
    row = queue.get_job(engine, first)
    assert row is not None and queue.job_json(row)["progress"]["phase"] == "done"
    # The next backup of web1 starts from this one: its duration, bytes and files.
    second = queue.enqueue(engine, "backup", "web1")
    previous = queue.previous_run(engine, "backup", "web1", before=second)
    assert previous is not None
    duration, doc = previous
    assert duration >= 0 and Seed.from_previous(duration, doc).bytes == 300
    assert queue.previous_run(engine, "backup", "web2") is None
    assert queue.previous_run(engine, "check", "web1") is None
    assert queue.previous_run(engine, "backup", "web1", before=first) is None
    row = queue.get_job(engine, second)
    assert row is not None and queue.job_json(row)["progress"] is None
    engine.dispose()


def _downgrade(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_0008_adds_the_column_to_a_0007_state_and_downgrades(state_url: str) -> None:
    old = create_engine(state_url)
    upgrade(old, "0007")
    with old.begin() as connection:
        assert "progress" not in {c["name"] for c in inspect(connection).get_columns("jobs")}
        connection.execute(
            text(
                "INSERT INTO jobs (kind, target, state, trigger, run_after, created_at, "
                "attempts, max_attempts, params, result, notified) VALUES ('backup', 'web1', "
                "'succeeded', 'manual', '2026-01-01', '2026-01-01', 1, 3, '{}', '{}', false)"
            )
        )
    old.dispose()
    engine = open_engine(state_url)
    with engine.connect() as connection:
        assert current_revision(connection) == "0008"
        [(job_id,)] = connection.execute(text("SELECT id FROM jobs")).all()
    row = queue.get_job(engine, job_id)
    assert row is not None and queue.job_json(row)["progress"] is None  # the old job: none
    engine.dispose()
    _downgrade(state_url, "0007")
    check = create_engine(state_url)
    with check.connect() as connection:
        assert current_revision(connection) == "0007"
        assert "progress" not in {c["name"] for c in inspect(check).get_columns("jobs")}
        assert connection.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
    check.dispose()


def test_costor_jobs_shows_how_far_a_running_job_is(capsys: pytest.CaptureFixture[str]) -> None:
    from costor.cli.jobs_cmd import _print_jobs

    base = {"kind": "backup", "target": "web1", "trigger": "manual", "error": None}
    base |= {"started_at": "2026-12-07T16:00:00+00:00", "created_at": None}
    running = base | {"id": 1, "state": "running", "duration_s": None}
    _print_jobs([running | {"progress": {"percent": 41.6}}, running | {"id": 2, "progress": None}])
    done = base | {"id": 3, "state": "succeeded", "duration_s": 3.0, "progress": {"percent": 100}}
    _print_jobs([done])
    shown = capsys.readouterr().out.splitlines()
    assert " 42%  " in shown[1] and " -  " in shown[2] and " 3.0s  " in shown[4]
