"""``costor pool repair``: put right what a check finds, from the sources at hand.

1. **Find.** A check (structural, or reading every byte) finds the damage and records
   damaged blob copies (damage.py).
2. **Replace whole objects** from ``source``, another copy of the same pool (made by
   ``costor pool copy``, or a site's replica): a damaged or missing pack, index segment
   or snapshot manifest is put back when the source holds one that hashes to its name.
   Objects are immutable and named by their hash, so the bytes put back are exactly the
   ones first written; the records of damage in a replaced pack go.
3. **Rebuild the index** from the pack trailers if a segment is still damaged.
4. **Store blobs again**: a blob that still has no sound copy is read from the source's
   own copy (wherever the source holds it, verified under the pool's key) and stored in
   a new pack, as a backup would store it.
5. **Check again** (structurally) and report what is still lost, with the snapshots and
   paths it affects: a backup of those clients stores their content again if their
   files still hold it (docs/repair.md).

Repair only adds (packs, one index segment, records) or replaces an object with the
bytes its name proves; it never deletes data. ``prune`` later removes damaged copies a
sound one now stands in for. It takes a writer's lease, like a backup.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from costor.errors import BackendError, DataCorruption, ObjectNotFound, PoolMismatch
from costor.store import crypto
from costor.store.backends.base import Backend
from costor.store.checker import CheckReport, check, reindex
from costor.store.damage import keep_damage
from costor.store.index import Index
from costor.store.pack import pack_name
from costor.store.pool import Pool, read_identity
from costor.store.progress import Progress


@dataclass
class RepairReport:
    pool: str
    location: str
    source: str | None
    read_data: bool
    found: CheckReport  # what the first check found
    remaining: CheckReport | None = None  # the check after the repair
    replaced: list[str] = field(default_factory=list)  # objects put back from the source
    blobs_stored: int = 0  # blobs stored again from the source's copies
    index_rebuilt: bool = False

    @property
    def ok(self) -> bool:
        return self.remaining is not None and self.remaining.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "location": self.location,
            "source": self.source,
            "read_data": self.read_data,
            "ok": self.ok,
            "found": self.found.to_json(),
            "replaced": sorted(self.replaced),
            "blobs_stored": self.blobs_stored,
            "index_rebuilt": self.index_rebuilt,
            "remaining": None if self.remaining is None else self.remaining.to_json(),
        }


def repair(
    pool: Pool,
    *,
    source: Backend | None = None,
    read_data: bool = False,
    snapshots: Collection[str] = (),
    progress: Progress | None = None,
) -> RepairReport:
    """``snapshots``: manifests to put back from ``source`` if the pool lacks them (those
    the state records and the pool lost: the caller knows them, the pool does not)."""
    found = check(pool, read_data=read_data, progress=progress)
    report = RepairReport(
        pool.uuid, pool.location, source.location if source else None, read_data, found
    )
    with pool.lease("repair"):
        latest = found
        copy = _source_pool(pool, source) if source is not None else None
        # What a put-back object names may be damaged too (a pack a lost index segment
        # named, the trees of a lost snapshot): check again while objects come back.
        for _round in range(ROUNDS):
            if copy is None or not _replace_objects(pool, copy, latest, snapshots, report):
                break
            latest = _recheck(pool)
        if any(p.kind == "damaged_index" for p in latest.problems):
            reindex(pool)
            report.index_rebuilt = True
        pool.index, pool.fallback, pool.segments = Index(), Index(), set()
        pool.load_index()
        if copy is not None:
            _store_again(pool, copy, latest, report)
        pool.flush()
    report.remaining = _recheck(pool)
    return report


ROUNDS = 4  # checks while a source puts objects back (index, then snapshots, then packs)


def _recheck(pool: Pool) -> CheckReport:
    pool.index, pool.fallback = Index(), Index()  # check reads the index afresh
    return check(pool)


def _source_pool(pool: Pool, source: Backend) -> Pool:
    """The source as a pool under this pool's key: it must be a copy of the same pool
    (same UUID, and its parameters authenticated by the same key)."""
    identity = read_identity(source)
    if identity.uuid != pool.uuid:
        raise PoolMismatch(location=source.location, found=identity.uuid, expected=pool.uuid)
    copy = Pool(source, identity, pool.master)
    copy.load_index()
    return copy


def _replace_objects(
    pool: Pool,
    copy: Pool,
    found: CheckReport,
    snapshots: Collection[str],
    report: RepairReport,
) -> int:
    """Put back the damaged or missing objects ``found`` names that the source holds
    sound; returns how many."""
    names: list[str] = []
    for problem in found.problems + found.healed:
        if problem.kind in ("damaged_pack", "missing_pack"):
            names.append(pack_name(problem.object))
        elif problem.kind == "damaged_snapshot":
            names.append(f"snapshots/{problem.object}")
        elif problem.kind == "damaged_index":
            names.append(problem.object)
    held = set(pool.snapshot_ids())
    names += [f"snapshots/{sid}" for sid in sorted(snapshots) if sid not in held]
    before = len(report.replaced)
    for name in dict.fromkeys(names):
        if name in report.replaced:
            continue
        try:
            data = copy.backend.get(name)
        except (ObjectNotFound, BackendError):
            continue
        if crypto.object_hash(data) != name.rsplit("/", 1)[-1]:
            continue  # damaged in the source too: blob by blob below, where it can be
        _put_verified(pool.backend, name, data)
        report.replaced.append(name)
    replaced_packs = {n.rsplit("/", 1)[-1] for n in report.replaced if n.startswith("packs/")}
    if replaced_packs:
        keep_damage(pool, set(pool.list_packs()) - replaced_packs)
    return len(report.replaced) - before


def _put_verified(backend: Backend, name: str, data: bytes) -> None:
    """Overwrite (or write) an object with bytes its name proves, and read it back; a
    backend that kept the old bytes gets the object deleted and written again."""
    for attempt in range(2):
        backend.put(name, data)
        try:
            if crypto.object_hash(backend.get(name)) == crypto.object_hash(data):
                return
        except ObjectNotFound:
            pass
        if attempt == 0:
            backend.delete(name)
    raise DataCorruption(pack=name, reason="the copy put back does not read back as written")


def _store_again(pool: Pool, copy: Pool, found: CheckReport, report: RepairReport) -> None:
    """Blobs still without a sound copy, read from the source and stored anew."""
    wanted = {blob for problem in found.problems for blob in problem.blobs}
    for blob in sorted(wanted):
        if pool.index.lookup(blob) is not None:
            continue
        location = copy.index.lookup(blob)
        if location is None:
            continue
        try:
            data = copy.read_blob(blob, window=False)
        except (DataCorruption, BackendError):
            continue
        if pool.reserve(blob):
            pool.store_blob(location.type, blob, data)
            report.blobs_stored += 1
