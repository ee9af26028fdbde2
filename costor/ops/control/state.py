"""The state database itself: its schema (``costor db upgrade`` / ``db status``) and
its lock (``costor force-unlock``).

The schema verbs need only the inventory's ``[costor]`` table (where the database is),
not a valid inventory or an applied configuration: they are how an operator repairs a
state the other verbs cannot open yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from costor.config.applied import load_settings
from costor.db import session as db_session
from costor.db import state as db_state
from costor.ops.audit import StateCaller, audited
from costor.ops.context import Context, os_actor

HEAD_REVISION = db_session.HEAD_REVISION


@dataclass
class SchemaUpgrade:
    """``before`` is ``None`` for an empty database; equal to ``after`` when nothing ran."""

    database: str  # the URL without its password
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "from": self.before, "to": self.after}


@dataclass
class SchemaStatus:
    database: str  # the URL without its password
    revision: str | None  # None: no schema yet
    head: str  # this CoStor's revision
    lineage: str | None = None  # None: no apply or plan has touched the state yet
    serial: int | None = None
    has_identity: bool = False  # the state_meta table exists (lineage and serial shown)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"database": self.database, "revision": self.revision}
        if self.has_identity:
            document.update(lineage=self.lineage, serial=self.serial)
        document["head"] = self.head
        return document


@dataclass
class Unlocked:
    lock_id: str
    holder: str
    operation: str
    description: str  # "lock … held by … since …", as a refusal names it

    def to_json(self) -> dict[str, Any]:
        return {"unlocked": self.lock_id, "holder": self.holder, "operation": self.operation}


def upgrade_schema(*, inventory: str | Path) -> SchemaUpgrade:
    """Migrate the state database named by ``inventory``'s ``[costor]`` table; safe to
    repeat. Recorded in the audit log once migrated (the log may be what it creates)."""
    url = load_settings(inventory).database_url
    engine = db_session.open_engine(url, upgrade_schema=False)
    try:
        with audited(StateCaller(engine, actor=os_actor()), "db.upgrade", "state") as noted:
            before, after = db_session.migrate(url)
            noted.update({"from": before, "to": after})
    finally:
        engine.dispose()
    return SchemaUpgrade(database=db_session.describe_url(url), before=before, after=after)


def schema_status(*, inventory: str | Path) -> SchemaStatus:
    """The schema revision and the state's identity, read without changing anything."""
    url = load_settings(inventory).database_url
    found = db_session.read_status(url)
    lineage, serial = found.get("lineage"), found.get("serial")
    return SchemaStatus(
        database=str(found["database"]),
        revision=None if found["revision"] is None else str(found["revision"]),
        head=HEAD_REVISION,
        lineage=None if lineage is None else str(lineage),
        serial=None if serial is None else int(str(serial)),
        has_identity="lineage" in found,
    )


def force_unlock(ctx: Context, *, lock_id: str) -> Unlocked:
    """Remove the state lock if it has ``lock_id`` (the id the refused command printed);
    recorded in the audit log first (costor.ops.audit)."""
    with audited(ctx, "force-unlock", "state", detail={"lock_id": lock_id}, before=True) as noted:
        info = db_state.force_unlock(ctx.engine, lock_id)
        noted.update(holder=info.who, operation=info.operation)
    return Unlocked(
        lock_id=info.lock_id,
        holder=info.who,
        operation=info.operation,
        description=info.describe(),
    )
