"""costor.db.schedules on real SQLite or PostgreSQL: what a schedule may target, the
schedules by key and their count, and the queued runs of removed schedules cancelled."""

from __future__ import annotations

from datetime import UTC, datetime

from costor.db import queue, schedules
from costor.db.models import ClientRow, PoolRow, ScheduleRow
from costor.db.session import open_engine, session_scope

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _client(name: str, *, retired: bool = False) -> ClientRow:
    return ClientRow(
        name=name,
        pool="main",
        transport="local",
        config_digest="d",
        created_at=NOW,
        updated_at=NOW,
        retired_at=NOW if retired else None,
    )


def _schedule(key: str, kind: str, target: str) -> ScheduleRow:
    return ScheduleRow(
        key=key, kind=kind, target=target, cron="0 3 * * *", next_run=NOW, updated_at=NOW
    )


def test_targets_schedules_and_cancelled_runs(state_url: str) -> None:
    engine = open_engine(state_url)
    with session_scope(engine) as session:
        assert schedules.schedule_targets(session) == (set(), set())
        assert schedules.count_schedules(session) == 0
        session.add_all([_client("web"), _client("gone", retired=True)])
        session.add(
            PoolRow(
                name="main",
                uuid="u1",
                backend="local",
                location="/p",
                encryption="none",
                created_at=NOW,
                updated_at=NOW,
            )
        )
        session.add_all(
            [_schedule("backup:web", "backup", "web"), _schedule("prune:main", "prune", "main")]
        )
    with session_scope(engine, write=False) as session:
        assert schedules.schedule_targets(session) == ({"web"}, {"main"})
        assert sorted(schedules.schedules_by_key(session)) == ["backup:web", "prune:main"]
        assert schedules.count_schedules(session) == 2
    queued = queue.enqueue(engine, "backup", "web", schedule_key="backup:web")
    other = queue.enqueue(engine, "prune", "main", schedule_key="prune:main")
    with session_scope(engine) as session:
        schedules.cancel_queued_runs(session, ["backup:web"], NOW)
    cancelled, kept = queue.get_job(engine, queued), queue.get_job(engine, other)
    assert cancelled is not None and kept is not None
    assert (cancelled.state, cancelled.error) == ("cancelled", "its schedule was removed")
    assert cancelled.finished_at is not None
    assert kept.state == "queued"
