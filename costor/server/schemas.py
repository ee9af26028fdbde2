"""The Admin API's answers as typed models: what the OpenAPI document promises for each
read route, field for field the ``to_json()`` document of the use case the route calls
(the one ``--json`` prints), in the same key order.

A route names its model as ``response_model``; FastAPI checks the use case's document
against it on the way out (a document that drifted from its model is a 500 in the
error shape, caught by the tests, never a silently different answer) and writes it in
the model's order. Keys a document sets only sometimes (a snapshot's ``taken_as``, an
entry's symlink ``target``) have no default in the answer: the routes answer with
``response_model_exclude_unset``, so a key absent from the document is absent from the
answer, as in ``--json``.

Errors: every ``4xx`` answer is an :class:`ErrorDocument` (``costor/server/errors.py``
makes them); :func:`error_responses` declares which statuses a route may answer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Health = Literal["ok", "warning", "critical"]


class _Document(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorDocument(_Document):
    """Every error answer: the error's class (``costor/errors.py``), its message, and
    the request's id (also in ``X-Request-Id``)."""

    error: str = Field(description="the error's class, e.g. SnapshotNotFound")
    message: str
    request_id: str | None


ERROR_SCHEMA = "#/components/schemas/ErrorDocument"
ERROR_MEANING = {
    400: "invalid input (a query value, a body, a time that is not ISO 8601)",
    401: "no valid bearer token",
    403: "the token lacks the permission on what it sees",
    404: "not found, or not the caller's to see (never 403 for what it may not see)",
    409: "the object's state forbids it",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that may answer these error statuses."""
    return {
        status: {"model": ErrorDocument, "description": ERROR_MEANING[status]}
        for status in statuses
    }


# --- costor status --json ------------------------------------------------------------


class JobOutcome(_Document):
    """A client's last job of a kind, as ``costor status`` shows it."""

    id: int
    state: str
    finished_at: str | None
    error: str | None


class ClientStatus(_Document):
    """One client's health against its RPO (``costor status --json``'s ``clients``)."""

    client: str
    site: str
    pool: str
    policy: str | None
    last_backup: str | None
    age_s: int | None = Field(description="seconds since the last good backup")
    rpo_s: int | None = Field(description="the policy's RPO, seconds")
    last_backup_job: JobOutcome | None
    last_check: JobOutcome | None
    last_selftest: JobOutcome | None
    unapplied: Literal["added", "changed", "removed"] | None
    health: Health
    problems: list[str]


class InventoryState(_Document):
    valid: bool = Field(description="whether the working inventory validates")
    errors: list[str]
    unapplied: dict[str, Literal["added", "changed", "removed"]] = Field(
        description="address -> how the working inventory differs from what was applied"
    )


class SiteStatus(_Document):
    site: str
    maintenance: bool
    maintenance_reason: str | None
    health: Health


class QueueCounts(_Document):
    queued: int
    running: int


class Instance(_Document):
    """A live ``costor serve`` (its heartbeat within a minute)."""

    id: str
    hostname: str
    pid: int
    started_at: str
    heartbeat_at: str
    stopping: bool


class StatusDocument(_Document):
    """``costor status --json``."""

    health: Health
    problems: list[str]
    inventory: InventoryState
    sites: list[SiteStatus]
    clients: list[ClientStatus]
    jobs: QueueCounts
    instances: list[Instance]


# --- pools, snapshots, trees, jobs -------------------------------------------------


class LastCheck(_Document):
    """The pool's last check job that ended with an outcome."""

    job: int
    state: str = Field(description="succeeded | failed")
    finished_at: str | None
    error: str | None


class PoolDocument(_Document):
    """A pool of the applied configuration with the totals the state records."""

    pool: str
    site: str
    backend: str
    uuid: str | None = Field(description="null until `costor apply` created it")
    applied: bool
    bytes_raw: int
    bytes_stored: int
    compression_ratio: float | None = Field(description="bytes_raw / bytes_stored")
    bytes_in_snapshots: int = Field(
        description="what the catalogued snapshots hold, summed (bytes_processed), "
        "before deduplication"
    )
    dedup_ratio: float | None = Field(description="bytes_in_snapshots / bytes_raw")
    snapshots: int
    last_check: LastCheck | None = Field(description="null: never checked by a job")


class SnapshotDocument(_Document):
    """A snapshot as ``costor snapshots --json`` shows it, and the pool it is in."""

    id: str
    short_id: str
    client: str
    taken_as: str = Field(
        default=None,  # type: ignore[assignment]  # absent unless set: the answer omits it, never null
        description="the client's name in the manifest, when it was renamed since "
        "(absent otherwise)",
    )
    time: str
    paths: list[str]
    hostname: str
    parent: str | None
    tree: str
    duration_s: float
    files_new: int
    files_changed: int
    files_unmodified: int
    files_failed: int
    files_deduplicated: int
    dirs: int
    images: int = 0  # block devices and image files (snapshots made before images: 0)
    entries_omitted: int
    bytes_read: int
    bytes_processed: int
    bytes_added: int
    bytes_added_raw: int
    bytes_transferred: int
    blobs_added: int
    blobs_not_compressed: int
    pool: str


class ImageFacts(_Document):
    """How an image entry was read (absent keys: not recorded)."""

    method: str = Field(
        description='"full" (every byte read), "blocks" (blocks compared with the previous '
        'snapshot\'s), "thin_delta" (only the ranges LVM\'s thin_delta named), "unknown"'
    )
    block_size: int = Field(  # type: ignore[assignment]
        default=None, description="comparison granularity, bytes"
    )
    source: str = Field(default=None, description='"blockdev" or "file"')  # type: ignore[assignment]
    source_id: str = Field(  # type: ignore[assignment]
        default=None, description="what identifies the snapshot read (for thin_delta next time)"
    )
    full_read: str = Field(  # type: ignore[assignment]
        default=None, description="why a changed-block method fell back to a full read"
    )


class TreeEntry(_Document):
    """One entry of ``costor ls --json``."""

    path: str = Field(description="absolute, as backed up (undecodable bytes as \\xNN)")
    type: Literal["file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket", "image"]
    size: int
    mode: int
    uid: int
    gid: int
    user: str
    group: str
    mtime_ns: int
    target: str = Field(
        default=None,  # type: ignore[assignment]  # absent unless a symlink, never null
        description="a symlink's target (absent for other types)",
    )
    image: ImageFacts = Field(
        default=None,  # type: ignore[assignment]  # absent unless an image, never null
        description="an image's facts: how it was read (absent for other types)",
    )


class ProgressDocument(_Document):
    """A job's progress, as its process last stored it (about twice a second)."""

    phase: str = Field(description="e.g. scanning, transferring, finishing, done; else the kind")
    files: int = Field(description="files done")
    files_total: int | None = Field(description="files in all, once known")
    bytes: int = Field(description="bytes done")
    bytes_total: int | None = Field(description="bytes in all, once known")
    rate_bps: float | None = Field(description="smoothed bytes per second (0: stalled)")
    files_per_s: float | None = Field(description="smoothed files per second")
    eta_s: float | None = Field(description="seconds left; never 0 while work remains")
    percent: float | None = Field(description="0-100, when a total is known")
    elapsed_s: float
    warnings: int
    updated_at: str


class JobDocument(_Document):
    """A job as ``costor jobs --json`` shows it."""

    id: int
    kind: str = Field(description="backup, forget, prune, check, selftest")
    target: str = Field(description="a client's name, or a pool's (check, prune)")
    site: str | None
    state: str = Field(description="queued, running, succeeded, failed, interrupted, cancelled")
    trigger: str = Field(description="schedule, manual, retry")
    schedule: str | None
    attempt: int
    max_attempts: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    instance: str | None = Field(description="the costor serve that ran it")
    params: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    progress: ProgressDocument | None = Field(
        default=None,
        description="the run's progress (null: none reported); the last one once it ended",
    )


class HealthDocument(_Document):
    """``/healthz``."""

    status: Literal["ok"]
    version: str


__all__ = [
    "ERROR_MEANING",
    "ERROR_SCHEMA",
    "ClientStatus",
    "ErrorDocument",
    "HealthDocument",
    "JobDocument",
    "PoolDocument",
    "ProgressDocument",
    "SnapshotDocument",
    "StatusDocument",
    "ImageFacts",
    "TreeEntry",
    "error_responses",
]
