"""The audit log (the ``audit_records`` and ``audit_head`` tables): append a record to
the hash chain, read records back, verify the chain (docs/audit.md).

The chain: each record's ``hash`` is SHA-256 of the previous record's hash followed by
the canonical JSON of its own fields, its id and time included (:func:`record_hash`);
the first record's previous hash is empty. Records are chained in id order. The
``audit_head`` row names the last record (its id and hash), so a cut tail shows too.

Appending is serialised by the head row: PostgreSQL locks it (``SELECT … FOR UPDATE``)
before the record is inserted, so the ids the sequence hands out follow the chain's
order; SQLite's writing transactions (``BEGIN IMMEDIATE``, costor.db.session) already
run one at a time. Concurrent writers in any number of processes therefore form one
unbroken chain.

There is no secret in the hash: the chain detects records changed, deleted or inserted
by anyone who does not rewrite every later record and the head consistently. Someone
with write access to the database can do that; docs/audit.md says what would catch it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from costor.db.models import AuditHeadRow, AuditRow
from costor.db.session import session_scope
from costor.util.clock import utcnow

HEAD = "audit"  # the one row of audit_head
GENESIS = ""  # the previous hash of the chain's first record
_PAGE = 1000  # records read per query while verifying
# Records whose hashes verify keeps in memory, to say that a record links past the one
# before it (an insertion) rather than to a hash no record has (a deletion). An
# insertion further back than this is reported as a deletion at the same record.
WINDOW = 10_000


# --- the hash ------------------------------------------------------------------------


def record_time(value: datetime) -> str:
    """A record's time as hashed: UTC, microseconds, ``Z``. SQLite hands stored times
    back without a zone (they were stored as UTC), PostgreSQL with one."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def canonical_record(row: AuditRow) -> bytes:
    """The fields a record's hash covers, as canonical JSON (sorted keys, no spaces,
    non-ASCII escaped). ``detail`` is covered as the text stored."""
    fields = {
        "id": row.id,
        "time": record_time(row.time),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "source": row.source,
        "request_id": row.request_id,
        "detail": row.detail,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")


def record_hash(prev_hash: str, row: AuditRow) -> str:
    """``sha256(prev_hash ‖ canonical JSON of the record)``, hex."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_record(row)).hexdigest()


# --- appending -----------------------------------------------------------------------


def append(
    engine: Engine,
    *,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    source: str | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditRow:
    """Append one record to the chain, in a transaction of its own that holds the head
    row; returns the stored record (its id and hash set)."""
    with session_scope(engine, write=True) as session:
        head = _locked_head(session)
        row = AuditRow(
            time=utcnow(),
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            source=source,
            request_id=request_id,
            detail=json.dumps(detail or {}, sort_keys=True, default=str),
            prev_hash=head.last_hash,
            hash="",
        )
        session.add(row)
        session.flush()  # the id: assigned now, while the head is held
        row.hash = record_hash(head.last_hash, row)
        assert row.id is not None
        head.last_id, head.last_hash = row.id, row.hash
        session.add(row)
        session.add(head)
    return row


def _locked_head(session: Session) -> AuditHeadRow:
    """The head row, locked for this transaction. Made on the first append (or if it
    was lost, from the last record, so appending goes on and the chain stays linked;
    ``verify`` only reports a missing head while no record was appended since). Two
    first appends at once: one inserts, the other's insert does nothing and waits."""
    head = session.get(AuditHeadRow, HEAD, with_for_update=True)
    if head is not None:
        return head
    last = session.exec(select(AuditRow).order_by(col(AuditRow.id).desc()).limit(1)).first()
    values = {
        "name": HEAD,
        "last_id": last.id if last is not None and last.id is not None else 0,
        "last_hash": last.hash if last is not None else GENESIS,
    }
    insert = _dialect(session).insert(AuditHeadRow).values(**values)
    session.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
    head = session.get(AuditHeadRow, HEAD, with_for_update=True, populate_existing=True)
    assert head is not None
    return head


def _dialect(session: Session) -> Any:
    """The database's dialect package (``sqlalchemy.dialects.sqlite`` or ``.postgresql``:
    its ``insert`` has ``on_conflict_do_nothing``), loaded when the engine was made.
    Not imported here at the top: the PostgreSQL one is ~20 ms of imports that every
    audited command on SQLite paid for nothing."""
    return sys.modules[f"sqlalchemy.dialects.{session.get_bind().dialect.name}"]


# --- reading -------------------------------------------------------------------------


def find_records(
    engine: Engine,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    limit: int = 100,
) -> list[AuditRow]:
    """Records matching every filter given, newest first, at most ``limit``.
    ``actor``, ``action`` and ``target`` match exactly, or as a pattern when they hold
    ``*`` (any run of characters), e.g. ``user:*`` or ``client:web*``."""
    query = select(AuditRow)
    if since is not None:
        query = query.where(col(AuditRow.time) >= since)
    if until is not None:
        query = query.where(col(AuditRow.time) < until)
    for column, wanted in (
        (col(AuditRow.actor), actor),
        (col(AuditRow.action), action),
        (col(AuditRow.target), target),
    ):
        if wanted is None:
            continue
        if "*" in wanted:
            query = query.where(column.like(_like_pattern(wanted), escape="\\"))
        else:
            query = query.where(column == wanted)
    query = query.order_by(col(AuditRow.id).desc()).limit(max(0, limit))
    with session_scope(engine, write=False) as session:
        return list(session.exec(query))


def _like_pattern(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def record_json(row: AuditRow) -> dict[str, Any]:
    """A record as ``costor audit --json`` shows it (``detail`` parsed)."""
    try:
        detail: Any = json.loads(row.detail)
    except ValueError:
        detail = row.detail  # not JSON (written by another tool): shown as stored
    return {
        "id": row.id,
        "time": record_time(row.time),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "source": row.source,
        "request_id": row.request_id,
        "detail": detail,
        "hash": row.hash,
    }


# --- anchors (costor/store/anchor.py) ---------------------------------------------------


@dataclass(frozen=True)
class ChainPoint:
    """Where the chain stands: which chain (its first record's hash), and the record the
    head names with its hash."""

    chain: str
    record: int
    hash: str


def chain_point(engine: Engine) -> ChainPoint | None:
    """The chain's identity and head, for an anchor; None while the log is empty."""
    with session_scope(engine, write=False) as session:
        first = session.exec(select(AuditRow).order_by(col(AuditRow.id)).limit(1)).first()
        head = session.get(AuditHeadRow, HEAD)
        if first is None or head is None:
            return None
        return ChainPoint(first.hash, head.last_id, head.last_hash)


def hash_of(engine: Engine, record: int) -> str | None:
    """The stored hash of record ``record``; None when there is no such record."""
    with session_scope(engine, write=False) as session:
        row = session.get(AuditRow, record)
        return None if row is None else row.hash


# --- verifying -----------------------------------------------------------------------


@dataclass(frozen=True)
class BrokenLink:
    """Where the chain first breaks: the record named (``record``), how (``kind``:
    ``changed``, ``deleted``, ``inserted``, ``truncated``, ``head-missing``) and a
    sentence saying so."""

    record: int
    kind: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class ChainCheck:
    """``costor audit verify``: how many records were found sound (all of them, or those
    before the break), what the head says, and the first broken link (None: intact)."""

    records: int
    head_id: int | None
    head_hash: str | None
    broken: BrokenLink | None
    # The pools' anchors compared with the chain (costor/ops/audit.py verify_log).
    anchors: tuple[dict[str, Any], ...] = ()

    @property
    def intact(self) -> bool:
        return self.broken is None

    def to_json(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "records": self.records,
            "head": None
            if self.head_id is None
            else {"record": self.head_id, "hash": self.head_hash},
            "broken": self.broken.to_json() if self.broken is not None else None,
            "anchors": list(self.anchors),
        }


class _Walk:
    """The records walked so far: how many, the first one's id, the last one, and the
    hashes of the most recent ones (:data:`WINDOW`), each with its id and the id of the
    record after it, to tell an inserted record from a deleted one in bounded memory."""

    def __init__(self) -> None:
        self.count = 0
        self.first_id = 0
        self.previous: AuditRow | None = None
        self.recent: OrderedDict[str, list[int]] = OrderedDict()  # hash -> [id, next id]

    def add(self, row: AuditRow) -> None:
        assert row.id is not None
        if self.previous is not None and self.previous.hash in self.recent:
            self.recent[self.previous.hash][1] = row.id
        self.recent[row.hash] = [row.id, 0]
        if len(self.recent) > WINDOW:
            self.recent.popitem(last=False)
        self.first_id = self.first_id or row.id
        self.count += 1
        self.previous = row

    def check(self, row: AuditRow) -> BrokenLink | None:
        """The break at ``row``, if it does not follow the records walked so far."""
        assert row.id is not None
        if record_hash(row.prev_hash, row) != row.hash:
            return BrokenLink(
                row.id,
                "changed",
                f"record {row.id} was changed or forged: its hash does not match its contents",
            )
        previous = self.previous
        expected = previous.hash if previous is not None else GENESIS
        if row.prev_hash == expected:
            return None
        assert previous is not None and previous.id is not None  # else expected is GENESIS
        if row.prev_hash == GENESIS or row.prev_hash in self.recent:
            # It links to an earlier record (or the start): those between were inserted.
            if row.prev_hash == GENESIS:
                before, inserted = "the chain's start", self.first_id
            else:
                linked, inserted = self.recent[row.prev_hash]
                before = f"record {linked}"
            return BrokenLink(
                inserted,
                "inserted",
                f"record {inserted} was inserted: record {row.id} follows {before}, "
                f"not record {previous.id}",
            )
        if row.id - previous.id > 1:
            missing = _span(previous.id + 1, row.id - 1)
            return BrokenLink(
                previous.id + 1,
                "deleted",
                f"record {missing} was deleted: record {row.id} links to a record no "
                "longer in the log",
            )
        return BrokenLink(
            row.id,
            "deleted",
            f"a record before record {row.id} was deleted: it links to a record no "
            "longer in the log",
        )

    def check_start(self, row: AuditRow) -> BrokenLink | None:
        """The first record must start the chain."""
        assert row.id is not None
        if record_hash(row.prev_hash, row) != row.hash or row.prev_hash == GENESIS:
            return self.check(row)
        missing = f"record {_span(1, row.id - 1)} was" if row.id > 1 else "records were"
        return BrokenLink(
            1 if row.id > 1 else row.id,
            "deleted",
            f"{missing} deleted: the log's first record, {row.id}, does not start the chain",
        )

    def check_head(self, head: AuditHeadRow | None, after_head: int | None) -> BrokenLink | None:
        """Does the head name the last record walked? ``after_head``: the first record
        after the one the head names, when that one is in the log."""
        last = self.previous
        if head is None:
            if last is None:
                return None  # an empty log, never written to
            assert last.id is not None
            return BrokenLink(
                last.id, "head-missing", "the chain's head row (audit_head) was deleted"
            )
        if last is None:
            if head.last_id == 0:
                return None
            return BrokenLink(
                head.last_id,
                "truncated",
                f"record {head.last_id} was deleted: the log is empty, but its head names "
                f"record {head.last_id} as the last",
            )
        assert last.id is not None
        if head.last_id == last.id:
            if head.last_hash == last.hash:
                return None
            return BrokenLink(
                last.id,
                "changed",
                f"record {last.id} was changed: its hash is not the one the chain's head recorded",
            )
        if after_head is not None:
            return BrokenLink(
                after_head,
                "inserted",
                f"record {after_head} was inserted: the chain's head ends at record {head.last_id}",
            )
        if head.last_id > last.id:
            return BrokenLink(
                head.last_id,
                "truncated",
                f"record {_span(last.id + 1, head.last_id)} was deleted (the log's tail was "
                f"cut): the chain's head names record {head.last_id} as the last, the log "
                f"ends at record {last.id}",
            )
        return BrokenLink(
            head.last_id,
            "deleted",
            f"record {head.last_id}, the last one the chain's head names, is not in the log",
        )


def _span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first} to {last}"


def verify(engine: Engine) -> ChainCheck:
    """Walk the chain in id order; the first broken link, if any."""
    walk = _Walk()
    with session_scope(engine, write=False) as session:
        head = session.get(AuditHeadRow, HEAD)
        for row in _in_order(session):
            broken = walk.check(row) if walk.count else walk.check_start(row)
            if broken is not None:
                return _report(walk, head, broken)
            walk.add(row)
        return _report(walk, head, walk.check_head(head, _after_head(session, head)))


def _after_head(session: Session, head: AuditHeadRow | None) -> int | None:
    """The id of the first record after the one the head names, if that one exists."""
    if head is None or session.get(AuditRow, head.last_id) is None:
        return None
    query = select(AuditRow.id).where(col(AuditRow.id) > head.last_id)
    return session.exec(query.order_by(col(AuditRow.id)).limit(1)).first()


def _report(walk: _Walk, head: AuditHeadRow | None, broken: BrokenLink | None) -> ChainCheck:
    return ChainCheck(
        records=walk.count,
        head_id=head.last_id if head is not None else None,
        head_hash=head.last_hash if head is not None else None,
        broken=broken,
    )


def _in_order(session: Session) -> Iterator[AuditRow]:
    """Every record in id order, a page at a time (the log may be long)."""
    after = None
    while True:
        query = select(AuditRow).order_by(col(AuditRow.id)).limit(_PAGE)
        if after is not None:
            query = query.where(col(AuditRow.id) > after)
        page = list(session.exec(query))
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].id
