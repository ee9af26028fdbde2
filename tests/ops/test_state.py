"""costor.ops.control.state: the schema and the lock of the state database, without the CLI."""

from __future__ import annotations

import pytest
from support.fixtures import Site

from costor.errors import StateError
from costor.ops.context import Context
from costor.ops.control.state import HEAD_REVISION, force_unlock, schema_status, upgrade_schema


def test_schema_status_and_upgrade_of_an_empty_database(site: Site) -> None:
    status = schema_status(inventory=site.inventory)
    assert (status.revision, status.head, status.lineage) == (None, HEAD_REVISION, None)
    # The document `costor db status --json` prints: no state identity without a schema.
    assert list(status.to_json()) == ["database", "revision", "head"]

    upgrade = upgrade_schema(inventory=site.inventory)
    assert (upgrade.before, upgrade.after, upgrade.changed) == (None, HEAD_REVISION, True)
    assert upgrade.to_json() == {"database": upgrade.database, "from": None, "to": HEAD_REVISION}
    again = upgrade_schema(inventory=site.inventory)
    assert (again.before, again.after, again.changed) == (HEAD_REVISION, HEAD_REVISION, False)


def test_schema_status_after_an_apply_shows_the_state_identity(applied: Site) -> None:
    status = schema_status(inventory=applied.inventory)
    assert status.revision == status.head == HEAD_REVISION
    assert status.lineage and status.serial == 3
    document = status.to_json()
    assert list(document) == ["database", "revision", "lineage", "serial", "head"]
    assert "password" not in document["database"]


def _lock_row(site: Site, lock_id: str) -> None:
    site.sql(
        "INSERT INTO state_lock (name, lock_id, operation, who, host, host_id, pid, "
        "created_at) VALUES ('state', :lock_id, 'apply', 'bob@elsewhere', 'elsewhere', "
        "'elsewhere|boot|pid:[1]', 4242, '2026-12-01 10:00:00')",
        lock_id=lock_id,
    )


def test_force_unlock_needs_the_lock_id(applied: Site) -> None:
    if not applied.database_url.startswith("sqlite"):
        pytest.skip("on PostgreSQL unlocking ends the holder's session: see the CLI test")
    ctx = Context(applied.inventory)
    with pytest.raises(StateError, match="not locked"):
        force_unlock(ctx, lock_id="lock-123")
    _lock_row(applied, "lock-123")
    with pytest.raises(StateError, match="locked by lock-123, not lock-999"):
        force_unlock(ctx, lock_id="lock-999")
    unlocked = force_unlock(ctx, lock_id="lock-123")
    assert unlocked.to_json() == {
        "unlocked": "lock-123",
        "holder": "bob@elsewhere",
        "operation": "apply",
    }
    assert unlocked.description.startswith("lock lock-123 held by bob@elsewhere (pid 4242)")
    assert applied.sql("SELECT count(*) FROM state_lock") == [(0,)]
