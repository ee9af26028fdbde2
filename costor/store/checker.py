"""Verification and index repair.

``check`` works in three tiers, cheapest first:

1. **structure** — every index segment and snapshot opens and matches its name; every
   pack the index names exists; every tree of every snapshot is readable and every blob
   it references is in the index;
2. **read data** (``read_data`` or a ``subset`` fraction of packs) — each selected pack
   is read whole: its bytes must hash to its name (checkable without the key), its
   trailer must open, and every blob must decrypt, decompress and match its id;
3. **attribution** — for every damaged or missing blob, the snapshots and paths that use
   it, so the report says what a restore would lose.

A damaged copy of a blob is recorded (damage.py), so reads and backups pass it by. A
damaged copy of a blob the pool holds another sound copy of (a backup stored it again,
``costor pool repair`` put it back) is *healed*: reported, but not damage; ``prune``
removes the bad copy. Copies recorded as damaged by an earlier check or a restore are
damage until then, without reading them again.

``reindex`` rebuilds the index from the pack trailers alone, then replaces the old
segments (new segment first, old ones deleted after: never a moment without an index).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from zstandard import ZstdError

from costor.errors import BackendError, DataCorruption, ObjectNotFound
from costor.store import crypto
from costor.store.damage import drop_damage, read_damage
from costor.store.index import BlobLocation
from costor.store.pack import FOOTER, BlobCorrupt, PackEntry, pack_name, read_entries
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.snapshot import Snapshot

MAX_AFFECTED = 50  # paths listed per problem; the count is always complete


@dataclass
class Problem:
    kind: str  # damaged_pack | missing_pack | missing_blob | damaged_snapshot | damaged_index …
    object: str
    message: str
    affected: list[dict[str, str]] = field(default_factory=list)
    affected_count: int = 0
    blobs: set[bytes] = field(default_factory=set, repr=False)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("blobs")
        return doc


@dataclass
class CheckReport:
    pool: str
    location: str
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    blobs_checked: int = 0
    trees_checked: int = 0
    unindexed_packs: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Damage every blob of which has a sound copy elsewhere: not counted as damage.
    healed: list[Problem] = field(default_factory=list)
    damage_recorded: int = 0  # damaged copies newly recorded by this check
    damage_cleared: int = 0  # recorded copies that read back sound now: records dropped
    verified: list[str] = field(default_factory=list, repr=False)  # packs read and sound

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "location": self.location,
            "ok": self.ok,
            "snapshots": self.snapshots,
            "packs": self.packs,
            "packs_read": self.packs_read,
            "bytes_read": self.bytes_read,
            "blobs_checked": self.blobs_checked,
            "trees_checked": self.trees_checked,
            "unindexed_packs": self.unindexed_packs,
            "problems": [p.to_json() for p in self.problems],
            "healed": [p.to_json() for p in self.healed],
            "damage_recorded": self.damage_recorded,
            "damage_cleared": self.damage_cleared,
        }


def check(
    pool: Pool,
    *,
    read_data: bool = False,
    subset: float | None = None,
    progress: Progress | None = None,
    seed: int | None = None,
    order: Callable[[list[str]], list[str]] | None = None,
) -> CheckReport:
    """``order``: for ``subset``, puts the packs in the order to read them (e.g. least
    recently verified first); the first share is read. Default: a random sample."""
    progress = progress or Progress()
    report = CheckReport(pool=pool.uuid, location=pool.location)

    # Tier 1a: index segments, one at a time so one bad segment is one problem.
    for info in pool.backend.list("index/"):
        try:
            segment = pool.read_segment(info.name)
        except (DataCorruption, BackendError, ValueError, struct.error, ZstdError) as error:
            reason = f"{error}; its packs are read through their trailers until `costor pool reindex` rewrites the index"
            report.problems.append(Problem("damaged_index", info.name, reason))
            continue
        for pack_id, entries in segment.items():
            pool.index.add_pack(pack_id, entries)

    stored = pool.list_packs()
    report.packs = len(stored)
    indexed = pool.index.pack_ids
    report.unindexed_packs = sorted(set(stored) - indexed)
    # A pack no readable segment names is not lost: its trailer lists its blobs (what a
    # restore and a backup read too; `costor pool reindex` writes them into the index).
    pool.adopt_orphan_packs(record=False)
    blobs_by_pack: dict[str, set[bytes]] = {}
    for blob, location in pool.index.copies():
        blobs_by_pack.setdefault(location.pack_id, set()).add(blob)
    pool.damage = read_damage(pool)
    recorded: dict[tuple[bytes, str], BlobLocation] = {}
    for blob, pack_id in pool.damage:
        dropped = pool.index.drop(blob, pack_id)
        if dropped is not None:
            recorded[(blob, pack_id)] = dropped
    for pack_id in sorted(indexed - set(stored)):
        report.problems.append(
            Problem(
                "missing_pack",
                pack_id,
                f"pack {pack_id} is in the index but not in the pool",
                blobs=blobs_by_pack.get(pack_id, set()),
            )
        )

    short = _short_packs(pool, stored, blobs_by_pack, report)

    # Tier 2: read data.
    if read_data or subset:
        candidates = sorted(set(stored) & indexed - short) + report.unindexed_packs
        if subset is not None and not read_data:
            count = min(len(candidates), max(1, math.ceil(len(candidates) * subset)))
            if order is not None:
                candidates = order(candidates)[:count]
            else:
                candidates = random.Random(seed).sample(candidates, count) if candidates else []
        total = sum(stored[p] for p in candidates)
        progress.set_total(len(candidates), total)
        for pack_id in candidates:
            problem = _read_pack(pool, pack_id, blobs_by_pack.get(pack_id, set()), report)
            if problem is not None:
                report.problems.append(problem)
            else:
                report.verified.append(pack_id)
            progress.advance(files=1, size=stored[pack_id])

    # Tier 1b: snapshots and trees; tier 3: attribution of damaged blobs.
    stale = _read_recorded_again(pool, recorded, report)
    damaged = _unhealed(pool, report)
    snapshots: list[Snapshot] = []
    for snapshot_id in pool.snapshot_ids():
        try:
            snapshots.append(pool.load_snapshot(snapshot_id))
        except (DataCorruption, BackendError, ValueError) as error:
            report.problems.append(Problem("damaged_snapshot", snapshot_id, str(error)))
    report.snapshots = len(snapshots)
    seen_trees: set[bytes] = set()
    for snapshot in snapshots:
        _check_tree(pool, snapshot, bytes.fromhex(snapshot.tree), b"", seen_trees, damaged, report)
    progress.close()
    for problem in list(report.problems):
        if problem.kind == "damaged_blob" and not problem.affected_count:
            report.problems.remove(problem)  # recorded, but no snapshot needs it any more
    try:
        report.damage_recorded = pool.save_damage()
        report.damage_cleared = drop_damage(pool, stale) if stale else 0
    except BackendError:  # a read-only pool: the damage is reported all the same
        pass
    return report


def _read_recorded_again(
    pool: Pool, recorded: dict[tuple[bytes, str], BlobLocation], report: CheckReport
) -> list[tuple[bytes, str]]:
    """Copies recorded as damaged that read back sound now (their pack was put back by
    ``pool copy --verify-existing`` or ``pool repair``), unless this check found them
    damaged: back in the index, and their records to drop. One ranged read each."""
    found = {
        (blob, problem.object)
        for problem in report.problems
        if problem.kind in ("damaged_pack", "missing_pack")
        for blob in problem.blobs
    }
    stale = []
    for (blob, pack_id), location in recorded.items():
        if (blob, pack_id) in found:
            continue
        try:
            pool.read_copy(blob, location)
        except (DataCorruption, BackendError):
            continue
        stale.append((blob, pack_id))
        del pool.damage[(blob, pack_id)]
        pool.index.add_records(
            pack_id,
            [(blob, int(location.type), location.offset, location.length, location.raw_length)],
        )
    return stale


def _unhealed(pool: Pool, report: CheckReport) -> dict[bytes, Problem]:
    """Record the damaged copies found so far; move damage every blob of which has a
    sound copy elsewhere to ``report.healed``; report recorded damage not found again
    (not re-read: a structural check, or a pack not in this subset). Returns the
    damaged blobs that have no sound copy, for attribution."""
    for problem in report.problems:
        if problem.kind in ("damaged_pack", "missing_pack"):
            for blob in problem.blobs:
                pool.note_damage(blob, problem.object, problem.message)
    damaged: dict[bytes, Problem] = {}
    for problem in list(report.problems):
        if not problem.blobs:
            continue
        lost = {blob for blob in problem.blobs if pool.index.lookup(blob) is None}
        if lost:
            if lost != problem.blobs:
                problem.message += (
                    f"; {len(problem.blobs) - len(lost)} of its blobs have a sound copy elsewhere"
                )
                problem.blobs = lost
            for blob in lost:
                damaged[blob] = problem
            continue
        report.problems.remove(problem)
        problem.message += (
            "; every blob has a sound copy elsewhere: healed (`costor prune` removes this copy)"
        )
        report.healed.append(problem)
    mentioned = {p.object for p in report.problems + report.healed}
    recorded_healed: dict[str, int] = {}
    for (blob, pack_id), copy in sorted(pool.damage.items(), key=lambda item: item[0][1]):
        if pool.index.lookup(blob) is not None:
            if pack_id not in mentioned:
                recorded_healed[pack_id] = recorded_healed.get(pack_id, 0) + 1
            continue
        if blob in damaged:
            continue
        problem = Problem(
            "damaged_blob",
            blob.hex(),
            f"its copy in pack {pack_id} was recorded as damaged ({copy.reason}) and the "
            "pool holds no other",
            blobs={blob},
        )
        report.problems.append(problem)
        damaged[blob] = problem
    for pack_id, count in sorted(recorded_healed.items()):
        report.healed.append(
            Problem(
                "damaged_pack",
                pack_id,
                f"{count} blob {'copy' if count == 1 else 'copies'} in it recorded as "
                "damaged, each with a sound copy elsewhere: healed (`costor prune` removes "
                "the damaged copies)",
            )
        )
    return damaged


def _short_packs(
    pool: Pool, stored: dict[str, int], blobs: dict[str, set[bytes]], report: CheckReport
) -> set[str]:
    """Packs smaller than their indexed blobs and a footer: truncated, seen from the
    listing alone (without ``--read-data``)."""
    short = set()
    for pack_id in sorted(stored.keys() & blobs.keys()):
        need = pool.index.data_end(pack_id) + FOOTER.size
        if stored[pack_id] < need:
            short.add(pack_id)
            message = f"pack holds {stored[pack_id]} bytes, its indexed blobs and trailer need at least {need}: truncated"
            report.problems.append(Problem("damaged_pack", pack_id, message, blobs=blobs[pack_id]))
    return short


def _read_pack(
    pool: Pool, pack_id: str, indexed_blobs: set[bytes], report: CheckReport
) -> Problem | None:
    name = pack_name(pack_id)
    try:
        data = pool.backend.get(name)
    except (ObjectNotFound, BackendError) as error:
        return Problem("damaged_pack", pack_id, f"cannot read pack: {error}", blobs=indexed_blobs)
    report.packs_read += 1
    report.bytes_read += len(data)
    if crypto.object_hash(data) != pack_id:
        # The bytes changed. Find out which blobs are still good, so the report names
        # exactly what is lost rather than the whole pack.
        reason = "pack contents do not match its name (bytes changed on storage)"
    else:
        reason = ""
    try:
        entries = read_entries(pool.sealer, data)
    except BlobCorrupt as error:
        return Problem(
            "damaged_pack",
            pack_id,
            f"{reason or 'damaged pack'}; trailer: {error}",
            blobs=indexed_blobs,
        )
    bad: set[bytes] = set()
    for entry in entries:
        report.blobs_checked += 1
        if not _blob_ok(pool, data, entry):
            bad.add(entry.blob_id)
    # Index entries that disagree with the trailer are damage too.
    in_trailer = {e.blob_id for e in entries}
    bad |= indexed_blobs - in_trailer
    if bad or reason:
        detail = f"{len(bad)} of {len(entries)} blobs damaged"
        return Problem(
            "damaged_pack", pack_id, f"{reason + '; ' if reason else ''}{detail}", blobs=bad
        )
    return None


def _blob_ok(pool: Pool, data: bytes, entry: PackEntry) -> bool:
    sealed = data[entry.offset : entry.offset + entry.length]
    try:
        pool.codec.open(entry.type, entry.blob_id, sealed, entry.raw_length)
        return True
    except BlobCorrupt:
        return False


def _check_tree(
    pool: Pool,
    snapshot: Snapshot,
    tree_id: bytes,
    path: bytes,
    seen: set[bytes],
    damaged: dict[bytes, Problem],
    report: CheckReport,
) -> None:
    """Walk one tree. Trees already verified are skipped unless damage is known, in
    which case every snapshot is walked fully so each affected path is named."""
    if tree_id in seen and not damaged:
        return
    display = "/" + path.decode("utf-8", "backslashreplace")
    try:
        nodes = pool.load_tree(tree_id)
    except (DataCorruption, BackendError) as error:  # damaged, or its pack is missing
        problem = damaged.get(tree_id)
        if problem is None:
            problem = Problem("damaged_tree", tree_id.hex(), str(error), blobs={tree_id})
            report.problems.append(problem)
            damaged[tree_id] = problem
        _affect(problem, snapshot, display + " (directory listing)")
        return
    if tree_id not in seen:
        seen.add(tree_id)
        report.trees_checked += 1
    for node in nodes:
        child = path + b"/" + node.name if path else node.name
        if node.type == "dir" and node.subtree is not None:
            _check_tree(pool, snapshot, node.subtree, child, seen, damaged, report)
            continue
        for blob in node.content:
            problem = damaged.get(blob)
            if problem is None and blob not in pool.index:
                problem = Problem(
                    "missing_blob",
                    blob.hex(),
                    "blob referenced by a snapshot is not in the index",
                    blobs={blob},
                )
                report.problems.append(problem)
                damaged[blob] = problem
            if problem is not None:
                _affect(problem, snapshot, "/" + child.decode("utf-8", "backslashreplace"))
                break


def _affect(problem: Problem, snapshot: Snapshot, path: str) -> None:
    problem.affected_count += 1
    if len(problem.affected) < MAX_AFFECTED:
        problem.affected.append({"snapshot": snapshot.id, "client": snapshot.client, "path": path})


@dataclass
class ReindexReport:
    packs: int = 0
    blobs: int = 0
    segments_removed: int = 0
    unreadable_packs: list[str] = field(default_factory=list)


def reindex(pool: Pool) -> ReindexReport:
    """Rebuild the index from pack trailers; old segments go only after the new one is
    stored."""
    report = ReindexReport()
    old_segments = [info.name for info in pool.backend.list("index/")]
    packs: dict[str, list[PackEntry]] = {}
    for pack_id, size in sorted(pool.list_packs().items()):
        try:
            packs[pack_id] = pool.read_pack_entries(pack_id, size)
        except (DataCorruption, BackendError):
            report.unreadable_packs.append(pack_id)
            continue
        report.blobs += len(packs[pack_id])
    report.packs = len(packs)
    new_names = set(pool.write_index_segment(packs))
    for name in old_segments:
        if name not in new_names:
            pool.backend.delete(name)
            report.segments_removed += 1
    pool.index = type(pool.index)()
    for pack_id, entries in packs.items():
        pool.index.add_pack(pack_id, entries)
    return report
