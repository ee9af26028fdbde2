"""Leases: who is writing to a pool right now (``locks/<id>``, sealed JSON).

A backup takes a lease before it reads the index and drops it after its snapshot is
stored; a prune takes one of kind ``prune`` and refuses to start beside another. A
lease is refreshed while its holder works, so a lease not refreshed for
``STALE_AFTER`` seconds is a killed holder's and counts as gone (restic's stale locks
work the same way; its default is also 30 minutes). A lease also names its holder's
host and process start: one whose holder ran on this host and no longer runs (killed
-9) counts as gone at once.

Prune relies on the ordering, not on clocks: it writes its ``condemned/`` record first
and lists leases second; a backup writes its lease first and reads the condemned
records second. On storage that is read-after-write consistent (local disks, S3 since
2020), any backup prune did not see has seen the record, and so does not reuse the
condemned packs; prune waits for the leases it did see.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from costor.errors import BackendError, ObjectNotFound
from costor.store import crypto
from costor.util.processes import holder_gone, host_id, process_started

if TYPE_CHECKING:
    from costor.store.pool import Pool

LEASE_AD = b"costor-lease"
# Kinds of lease whose holders only read: they leave no pack behind when killed.
READER_LEASES = frozenset({"restore", "download", "selftest"})
REFRESH_EVERY = 300.0
STALE_AFTER = 1800.0


@dataclass(frozen=True)
class LeaseInfo:
    id: str
    kind: str
    hostname: str
    pid: int
    started: float
    refreshed: float
    # The holder's host (costor.util.processes.host_id) and process start (ticks since
    # boot); None in leases written before they were recorded.
    host: str | None = None
    pid_started: int | None = None

    def stale(self, now: float, stale_after: float = STALE_AFTER) -> bool:
        return now - self.refreshed > stale_after

    def gone(self, now: float, stale_after: float = STALE_AFTER) -> bool:
        """Stale, or held by a process of this host that no longer runs (killed -9):
        such a lease counts as gone at once, not after ``stale_after``."""
        return self.stale(now, stale_after) or holder_gone(self.host, self.pid, self.pid_started)


class Lease:
    """A held lease; refreshed by a daemon thread until ``release``."""

    def __init__(self, pool: Pool, kind: str, *, refresh_every: float = REFRESH_EVERY) -> None:
        self.pool = pool
        self.kind = kind
        self.id = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._write(self.started)
        self._thread = threading.Thread(
            target=self._refresh, args=(refresh_every,), name="lease", daemon=True
        )
        self._thread.start()

    @property
    def name(self) -> str:
        return f"locks/{self.id}"

    def _write(self, now: float) -> None:
        doc = {
            "kind": self.kind,
            "hostname": socket.gethostname(),
            # Read at each write, not at import: a job forked from the daemon is another
            # process than the one that imported this module.
            "pid": os.getpid(),
            "host": host_id(),
            "pid_started": process_started(os.getpid()),
            "started": self.started,
            "refreshed": now,
        }
        self.pool.backend.put(self.name, self.pool.sealer.seal(json.dumps(doc).encode(), LEASE_AD))

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self._write(time.time())
            except BackendError:
                continue  # the next refresh tries again; stale only after STALE_AFTER

    def release(self) -> None:
        """Drop the lease. A writer's packs not yet listed (it failed before its last
        segment) are listed first: the next backup adopts packs only when a lease says
        there may be some (``Pool.adopt_orphan_packs``). If that fails, the lease stays:
        once its holder is gone, the next backup lists the packs it left."""
        self._stop.set()
        self._thread.join()
        try:
            if self.kind not in READER_LEASES:
                self.pool.flush_index()
            self.pool.backend.delete(self.name)
        except (BackendError, ObjectNotFound):
            pass  # a lease left behind goes stale (and its packs are adopted)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def reader_lease(pool: Pool, kind: str = "restore") -> Lease | None:
    """A lease for a long read (restore, self-test), so a prune that condemns packs
    meanwhile waits for it. Best effort: a read-only pool is still readable, and then
    only the safety window protects the reader."""
    try:
        return Lease(pool, kind)
    except BackendError:
        return None


def list_leases(pool: Pool) -> Iterator[LeaseInfo]:
    """Every lease in the pool, stale ones included (unreadable ones are skipped: a
    lease sealed with another key cannot be this pool's)."""
    for info in pool.backend.list("locks/"):
        try:
            doc = json.loads(pool.sealer.open(pool.backend.get(info.name), LEASE_AD))
        except (ObjectNotFound, crypto.AuthenticationFailed, ValueError):
            continue  # released between list and get, or not ours
        yield LeaseInfo(
            id=info.name.rsplit("/", 1)[-1],
            kind=str(doc["kind"]),
            hostname=str(doc["hostname"]),
            pid=int(doc["pid"]),
            started=float(doc["started"]),
            refreshed=float(doc["refreshed"]),
            host=doc.get("host"),
            pid_started=doc.get("pid_started"),
        )
