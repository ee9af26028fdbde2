"""Read-only documents the API serves that no CLI verb prints yet: the pools, one job,
and the facts ``/metrics`` reads (the last snapshot of each client, failed jobs by
kind). Each reads the state through :mod:`costor.db`'s query functions in one read
transaction, as a use case would.

They belong in ``costor/ops`` (a ``costor pools`` verb, ``costor jobs show ID``) and
move there when those verbs come; until then the server is their only reader.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from costor.db import catalogue, pools
from costor.db import jobs as job_history
from costor.db import queue as jobs
from costor.db.session import session_scope
from costor.errors import JobNotFound
from costor.ops.context import Context

FAILED_JOBS_READ = 100_000  # /metrics counts at most this many failed jobs
# The jobs table's id is an INTEGER: 32 bits on PostgreSQL (64 on SQLite). A larger id
# names no job, and the database would refuse it as a parameter (a 500, not a 404).
MAX_JOB_ID = 2**31 - 1


def pool_documents(ctx: Context) -> list[dict[str, Any]]:
    """Each pool of the applied configuration, with the totals the state records
    (bytes before and after compression; what its snapshots hold, before deduplication,
    and the dedup ratio it gives; snapshots catalogued) and its last check's outcome,
    sorted by name."""
    with session_scope(ctx.engine, write=False) as session:
        rows = {row.name: row for row in pools.pool_rows(session)}
        counts = {
            name: catalogue.snapshot_count(session, pool_uuid=row.uuid)
            for name, row in rows.items()
        }
        logical = catalogue.logical_bytes_by_pool(session)
        checks = {
            target: job
            for (kind, target), job in job_history.last_outcomes(session).items()
            if kind == "check"
        }
    documents = []
    for name in sorted(ctx.inventory.pools):
        config = ctx.inventory.pools[name]
        row = rows.get(name)
        raw = row.bytes_raw if row else 0
        stored = row.bytes_stored if row else 0
        held = logical.get(row.uuid, 0) if row else 0
        check = checks.get(name)
        documents.append(
            {
                "pool": name,
                "site": config.site,
                "backend": config.backend,
                "uuid": row.uuid if row else None,
                "applied": row is not None,
                "bytes_raw": raw,
                "bytes_stored": stored,
                "compression_ratio": round(raw / stored, 3) if stored else None,
                "bytes_in_snapshots": held,
                "dedup_ratio": round(held / raw, 3) if raw else None,
                "snapshots": counts.get(name, 0),
                "last_check": None
                if check is None
                else {
                    "job": check.id,
                    "state": check.state,
                    "finished_at": check.finished_at.isoformat() if check.finished_at else None,
                    "error": check.error,
                },
            }
        )
    return documents


def job_document(ctx: Context, job_id: int) -> dict[str, Any]:
    """One job as ``costor jobs --json`` shows it; :class:`JobNotFound` if none (an id
    no database column holds too: the database would refuse it, a 500)."""
    if not 1 <= job_id <= MAX_JOB_ID:
        raise JobNotFound(job_id=job_id)
    row = jobs.get_job(ctx.engine, job_id)
    if row is None:
        raise JobNotFound(job_id=job_id)
    return jobs.job_json(row)


def last_snapshots(ctx: Context) -> dict[str, dict[str, Any]]:
    """Per declared client (under every name it had): its newest catalogued snapshot's
    time, duration and bytes."""
    found: dict[str, dict[str, Any]] = {}
    with session_scope(ctx.engine, write=False) as session:
        for client in sorted(ctx.inventory.clients):
            rows = catalogue.snapshots_of_clients(session, ctx.client_names(client))
            if not rows:
                continue
            newest = max(rows, key=lambda row: (row.time, row.id))
            counters = json.loads(newest.counters)
            found[client] = {
                "time": newest.time,
                "duration_s": newest.duration_s,
                "bytes_processed": counters.get("bytes_processed", 0),
                "bytes_added": counters.get("bytes_added", 0),
            }
    return found


def failed_jobs_by_kind(ctx: Context) -> dict[str, int]:
    rows = jobs.list_jobs(ctx.engine, state="failed", limit=FAILED_JOBS_READ)
    return dict(Counter(row.kind for row in rows))
