"""Run a backup of one declared client into its pool, and record it in the state."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from costor.db import queue as jobs
from costor.errors import BackupError, CostorError, DataCorruption, HookFailed
from costor.ops.audit import anchor_head, audited
from costor.ops.context import Context
from costor.store.backup.walk import Archiver
from costor.store.progress import Progress
from costor.store.snapshot import COUNTER_FIELDS

if TYPE_CHECKING:
    from costor.config.model import Hooks


@dataclass
class BackupOutcome:
    pool: str
    snapshot: Any  # costor.store.snapshot.Snapshot
    errors: list[dict[str, str]] = field(default_factory=list)
    orphans_adopted: int = 0
    hooks: list[dict[str, Any]] = field(default_factory=list)
    method: str = "local"  # "local" | "helper" | "sftp"
    # What was stored, but not as the user may think ("/dev/loop0 is a block device: its
    # node was stored, …"). The archiver and the pull hand them over among the errors,
    # marked "severity": "warning"; taken out of them here, each naming its path.
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        marked = [e for e in self.errors if e.get("severity") == "warning"]
        if marked:
            self.errors = [e for e in self.errors if e.get("severity") != "warning"]
            self.warnings += [_naming_its_path(e) for e in marked]

    @property
    def incomplete(self) -> bool:
        """Some files or directories could not be read: the snapshot holds the rest."""
        return bool(self.snapshot.counters.get("files_failed", 0)) or any(
            error.get("path") for error in self.errors
        )

    def to_json(self) -> dict[str, Any]:
        counters = self.snapshot.counters
        return {
            "snapshot_id": self.snapshot.id,
            "client": self.snapshot.client,
            "pool": self.pool,
            "time": self.snapshot.time,
            "parent": self.snapshot.parent,
            "paths": self.snapshot.paths,
            **{name: counters.get(name, 0) for name in COUNTER_FIELDS},
            "compression_ratio": _ratio(counters),
            "duration_s": round(self.snapshot.duration_s, 3),
            "transfer": self.method,
            "hooks": [
                {k: hook[k] for k in ("phase", "command", "rc", "duration_s")}
                for hook in self.hooks
            ],
            "complete": not self.incomplete,
            "errors": self.errors,
            "warnings": self.warnings,
        }


def _naming_its_path(warning: dict[str, str]) -> str:
    """A warning's message, led by its path unless the message already names it."""
    path, message = warning.get("path", ""), warning["error"]
    return message if not path or path in message else f"{path}: {message}"


class Source(Protocol):
    """A host reached by a transport: made (and connecting, on a thread of its own) while
    the pool is opened; ``pull`` backs the host up into the pool; ``close`` ends the
    connection whatever happened."""

    def pull(
        self, ctx: Context, client: Any, pool: Any, parent: Any, *, progress: Progress | None
    ) -> Any: ...  # costor.ops.backup.pull.PullOutcome

    def close(self) -> None: ...


def _ssh(ctx: Context, client: Any) -> Source:
    # Imported when a client is reached over SSH: the pull loads asyncssh, which a
    # local-only command never imports (tests/cli/test_quiet_local.py).
    from costor.ops.backup.pull import Connection

    return Connection(ctx, client)


# The client's ``transport`` -> how a backup reaches its host. "local" walks this
# machine's own files (store/backup/walk.py): no host, no connection, so no Source.
TRANSPORTS: dict[str, Callable[[Context, Any], Source] | None] = {"local": None, "ssh": _ssh}


def run_backup(
    ctx: Context,
    client_name: str,
    *,
    progress: Progress | None = None,
    scan_totals: bool = False,
    trigger: str | None = "cli",
) -> BackupOutcome:
    """Back ``client_name`` up as applied. Every backup is a job: a run started here
    (``trigger="cli"``: ``costor backup``) records one of its own, shown by ``costor
    jobs`` and ``costor status`` like the daemon's; a daemon job passes ``None`` (its
    job row is the record). Either way the audit log records it (costor.ops.audit)."""
    with audited(ctx, "backup", f"client:{client_name}", detail={"trigger": trigger}) as noted:
        outcome = _as_job(
            ctx, client_name, progress=progress, scan_totals=scan_totals, trigger=trigger
        )
        noted.update(
            snapshot=outcome.snapshot.id, pool=outcome.pool, complete=not outcome.incomplete
        )
    anchor_head(ctx, outcome.pool)  # the log's head, kept in the pool (docs/audit.md)
    return outcome


def _as_job(
    ctx: Context,
    client_name: str,
    *,
    progress: Progress | None,
    scan_totals: bool,
    trigger: str | None,
) -> BackupOutcome:
    if trigger is None:
        return _backup(ctx, client_name, progress=progress, scan_totals=scan_totals)

    site = ctx.client_config(client_name).site if client_name in ctx.inventory.clients else None
    with jobs.recorded(ctx.engine, "backup", client_name, site=site, trigger=trigger) as job:
        outcome = _backup(ctx, client_name, progress=progress, scan_totals=scan_totals)
        job.result = outcome.to_json()
    return outcome


def _backup(
    ctx: Context, client_name: str, *, progress: Progress | None, scan_totals: bool
) -> BackupOutcome:
    client = ctx.client_config(client_name)
    # Said in the outcome (a broken inventory is said once by the edge that loaded it).
    notice = ctx.drift_notice(f"client.{client_name}", broken=False)
    if client.transport not in TRANSPORTS:
        raise BackupError(
            client=client_name, reason=f"transport {client.transport!r} is not available yet"
        )
    reach = TRANSPORTS[client.transport]
    connection, pool = _reach_and_open(ctx, client, reach)
    lease = None
    try:
        # The lease before the index: a prune that condemns packs from now on waits for
        # this backup, and packs it condemned before are not reused (store/gc/leases.py).
        lease = pool.lease("backup")
        ctx.load_index(pool)
        adopted = pool.adopt_orphan_packs()
        # A renamed client's parent may carry its earlier name ([[moved]]).
        previous = _readable_snapshots(pool, ctx.client_names(client_name))
    except BaseException:
        if connection is not None:
            connection.close()
        if lease is not None:
            lease.release()
        raise
    with lease:  # released after the snapshot is stored (or the backup failed)
        outcome = _run(ctx, client, pool, previous, adopted, connection, progress, scan_totals)
    if notice is not None:
        outcome.warnings.insert(0, notice)
    return outcome


def _reach_and_open(
    ctx: Context, client: Any, reach: Callable[[Context, Any], Source] | None
) -> tuple[Source | None, Any]:
    """The host's connection (started, connecting on a thread of its own) and the opened
    pool. For a host, the pool is opened on a thread while this one makes the connection:
    opening derives the key (argon2id, ~0.16 s, which releases the GIL), and making the
    connection imports the SSH stack (asyncssh, ~0.09 s of imports); a new ``costor
    backup`` process so pays the larger of the two, not their sum (bench/ssh.py)."""
    if reach is None:
        return None, ctx.open_pool(client.pool, load_index=False)
    ctx.engine  # noqa: B018  (made once here: both threads read the state)
    with ThreadPoolExecutor(1, thread_name_prefix="open-pool") as opener:
        opening = opener.submit(ctx.open_pool, client.pool, load_index=False)
        connection: Source | None = None
        try:
            connection = reach(ctx, client)
            pool = opening.result()
        except BaseException:
            if connection is not None:
                connection.close()
            raise  # once the pool's opening ended (the executor waits for it)
    return connection, pool


def _run(
    ctx: Context,
    client: Any,
    pool: Any,
    previous: list[Any],
    adopted: int,
    connection: Source | None,
    progress: Progress | None,
    scan_totals: bool,
) -> BackupOutcome:
    client_name = client.name
    parent = previous[-1] if previous else None
    written: dict[str, int] = {}
    pool.on_pack_written = written.__setitem__
    if connection is not None:
        pulled = connection.pull(ctx, client, pool, parent, progress=progress)
        ctx.record_snapshot(pool, pulled.snapshot, written)
        outcome = BackupOutcome(client.pool, pulled.snapshot, pulled.errors, adopted)
        outcome.hooks, outcome.method = pulled.hooks, pulled.method
        return outcome
    hooks: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    try:
        # The hooks run here, on this machine, as over SSH on the host: a before hook
        # that fails ends the backup (no snapshot), the after hooks always run, and one
        # that fails is reported with the snapshot kept. A snapshot profile's before
        # hook makes the LVM/ZFS/btrfs snapshot the image is read from.
        for command in client.hooks.before:
            hooks.append(run_local_hook("before", command, client.hooks))
            if hooks[-1]["rc"] != 0:
                raise HookFailed(
                    client=client_name,
                    phase="before",
                    command=command,
                    rc=hooks[-1]["rc"],
                    stderr=hooks[-1]["stderr"].strip() or "(no stderr)",
                )
        snapshot, errors = _archive(client, pool, parent, progress, scan_totals)
    finally:
        for command in client.hooks.after:
            hooks.append(run_local_hook("after", command, client.hooks))
    ctx.record_snapshot(pool, snapshot, written)
    errors += [
        {
            "path": "",
            "error": f"after hook `{h['command']}` exited with {h['rc']}: {h['stderr'].strip()}",
        }
        for h in hooks
        if h["phase"] == "after" and h["rc"] != 0
    ]
    outcome = BackupOutcome(client.pool, snapshot, errors, adopted)
    outcome.hooks = hooks
    return outcome


def _archive(
    client: Any, pool: Any, parent: Any, progress: Progress | None, scan_totals: bool
) -> tuple[Any, list[dict[str, str]]]:
    """This machine's own files and images, read by the archiver (store/backup/walk.py)."""
    archiver = Archiver(
        pool,
        client=client.name,
        paths=list(client.paths),
        # Locally every image is read whole (the changed-block methods save transfer
        # from a host; here unchanged chunks dedup): ``changes`` is for SSH clients.
        images=[image.path for image in client.images],
        exclude=list(client.exclude),
        one_file_system=client.one_file_system,
        progress=progress,
    )
    return archiver.run(parent, scan_totals=scan_totals), archiver.errors


def run_local_hook(phase: str, command: str, hooks: Hooks) -> dict[str, Any]:
    """Run one hook of a local client with ``sh -c``, in a session of its own (on
    timeout the whole group is killed, its children too), as the helper does on a host
    (costor/transport/helper.py); ``hooks.env`` is added to the environment. The result
    is the helper's hook document."""
    timeout = float(hooks.timeout_s)
    environment = dict(os.environ, **hooks.env)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            command,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=environment,
        )
        try:
            out, err = process.communicate(timeout=timeout)
            rc = process.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            rc, err = -9, err + f"\ntimed out after {timeout:g}s".encode()
    except OSError as error:
        rc, out, err = 127, b"", str(error).encode()
    return {
        "phase": phase,
        "command": command,
        "rc": rc,
        "stdout": out[-4096:].decode("utf-8", "replace"),
        "stderr": err[-4096:].decode("utf-8", "replace"),
        "duration_s": round(time.monotonic() - started, 3),
    }


def _ratio(counters: dict[str, int]) -> float | None:
    """Plaintext bytes per stored byte of this backup's new data (None: nothing new)."""
    stored = counters.get("bytes_added", 0)
    return round(counters.get("bytes_added_raw", 0) / stored, 3) if stored else None


def run_many(
    ctx: Context, names: list[str], *, parallel: int
) -> dict[str, BackupOutcome | Exception]:
    """Back up ``names``, ``parallel`` at a time; a failure is that client's result
    (the others go on). Results in the order of ``names``."""

    def one(name: str) -> BackupOutcome | Exception:
        try:
            return run_backup(ctx, name)
        except CostorError as error:
            return error

    ctx.engine  # noqa: B018  (created once here, not raced for by the threads)
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="backup") as executor:
        return dict(zip(names, executor.map(one, names), strict=True))


def _readable_snapshots(pool: Any, names: Collection[str]) -> list[Any]:
    """The client's snapshots, oldest first, to choose the parent from. A damaged
    manifest (any client's) is passed over rather than stopping every backup to the
    pool: a parent only saves re-reading files, and `costor check` reports the damage."""
    found = []
    for snapshot_id in pool.snapshot_ids():
        try:
            snapshot = pool.load_snapshot(snapshot_id)
        except DataCorruption:
            continue
        if snapshot.client in names:
            found.append(snapshot)
    return sorted(found, key=lambda s: (s.time, s.id))
