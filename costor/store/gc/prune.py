"""Prune: reclaim the space of data no snapshot needs, without ever blocking a backup.

Two-phase garbage collection (condemned.py holds the records, leases.py the writers):

1. **Mark.** Every snapshot's trees are walked; a pack holding no needed blob is
   *condemned* (recorded, not deleted). A pack whose needed blobs fill less than
   ``1 - repack_threshold`` of it is *repacked*: its needed blobs, verified, are copied
   as they are (still sealed) into new packs, and the old pack is condemned. At most
   ``max_repack_bytes`` are read per run.
2. **Sweep** (a later run, or this one when nothing else is writing and the window is
   zero). A condemned pack is deleted when the safety window has passed since it was
   condemned, every backup that was running then has finished, and no snapshot needs a
   blob only condemned packs hold. A pack a running backup wrote is unreferenced until
   that backup's snapshot lands; the backup's lease keeps it from being deleted, and
   its snapshot then takes it back ("resurrected").

Backups take a lease and read the condemned records before using the index, so a
backup that starts after a pack was condemned does not dedup against it. Nothing here
waits for a backup, and a backup never waits for prune.

Damaged copies (damage.py): a needed blob is homed in a sound copy when the pool holds
one, so the damaged copy is unused; a pack holding such a copy is repacked whatever its
share of unused bytes (within ``max_repack_bytes``), and the records of packs deleted
are dropped.

Writes are ordered so a prune killed at any point leaves a consistent pool: new packs,
a provisional record, the leases, the rewritten index (old segments removed only after
the new one is stored), the deletions, and last the final record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from costor.errors import BackendError, DataCorruption, PoolError
from costor.store import crypto
from costor.store.damage import keep_damage, read_damage
from costor.store.gc.condemned import (
    CondemnedPack,
    condemned_records,
    read_condemned,
    write_condemned,
)
from costor.store.gc.leases import STALE_AFTER, LeaseInfo, list_leases
from costor.store.index import Index
from costor.store.pack import BlobCorrupt, BlobType, PackBuilder, PackEntry, pack_name
from costor.store.pool import Pool
from costor.store.progress import Progress


class PruneBusy(PoolError):
    """Another prune holds pool {location} (lease {lease} from {hostname}, pid {pid}); try later."""

    http_status = 409


class PruneRefused(PoolError):
    """Prune changed nothing in pool {location}: {reason}. Run `costor check` to see the damage."""

    http_status = 409


@dataclass
class PruneOptions:
    safety_window: float = 3600.0  # seconds a pack stays condemned before deletion
    repack_threshold: float = 0.5  # repack a pack once this share of its bytes is unused
    # ...and, most unused first, more packs while the unused bytes left in partly used
    # packs exceed this share of the needed bytes (restic's --max-unused, 5% too)
    max_unused: float = 0.05
    max_repack_bytes: int = 1024 * 1024 * 1024  # bound on the repack work of one run
    stale_after: float = STALE_AFTER  # a lease not refreshed this long is a dead writer's
    dry_run: bool = False


@dataclass
class PruneReport:
    pool: str
    dry_run: bool
    snapshots: int = 0
    packs: int = 0
    bytes_stored: int = 0
    blobs_used: int = 0
    blobs_unused: int = 0
    bytes_unused: int = 0
    packs_condemned: int = 0  # newly, by this run
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_written: int = 0
    packs_resurrected: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_waiting: int = 0  # condemned, kept for now (window or a running backup)
    bytes_waiting: int = 0
    waiting_for: list[dict[str, Any]] = field(default_factory=list)  # running backups
    unreadable_packs: list[str] = field(default_factory=list)  # left alone, for check
    deleted: dict[str, int] = field(default_factory=dict)  # pack id -> size
    written: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_deleted - self.bytes_written

    def to_json(self) -> dict[str, Any]:
        doc = {
            name: getattr(self, name)
            for name in (
                "pool",
                "dry_run",
                "snapshots",
                "packs",
                "bytes_stored",
                "blobs_used",
                "blobs_unused",
                "bytes_unused",
                "packs_condemned",
                "packs_repacked",
                "packs_written",
                "bytes_written",
                "packs_resurrected",
                "packs_deleted",
                "bytes_deleted",
                "packs_waiting",
                "bytes_waiting",
                "waiting_for",
                "unreadable_packs",
            )
        }
        doc["bytes_reclaimed"] = self.bytes_reclaimed
        doc["duration_s"] = round(self.duration_s, 3)
        return doc


def prune(pool: Pool, options: PruneOptions, progress: Progress | None = None) -> PruneReport:
    started = time.monotonic()
    report = PruneReport(pool=pool.uuid, dry_run=options.dry_run)
    now = time.time()
    leases = [lease for lease in list_leases(pool) if not lease.gone(now, options.stale_after)]
    other = next((lease for lease in leases if lease.kind == "prune"), None)
    if other is not None:
        raise PruneBusy(
            location=pool.location, lease=other.id, hostname=other.hostname, pid=other.pid
        )
    if options.dry_run:
        _prune(pool, options, report, leases, progress)
    else:
        with pool.lease("prune") as mine:
            rivals = [
                lease
                for lease in list_leases(pool)
                if lease.kind == "prune"
                and lease.id != mine.id
                and lease.started <= mine.started
                and not lease.gone(now, options.stale_after)
            ]
            if rivals:  # two prunes started together: the earlier one goes on
                raise PruneBusy(
                    location=pool.location,
                    lease=rivals[0].id,
                    hostname=rivals[0].hostname,
                    pid=rivals[0].pid,
                )
            backups = [lease for lease in leases if lease.kind != "prune"]
            _prune(pool, options, report, backups, progress)
    report.duration_s = time.monotonic() - started
    return report


@dataclass
class _PoolView:
    """What prune decides from, read once: every segment, every pack, the records."""

    segments: list[str]  # index segment names
    entries: dict[str, list[PackEntry]]  # pack id -> its blobs (a segment, else its trailer)
    stored: dict[str, int]  # pack id -> size, as listed
    records: list[str]  # condemned record names
    condemned: dict[str, CondemnedPack]
    live: list[str]  # present and not condemned, sorted (then the resurrected appended)
    index: Index  # every copy of every blob, condemned packs last
    damaged: set[tuple[bytes, str]]  # copies recorded as damaged: (blob id, pack id)


@dataclass
class _Sweep:
    """What became of the packs condemned before this run."""

    remaining: dict[str, CondemnedPack] = field(default_factory=dict)  # kept for now
    to_delete: list[str] = field(default_factory=list)
    recondemn: list[str] = field(default_factory=list)  # provisional: record them again


_Repack = list[tuple[str, list[PackEntry]]]  # pack id, the needed blobs it holds


def _prune(
    pool: Pool,
    options: PruneOptions,
    report: PruneReport,
    leases_before: list[LeaseInfo],
    progress: Progress | None,
) -> None:
    progress = progress or Progress()
    view = _read_view(pool, report)

    # --- what the snapshots need ---------------------------------------------------
    snapshot_ids = sorted(pool.snapshot_ids())
    needed = _needed_blobs(pool, snapshot_ids)
    report.snapshots = len(snapshot_ids)
    missing = [blob for blob in needed if blob not in view.index]
    if missing:
        raise PruneRefused(
            location=pool.location,
            reason=f"{len(missing)} blob(s) that snapshots need are in no pack",
        )
    home = _homes(view, needed)

    now = time.time()
    sweep = _sweep(view, needed, home, leases_before, options, report, now)
    newly, repack = _mark(view, home, sweep, options, report)
    report.packs_condemned = len(newly) + len(repack)
    report.packs_repacked = len(repack)
    for pack_id in sweep.remaining:
        report.packs_waiting += 1
        report.bytes_waiting += view.stored[pack_id]
    if options.dry_run:
        report.packs_deleted = len(sweep.to_delete)
        report.bytes_deleted = sum(view.stored[p] for p in sweep.to_delete)
        report.bytes_written = sum(sum(e.length for e in used) for _p, used in repack)
        return
    _commit(pool, view, sweep, newly, repack, snapshot_ids, now, options, report, progress)


def _read_view(pool: Pool, report: PruneReport) -> _PoolView:
    """A complete view: every segment, every pack, the condemned records; the pool's
    index is replaced by one of every copy of every blob, condemned packs last (reading
    trees needs them all)."""
    segments = [info.name for info in pool.backend.list("index/")]
    entries: dict[str, list[PackEntry]] = {}
    for name in segments:
        for pack_id, pack_entries in pool.read_segment(name).items():
            entries.setdefault(pack_id, pack_entries)
    stored = pool.list_packs()
    for pack_id, size in sorted(stored.items()):
        if pack_id not in entries:  # left by a running or a killed backup
            try:
                entries[pack_id] = pool.read_pack_entries(pack_id, size)
            except (DataCorruption, BackendError):
                report.unreadable_packs.append(pack_id)
    records = condemned_records(pool)
    condemned = read_condemned(pool)
    present = {pack_id for pack_id in entries if pack_id in stored}
    report.packs = len(stored)
    report.bytes_stored = sum(stored.values())

    live = sorted(pack_id for pack_id in present if pack_id not in condemned)
    index = Index()
    for pack_id in live + sorted(present - set(live)):
        index.add_pack(pack_id, entries[pack_id])
    pool.index, pool.fallback, pool.condemned = index, Index(), {}
    damaged = set(read_damage(pool))
    return _PoolView(segments, entries, stored, records, condemned, live, index, damaged)


def _homes(view: _PoolView, needed: set[bytes]) -> dict[bytes, str]:
    """Each needed blob has one home: the first live pack holding a sound copy of it,
    else (every copy damaged) the first holding one. Other copies (two backups storing
    the same new chunk at once, a damaged copy) count as unused."""
    home: dict[bytes, str] = {}
    damaged_only: dict[bytes, str] = {}
    for pack_id in view.live:
        for entry in view.entries[pack_id]:
            if entry.blob_id in needed:
                if (entry.blob_id, pack_id) in view.damaged:
                    damaged_only.setdefault(entry.blob_id, pack_id)
                else:
                    home.setdefault(entry.blob_id, pack_id)
    for blob, pack_id in damaged_only.items():
        home.setdefault(blob, pack_id)
    return home


def _sweep(
    view: _PoolView,
    needed: set[bytes],
    home: dict[bytes, str],
    leases_before: list[LeaseInfo],
    options: PruneOptions,
    report: PruneReport,
    now: float,
) -> _Sweep:
    """Sort the condemned packs: taken back (a snapshot needs a blob only they hold),
    condemned again (a provisional record), kept (window, running backup) or deleted."""
    only_condemned = needed - home.keys()
    live_leases = {lease.id: lease for lease in leases_before}
    sweep = _Sweep()
    for pack_id, record in sorted(view.condemned.items()):
        if pack_id not in view.stored:
            continue  # deleted by an earlier prune that was stopped before its record
        pack_entries = view.entries.get(pack_id)
        if pack_entries is not None and any(e.blob_id in only_condemned for e in pack_entries):
            report.packs_resurrected += 1  # a snapshot finished after it was condemned
            _resurrect(view, pack_id, needed, home)
            continue
        if record.provisional:  # its leases were never listed: record it again
            sweep.recondemn.append(pack_id)
            continue
        running = [live_leases[i] for i in record.leases if i in live_leases]
        if now - record.since < options.safety_window or running:
            sweep.remaining[pack_id] = record
            for lease in running:
                _wait_for(report, lease)
            continue
        sweep.to_delete.append(pack_id)
    return sweep


def _resurrect(view: _PoolView, pack_id: str, needed: set[bytes], home: dict[bytes, str]) -> None:
    for e in view.entries[pack_id]:
        if e.blob_id in needed:
            home.setdefault(e.blob_id, pack_id)
    view.live.append(pack_id)


def _mark(
    view: _PoolView,
    home: dict[bytes, str],
    sweep: _Sweep,
    options: PruneOptions,
    report: PruneReport,
) -> tuple[list[str], _Repack]:
    """Unused and mostly unused live packs: those to condemn, those to repack."""
    newly: list[str] = list(sweep.recondemn)
    candidates: list[tuple[float, str, list[PackEntry], int]] = []
    with_damage = {pack_id for _blob, pack_id in view.damaged}
    for pack_id in sorted(view.live):
        pack_entries = view.entries[pack_id]
        used = [e for e in pack_entries if home.get(e.blob_id) == pack_id]
        total = sum(e.length for e in pack_entries)
        unused = total - sum(e.length for e in used)
        report.blobs_used += len(used)
        report.blobs_unused += len(pack_entries) - len(used)
        report.bytes_unused += unused
        if pack_id in sweep.remaining or pack_id in view.condemned:
            continue
        if not used:
            newly.append(pack_id)
        elif total and unused:
            # A damaged copy no snapshot needs (a sound one is home): repack first.
            # (A damaged copy that is home, the only one, is not: repacking would fail.)
            first = pack_id in with_damage and not any(
                (e.blob_id, pack_id) in view.damaged for e in used
            )
            share = 2.0 if first else unused / total
            candidates.append((share, pack_id, used, unused))
    needed_bytes = sum(
        e.length
        for pack_id in view.live
        for e in view.entries[pack_id]
        if home.get(e.blob_id) == pack_id
    )
    return newly, _choose_repacks(candidates, needed_bytes, view.stored, options)


def _choose_repacks(
    candidates: list[tuple[float, str, list[PackEntry], int]],
    needed_bytes: int,
    stored: dict[str, int],
    options: PruneOptions,
) -> _Repack:
    """The partly used packs to repack, most unused first, within the run's budget."""
    budget = options.max_repack_bytes
    repack: _Repack = []
    left = sum(unused for _share, _p, _u, unused in candidates)
    for share, pack_id, used, unused in sorted(candidates, key=lambda c: (-c[0], c[1])):
        if share < options.repack_threshold and left <= options.max_unused * needed_bytes:
            break
        if stored[pack_id] > budget:
            continue
        budget -= stored[pack_id]
        left -= unused
        repack.append((pack_id, used))
    return repack


def _commit(
    pool: Pool,
    view: _PoolView,
    sweep: _Sweep,
    newly: list[str],
    repack: _Repack,
    snapshot_ids: list[str],
    now: float,
    options: PruneOptions,
    report: PruneReport,
    progress: Progress,
) -> None:
    """Write it all, in crash-safe order: new packs, a provisional record, the leases,
    the rewritten index, the deletions, the final record."""
    new_packs, failed = _repack(pool, repack, report, progress)
    condemn_now = newly + [pack_id for pack_id, _used in repack if pack_id not in failed]
    provisional = {p: CondemnedPack(now, (), provisional=True) for p in condemn_now}
    provisional_name = write_condemned(pool, {**sweep.remaining, **provisional})
    after = time.time()
    leases_after = [
        lease
        for lease in list_leases(pool)
        if lease.kind != "prune" and not lease.gone(after, options.stale_after)
    ]
    lease_ids = tuple(sorted(lease.id for lease in leases_after))
    to_delete = sweep.to_delete
    # With a zero window and nothing writing, what was just condemned may go now: every
    # backup from here on has seen the provisional record, and none finished unseen
    # (the snapshots are those the marks were made from).
    if (
        options.safety_window <= 0
        and not leases_after
        and sorted(pool.snapshot_ids()) == snapshot_ids
    ):
        to_delete += condemn_now
        condemn_now = []
    if condemn_now:
        for lease in leases_after:
            _wait_for(report, lease)

    _rewrite_index(pool, view, set(to_delete), new_packs, report)

    final = dict(sweep.remaining)
    for pack_id in condemn_now:
        final[pack_id] = CondemnedPack(after, lease_ids)
        report.packs_waiting += 1
        report.bytes_waiting += view.stored[pack_id]
    final_name = write_condemned(pool, final)
    for name in [*view.records, *([provisional_name] if provisional_name else [])]:
        if name != final_name:
            pool.backend.delete(name)
    pool.save_damage()  # copies found damaged while reading the trees
    keep_damage(pool, set(view.stored) - set(to_delete))


def _rewrite_index(
    pool: Pool,
    view: _PoolView,
    deleting: set[str],
    new_packs: dict[str, list[PackEntry]],
    report: PruneReport,
) -> None:
    """One new segment for every pack kept and written; then the old segments and the
    deleted packs go."""
    keep = {
        pack_id: pack_entries
        for pack_id, pack_entries in view.entries.items()
        if pack_id not in deleting
    }
    keep.update(new_packs)
    new_segments = set(pool.write_index_segment(keep))
    for name in view.segments:
        if name not in new_segments:
            pool.backend.delete(name)
    for pack_id in sorted(deleting):
        pool.backend.delete(pack_name(pack_id))
        report.deleted[pack_id] = view.stored[pack_id]
    report.packs_deleted = len(report.deleted)
    report.bytes_deleted = sum(report.deleted.values())


def _wait_for(report: PruneReport, lease: LeaseInfo) -> None:
    """Name a running backup the condemned packs wait for, once."""
    if not any(w["lease"] == lease.id for w in report.waiting_for):
        report.waiting_for.append(_lease_json(lease))


def _needed_blobs(pool: Pool, snapshot_ids: list[str]) -> set[bytes]:
    """Every tree and data blob any snapshot reaches; unchanged directories are walked
    once for all snapshots."""
    needed: set[bytes] = set()
    for snapshot_id in snapshot_ids:
        try:
            snapshot = pool.load_snapshot(snapshot_id)
        except (DataCorruption, BackendError) as error:
            raise PruneRefused(
                location=pool.location, reason=f"snapshot {snapshot_id} cannot be read: {error}"
            ) from error
        stack = [bytes.fromhex(snapshot.tree)]
        while stack:
            tree_id = stack.pop()
            if tree_id in needed:
                continue
            needed.add(tree_id)
            try:
                nodes = pool.load_tree(tree_id)
            except DataCorruption as error:
                raise PruneRefused(
                    location=pool.location, reason=f"tree {tree_id.hex()} cannot be read: {error}"
                ) from error
            for node in nodes:
                needed.update(node.content)
                if node.subtree is not None and node.subtree not in needed:
                    stack.append(node.subtree)
    return needed


def _repack(
    pool: Pool,
    repack: list[tuple[str, list[PackEntry]]],
    report: PruneReport,
    progress: Progress,
) -> tuple[dict[str, list[PackEntry]], set[str]]:
    """Copy the needed blobs of ``repack`` into new packs, verified and still sealed.
    A pack with a blob that fails to verify is left as it is (``check`` reports it).
    Returns the new packs' entries, and the packs left as they were."""
    builders: dict[BlobType, PackBuilder] = {}
    written: dict[str, list[PackEntry]] = {}

    def store(builder: PackBuilder) -> None:
        data = builder.finish(pool.sealer)
        pack_id = crypto.object_hash(data)
        pool.backend.put(pack_name(pack_id), data)
        written[pack_id] = builder.entries
        report.written[pack_id] = len(data)

    progress.set_total(len(repack), sum(sum(e.length for e in used) for _p, used in repack))
    failed: set[str] = set()
    for pack_id, used in repack:
        data = pool.backend.get(pack_name(pack_id))
        copies = []
        for entry in used:
            sealed = data[entry.offset : entry.offset + entry.length]
            try:
                pool.codec.open(entry.type, entry.blob_id, sealed, entry.raw_length)
            except BlobCorrupt:
                failed.add(pack_id)
                break
            copies.append((entry, sealed))
        else:
            for entry, sealed in copies:
                builder = builders.get(entry.type)
                if builder is None:
                    builder = builders[entry.type] = PackBuilder(entry.type)
                builder.add(entry.blob_id, sealed, entry.raw_length)
                if builder.size >= pool.pack_size:
                    store(builders.pop(entry.type))
        progress.advance(files=1, size=sum(e.length for e in used))
    for builder in builders.values():
        if builder.entries:
            store(builder)
    report.packs_written = len(written)
    report.bytes_written = sum(report.written.values())
    if failed:
        report.unreadable_packs.extend(sorted(failed))
        report.packs_repacked -= len(failed)
        report.packs_condemned -= len(failed)
    return written, failed


def _lease_json(lease: LeaseInfo) -> dict[str, Any]:
    return {
        "lease": lease.id,
        "kind": lease.kind,
        "hostname": lease.hostname,
        "pid": lease.pid,
        "started": lease.started,
    }
