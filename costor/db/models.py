"""Tables. Column names are part of the upgrade path: change them only with a migration."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel


class PoolRow(SQLModel, table=True):
    __tablename__ = "pools"

    name: str = Field(primary_key=True)
    uuid: str = Field(index=True)
    backend: str
    location: str
    encryption: str
    created_at: datetime
    updated_at: datetime
    # New data written by backups, before and after compression: the pool's ratio.
    bytes_raw: int = 0
    bytes_stored: int = 0


class ClientRow(SQLModel, table=True):
    """A client as the engine needs it. A client removed from the inventory stays here,
    ``retired_at`` set, so its snapshots keep a name and retention (its ``policy``) still
    applies; a renamed one keeps its earlier names, under which its snapshots were taken."""

    __tablename__ = "clients"

    name: str = Field(primary_key=True)
    pool: str
    site: str | None = None
    transport: str
    config_digest: str
    created_at: datetime
    updated_at: datetime
    policy: str | None = None
    former_names: str = "[]"  # JSON list, oldest first
    retired_at: datetime | None = None


class SnapshotRow(SQLModel, table=True):
    __tablename__ = "snapshots"

    id: str = Field(primary_key=True)
    pool_uuid: str = Field(index=True)
    client: str = Field(index=True)
    time: str
    tree: str
    paths: str  # JSON list
    counters: str  # JSON object
    duration_s: float = 0.0


class PackRow(SQLModel, table=True):
    __tablename__ = "packs"

    pool_uuid: str = Field(primary_key=True)
    pack_id: str = Field(primary_key=True)
    size: int
    last_verified: datetime | None = None


class StateMetaRow(SQLModel, table=True):
    """Key/value facts about the state itself: ``lineage`` (a UUID made with the state,
    so a plan made against another state is recognised), ``serial`` (bumped by every
    committed control-plane change, so a saved plan knows when it is stale) and
    ``plan_key`` (HMAC key signing plan files)."""

    __tablename__ = "state_meta"

    key: str = Field(primary_key=True)
    value: str


class ResourceRow(SQLModel, table=True):
    """One declared resource as last applied. ``attributes`` is the JSON the plan
    compared (secret references, never secret values); ``applied`` is the same as
    apply last wrote it, written by apply only, so an edit made elsewhere (the API, SQL)
    shows up in the next plan as drift, field by field."""

    __tablename__ = "resources"

    address: str = Field(primary_key=True)  # "client.web1"
    type: str = Field(index=True)
    name: str
    attributes: str  # canonical JSON
    applied: str  # canonical JSON
    created_at: datetime
    updated_at: datetime


class StateLockRow(SQLModel, table=True):
    """Who holds the state lock (one row while an apply runs)."""

    __tablename__ = "state_lock"

    name: str = Field(primary_key=True)  # "state"
    lock_id: str
    operation: str
    who: str  # user@host
    host: str
    # hostname + boot id + PID namespace: "this host" means the same running kernel and
    # PID space, not a container that happens to share the hostname.
    host_id: str
    pid: int
    started: int | None = None  # the holder's start time (clock ticks since boot)
    created_at: datetime


class UserRow(SQLModel, table=True):
    """Web UI / API users: the password only as an argon2id PHC hash."""

    __tablename__ = "users"

    name: str = Field(primary_key=True)
    password_hash: str
    updated_at: datetime


class ContentDigestRow(SQLModel, table=True):
    """Whole-file digests of content that reached a pool through a remote transport
    (keyed BLAKE2b, ``Pool.transfer_key``) -> its blobs: a host's file with a known
    digest is not sent again, whichever host sent it first. A cache: losing it costs
    transfers, never data; an entry whose blobs are gone is not used."""

    __tablename__ = "content_digests"

    pool_uuid: str = Field(primary_key=True)
    digest: str = Field(primary_key=True)  # hex
    size: int
    content: str  # blob ids, hex, concatenated
    content_key: str = Field(index=True)  # sha256 of the blob ids: from a tree's file node
    blocks: str | None = None  # base64 block hashes of a large file (in-place diffs)


class HostKeyRow(SQLModel, table=True):
    """The SSH host key recorded for a client on first contact (``costor apply``)."""

    __tablename__ = "host_keys"

    client: str = Field(primary_key=True)
    host: str
    port: int
    key: str  # OpenSSH public key line
    fingerprint: str
    recorded_at: datetime


class JobRow(SQLModel, table=True):
    """One unit of work for ``costor serve``: a backup, forget, prune, check or
    self-test. Claimed by one instance (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), run
    in a child process, retried after a crash; the history is these rows."""

    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)  # backup | forget | prune | check | selftest
    target: str = Field(index=True)  # a client's name (backup, forget, selftest) or a pool's
    state: str = Field(index=True)  # queued | running | succeeded | failed | interrupted
    trigger: str = "manual"  # schedule | manual | retry
    schedule_key: str | None = None
    site: str | None = None
    run_after: datetime = Field(index=True)  # not claimed before this
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    max_attempts: int = 3
    claimed_by: str | None = None  # instance id
    heartbeat_at: datetime | None = None
    pid: int | None = None  # the child process running it
    params: str = "{}"  # JSON: e.g. {"read_data_subset": "5%"} for a check
    result: str = "{}"  # JSON: the job's report (counters)
    error: str | None = None
    notified: bool = False
    # JSON: the run's progress document (costor.ops.jobs.progress), rewritten by the
    # job's process at most twice a second while it runs; its last one once it ended.
    progress: str | None = None


class ScheduleRow(SQLModel, table=True):
    """A recurring job derived from the applied inventory (policies' and pools'
    ``schedule``); rewritten by ``costor apply``. ``next_run`` moves forward by compare-
    and-set, so among several instances exactly one enqueues each run, and a run missed
    during downtime is enqueued once, not once per missed slot."""

    __tablename__ = "schedules"

    key: str = Field(primary_key=True)  # e.g. "backup:web1", "prune:hq-disk"
    kind: str
    target: str
    site: str | None = None
    cron: str
    params: str = "{}"  # JSON, copied to each job
    next_run: datetime
    updated_at: datetime


class SiteStateRow(SQLModel, table=True):
    """Maintenance mode set with ``costor maintenance on|off`` (the inventory's
    ``maintenance = true`` is the other way in)."""

    __tablename__ = "site_state"

    site: str = Field(primary_key=True)
    maintenance: bool = False
    reason: str | None = None
    changed_at: datetime


class InstanceRow(SQLModel, table=True):
    """A running ``costor serve``: its heartbeat tells the others (and ``status``) it is
    alive; the jobs of an instance whose heartbeat stopped are taken over."""

    __tablename__ = "instances"

    id: str = Field(primary_key=True)
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopping: bool = False


class AuditRow(SQLModel, table=True):
    """One audited action (docs/audit.md): append-only and hash-chained, each record's
    ``hash`` covering the previous record's hash and its own fields, so a record changed,
    deleted or inserted breaks the chain (``costor audit verify``)."""

    __tablename__ = "audit_records"

    id: int | None = Field(default=None, primary_key=True)  # the chain's order
    time: datetime = Field(index=True)
    actor: str = Field(index=True)  # "user:NAME", "token:ID", "os:USER@HOST", "system"
    action: str = Field(index=True)  # e.g. "backup", "restore", "apply", "login"
    target: str = Field(index=True)  # e.g. "client:web1", "pool:main", "snapshot:ab12…"
    outcome: str  # "ok" | "failed" | "denied"
    source: str | None = None  # the client address, or "cli", or "daemon"
    request_id: str | None = None
    detail: str = "{}"  # JSON: what else the action says (exit code, counts, error)
    prev_hash: str
    hash: str = Field(index=True)


class AuditHeadRow(SQLModel, table=True):
    """The chain's last record, one row: appending locks it (``FOR UPDATE`` on
    PostgreSQL, the write transaction on SQLite), so concurrent writers form one chain."""

    __tablename__ = "audit_head"

    name: str = Field(primary_key=True)  # "audit"
    last_id: int = 0
    last_hash: str = ""


class TokenRow(SQLModel, table=True):
    """An API token (``costor token create``): only a hash of its secret is kept."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True)  # the public part, shown in lists and the audit log
    user: str = Field(index=True)
    scope: str  # e.g. "admin", "read", "append", "backup-api:read"
    clients: str = "[]"  # JSON: names or globs the token is limited to ([] = the user's)
    secret_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    description: str = ""


class SessionRow(SQLModel, table=True):
    """A web login (a session cookie): only a hash of its secret is kept."""

    __tablename__ = "login_sessions"

    id: str = Field(primary_key=True)  # hash of the cookie's secret
    user: str = Field(index=True)
    csrf: str  # the token state-changing requests must carry
    address: str | None = None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


class JobLogLineRow(SQLModel, table=True):
    """One line a job's run logged (costor/ops/jobs/logs.py): numbered from 1 per job so
    a reader can ask for what came after the last line it saw. Only a job's newest
    lines are kept (costor/db/joblogs.py ``MAX_LINES``)."""

    __tablename__ = "job_log_lines"

    job_id: int = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    time: datetime
    level: str  # "INFO", "WARNING", "ERROR", "CRITICAL"
    text: str


class ApplyRow(SQLModel, table=True):
    """One ``costor apply`` and how it ended: who ran it, the changes carried out counted
    by operation and resource type, the saved plan's hash, the state's serial after it."""

    __tablename__ = "applies"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(index=True)
    finished_at: datetime
    actor: str  # as the audit log names it: "os:USER@HOST", "token:ID"
    source: str | None = None
    outcome: str  # "succeeded" | "failed"
    plan_file: str | None = None
    plan_hash: str | None = None  # sha256 of the saved plan file's bytes, if one was applied
    pending: int = 0  # changes the plan held
    counts: str = "{}"  # JSON: {"created": {"client": 1}, "changed": {…}, "deleted": {…}, …}
    applied: str = "[]"  # JSON: the addresses changed, in order
    serial: int | None = None  # the state's serial after it (None: not known)
    error: str | None = None
