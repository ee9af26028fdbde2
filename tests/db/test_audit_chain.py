"""costor.db.audit on real SQLite or PostgreSQL: records appended to one hash chain,
read back with filters, and every way of tampering with the table named by ``verify``
(the CLI's end of it, with records of real commands: tests/cli/test_audit.py)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from costor.db import audit
from costor.db.models import AuditRow
from costor.db.session import Engine, open_engine
from costor.util.clock import utcnow


def _append(engine: Engine, action: str = "backup", **fields: Any) -> AuditRow:
    values: dict[str, Any] = {
        "actor": "os:alice@host",
        "target": "client:web1",
        "outcome": "ok",
        "source": "cli",
        "detail": {"snapshot": "ab12"},
    }
    return audit.append(engine, action=action, **{**values, **fields})


def _sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement), params)


def _chain(engine: Engine, count: int) -> list[AuditRow]:
    return [_append(engine, f"action-{n}") for n in range(1, count + 1)]


def test_records_form_a_chain_read_back_with_filters(state_url: str) -> None:
    engine = open_engine(state_url)
    assert audit.verify(engine).intact and audit.verify(engine).records == 0
    first = _append(engine, "backup", detail={"name": "naïve\nname", "count": 3})
    second = _append(engine, "restore", actor="user:bob", target="client:db1", outcome="failed")
    third = _append(engine, "prune", actor="system", target="pool:main", source="daemon")
    assert first.prev_hash == audit.GENESIS and second.prev_hash == first.hash
    assert third.prev_hash == second.hash and first.id is not None
    assert first.id < second.id < third.id  # type: ignore[operator]

    check = audit.verify(engine)
    assert check.intact and check.records == 3
    assert (check.head_id, check.head_hash) == (third.id, third.hash)

    newest_first = [r["action"] for r in map(audit.record_json, audit.find_records(engine))]
    assert newest_first == ["prune", "restore", "backup"]
    [stored] = audit.find_records(engine, action="backup")
    assert audit.record_json(stored)["detail"] == {"name": "naïve\nname", "count": 3}
    assert audit.record_hash(stored.prev_hash, stored) == stored.hash  # as read back
    assert [r.action for r in audit.find_records(engine, actor="user:*")] == ["restore"]
    assert [r.action for r in audit.find_records(engine, target="client:*")] == [
        "restore",
        "backup",
    ]
    assert [r.action for r in audit.find_records(engine, target="client:%")] == []  # literal
    assert [r.action for r in audit.find_records(engine, limit=1)] == ["prune"]
    later = utcnow() + timedelta(minutes=1)
    assert audit.find_records(engine, since=later) == []
    assert len(audit.find_records(engine, until=later)) == 3


def test_a_changed_record_is_named(state_url: str) -> None:
    engine = open_engine(state_url)
    rows = _chain(engine, 4)
    _sql(engine, "UPDATE audit_records SET actor = 'someone-else' WHERE id = :id", id=rows[1].id)
    broken = audit.verify(engine).broken
    assert broken is not None and (broken.record, broken.kind) == (rows[1].id, "changed")


def test_a_deleted_record_is_named(state_url: str) -> None:
    engine = open_engine(state_url)
    rows = _chain(engine, 5)
    _sql(engine, "DELETE FROM audit_records WHERE id = :id", id=rows[2].id)
    check = audit.verify(engine)
    assert check.broken is not None
    assert (check.broken.record, check.broken.kind) == (rows[2].id, "deleted")
    assert f"record {rows[2].id} was deleted" in check.broken.reason
    assert check.records == 2  # sound before the break


def test_the_first_record_deleted_is_named(state_url: str) -> None:
    engine = open_engine(state_url)
    rows = _chain(engine, 3)
    _sql(engine, "DELETE FROM audit_records WHERE id = :id", id=rows[0].id)
    broken = audit.verify(engine).broken
    assert broken is not None and broken.kind == "deleted"
    assert broken.record == rows[0].id


def _gap_after(engine: Engine, last_id: int, gap: int) -> None:
    """The next record's id leaves ``gap`` ids unused (as rolled-back appends leave on
    PostgreSQL), where a forger may slip a record in."""
    if engine.dialect.name == "postgresql":
        _sql(
            engine,
            "SELECT setval(pg_get_serial_sequence('audit_records', 'id'), :n)",
            n=last_id + gap,
        )
    else:  # SQLite hands out max(id) + 1: a placeholder row, removed after the append
        _sql(
            engine,
            "INSERT INTO audit_records (id, time, actor, action, target, outcome, detail, "
            "prev_hash, hash) VALUES (:id, :t, 'x', 'x', 'x', 'x', '{}', 'x', 'x')",
            id=last_id + gap,
            t=utcnow(),
        )


def test_a_record_inserted_in_the_middle_is_named(state_url: str) -> None:
    """A forger who knows the hash slips a well-formed record into a gap of ids: it links
    to the one before it, but the next record does not link to it."""
    engine = open_engine(state_url)
    first, second = _chain(engine, 2)
    assert second.id is not None
    _gap_after(engine, second.id, 10)
    third = _append(engine, "after-the-gap")
    _sql(engine, "DELETE FROM audit_records WHERE action = 'x'")
    assert third.id == second.id + 11
    forged = AuditRow(
        id=second.id + 5,
        time=utcnow(),
        actor="system",
        action="forget",
        target="client:web1",
        outcome="ok",
        detail="{}",
        prev_hash=second.hash,
        hash="",
    )
    forged.hash = audit.record_hash(second.hash, forged)
    with engine.begin() as connection:
        connection.execute(AuditRow.__table__.insert().values(**forged.model_dump()))  # type: ignore[attr-defined]
    broken = audit.verify(engine).broken
    assert broken is not None and (broken.record, broken.kind) == (forged.id, "inserted")
    assert f"record {third.id} follows record {second.id}" in broken.reason


def test_a_record_appended_without_the_head_is_named(state_url: str) -> None:
    engine = open_engine(state_url)
    rows = _chain(engine, 3)
    last = rows[-1]
    assert last.id is not None
    forged = AuditRow(
        id=last.id + 1,
        time=utcnow(),
        actor="system",
        action="restore",
        target="client:web1",
        outcome="ok",
        detail="{}",
        prev_hash=last.hash,
        hash="",
    )
    forged.hash = audit.record_hash(last.hash, forged)
    with engine.begin() as connection:
        connection.execute(AuditRow.__table__.insert().values(**forged.model_dump()))  # type: ignore[attr-defined]
    broken = audit.verify(engine).broken
    assert broken is not None and (broken.record, broken.kind) == (forged.id, "inserted")


def test_a_cut_tail_is_named(state_url: str) -> None:
    engine = open_engine(state_url)
    rows = _chain(engine, 4)
    _sql(engine, "DELETE FROM audit_records WHERE id >= :id", id=rows[2].id)
    broken = audit.verify(engine).broken
    assert broken is not None and (broken.record, broken.kind) == (rows[3].id, "truncated")
    assert "tail was cut" in broken.reason
    _sql(engine, "DELETE FROM audit_records")
    broken = audit.verify(engine).broken
    assert broken is not None and (broken.record, broken.kind) == (rows[3].id, "truncated")


def test_a_deleted_head_is_named_and_appending_goes_on(state_url: str) -> None:
    engine = open_engine(state_url)
    rows = _chain(engine, 2)
    _sql(engine, "DELETE FROM audit_head")
    broken = audit.verify(engine).broken
    assert broken is not None and broken.kind == "head-missing"
    more = _append(engine, "after")
    assert more.prev_hash == rows[-1].hash  # linked to the last record, not restarted
    assert audit.verify(engine).intact


@pytest.mark.parametrize("writers", [4])
def test_concurrent_writers_form_one_chain(state_url: str, writers: int) -> None:
    """Writers in threads, each with an engine of its own (as separate processes would
    have), the first appends racing to create the head row."""
    open_engine(state_url).dispose()  # the schema, made once
    per_writer = 15
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(number: int) -> None:
        engine = open_engine(state_url)
        try:
            start.wait()
            for n in range(per_writer):
                _append(engine, f"w{number}-{n}", actor=f"writer:{number}")
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = open_engine(state_url)
    check = audit.verify(engine)
    assert check.intact, check.broken
    assert check.records == writers * per_writer


def test_verify_remembers_a_bounded_window(state_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A well-formed record linking far back: within the hashes verify keeps, the records
    it skips are named as inserted; beyond them it is still a broken link, named as a
    deletion at the same place (memory does not grow with the log)."""
    engine = open_engine(state_url)
    rows = _chain(engine, 4)
    last = rows[-1]
    assert last.id is not None
    forged = AuditRow(
        id=last.id + 1,
        time=utcnow(),
        actor="system",
        action="restore",
        target="client:web1",
        outcome="ok",
        detail="{}",
        prev_hash=rows[0].hash,
        hash="",
    )
    forged.hash = audit.record_hash(rows[0].hash, forged)
    with engine.begin() as connection:
        connection.execute(AuditRow.__table__.insert().values(**forged.model_dump()))  # type: ignore[attr-defined]
    broken = audit.verify(engine).broken
    assert broken is not None and (broken.record, broken.kind) == (rows[1].id, "inserted")
    monkeypatch.setattr(audit, "WINDOW", 2)
    broken = audit.verify(engine).broken
    assert broken is not None and (broken.record, broken.kind) == (forged.id, "deleted")
