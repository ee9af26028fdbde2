"""costor.db.queue on real SQLite or PostgreSQL: a job read back, claimed once, finished,
and its notification recorded (the daemon's tests, tests/cli/test_daemon.py, run the
rest: schedules, concurrent claims, recovery)."""

from __future__ import annotations

from costor.db import queue
from costor.db.session import open_engine


def test_claim_once_finish_and_record_the_notification(state_url: str) -> None:
    engine = open_engine(state_url)
    assert queue.get_job(engine, 1) is None
    job_id = queue.enqueue(engine, "check", "main", site="hq", params={"read_data_subset": "5%"})
    queued = queue.get_job(engine, job_id)
    assert queued is not None and (queued.state, queued.site) == ("queued", "hq")
    claimed = queue.claim(engine, "host:1:abc")
    assert claimed is not None and claimed.id == job_id and claimed.state == "running"
    assert queue.claim(engine, "host:2:def") is None  # taken once
    assert queue.claim_job(engine, job_id, "host:2:def") is None
    finished = queue.finish(engine, job_id, "failed", error="damage")
    assert finished is not None and finished.state == "failed"
    queue.record_notification(engine, job_id, notified=False, problem="webhook down")
    row = queue.get_job(engine, job_id)
    assert row is not None and not row.notified
    assert row.error == "damage; notification: webhook down"
    queue.record_notification(engine, job_id, notified=True, problem=None)
    row = queue.get_job(engine, job_id)
    assert row is not None and row.notified and row.error == "damage; notification: webhook down"
    assert queue.job_json(row)["params"] == {"read_data_subset": "5%"}
