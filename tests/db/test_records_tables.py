"""Migration 0007 (job_log_lines, applies) on real SQLite or PostgreSQL (the suite's
PostgreSQL pass), and the job log's numbering and bounds (costor/db/joblogs.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text

from costor.db import applies, joblogs
from costor.db.models import ApplyRow
from costor.db.session import HEAD_REVISION, MIGRATIONS, current_revision, open_engine, upgrade
from costor.ops.jobs.logs import JobLogHandler, capture_job_log

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


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


def test_0007_adds_the_tables_to_a_0006_state_and_downgrades(state_url: str) -> None:
    old = create_engine(state_url)
    upgrade(old, "0006")
    with old.begin() as connection:
        assert "job_log_lines" not in inspect(connection).get_table_names()
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
        assert current_revision(connection) == HEAD_REVISION
        tables = set(inspect(connection).get_table_names())
        [(job_id,)] = connection.execute(text("SELECT id FROM jobs")).all()
    assert {"job_log_lines", "applies"} <= tables
    line = joblogs.LogLine(NOW, "INFO", "job started")
    assert joblogs.append_lines(engine, job_id, [line]) == 1
    rows, first = joblogs.read_lines(engine, job_id)
    assert [(r.seq, r.text, first) for r in rows] == [(1, "job started", 1)]
    applied = ApplyRow(
        started_at=NOW, finished_at=NOW, actor="os:a@h", outcome="succeeded", counts="{}"
    )
    apply_id = applies.record_apply(engine, applied)
    assert [r.id for r in applies.recent_applies(engine)] == [apply_id]
    engine.dispose()
    _downgrade(state_url, "0006")
    check = create_engine(state_url)
    with check.connect() as connection:
        assert current_revision(connection) == "0006"
        left = set(inspect(connection).get_table_names())
    check.dispose()
    assert not {"job_log_lines", "applies"} & left and "jobs" in left


def test_a_jobs_log_keeps_its_newest_lines(state_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joblogs, "MAX_LINES", 5)
    monkeypatch.setattr(joblogs, "MAX_LINE_CHARS", 10)
    engine = open_engine(state_url)
    lines = [joblogs.LogLine(NOW, "INFO", f"line {n}") for n in range(1, 9)]
    assert joblogs.append_lines(engine, 7, lines[:3]) == 3
    assert joblogs.append_lines(engine, 7, lines[3:]) == 8  # numbered on from the last
    assert joblogs.append_lines(engine, 8, [joblogs.LogLine(NOW, "ERROR", "x" * 25)]) == 1
    rows, first = joblogs.read_lines(engine, 7)
    assert first == 4 and [r.seq for r in rows] == [4, 5, 6, 7, 8]  # the oldest dropped
    assert [r.text for r in rows] == [f"line {n}" for n in range(4, 9)]
    after, _first = joblogs.read_lines(engine, 7, after=6, limit=1)
    assert [r.seq for r in after] == [7]
    [long] = joblogs.read_lines(engine, 8)[0]
    assert long.text == "x" * 9 + "…" and long.level == "ERROR"
    assert joblogs.read_lines(engine, 9) == ([], None) and joblogs.last_seq(engine, 9) == 0


def test_the_handler_writes_a_runs_records_line_by_line(state_url: str) -> None:
    engine = open_engine(state_url)
    logger = logging.getLogger("costor.test-records")
    logger.setLevel(logging.DEBUG)
    with capture_job_log(engine, 3) as handler:
        assert isinstance(handler, JobLogHandler)
        logger.debug("not kept: below INFO")
        logger.info("one")
        logger.warning("two\n  three")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.info("after the job: not its")
    rows, first = joblogs.read_lines(engine, 3)
    texts = [(r.level, r.text) for r in rows]
    assert texts[:4] == [
        ("INFO", "one"),
        ("WARNING", "two"),
        ("WARNING", "  three"),
        ("ERROR", "failed"),
    ]
    assert texts[-1] == ("ERROR", "ValueError: boom") and first == 1
    assert not any("not kept" in t or "after the job" in t for _level, t in texts)
