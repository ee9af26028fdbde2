"""Damage records: copies of blobs found damaged, so that nothing builds on them again.

A blob copy that failed to verify twice (``Pool.read_blob``) or that ``check
--read-data`` found bad is recorded in a ``damaged/<hash>`` object (sealed JSON, one per
run that found something): the blob's id, the pack holding the bad copy, when and why.
``Pool.load_index`` drops recorded copies from the index, so

- a read goes to another copy of the blob when the pool holds one;
- a backup whose source still has the content stores a good copy instead of
  deduplicating against the bad one (the local walk and the SSH pull re-read a file
  whose parent version needs a blob the index lacks), which heals every older snapshot
  that names the blob too: snapshots name blobs by id, not by pack;
- ``prune`` homes a needed blob in a good copy, repacks the rest of a damaged pack and
  drops the records of packs it deleted; ``costor pool repair`` puts good copies back
  from another copy of the pool.

A record names a copy, not a blob: a good copy stored later is not affected. Records
are sealed under the pool's key (someone who can write the storage cannot plant one);
one that cannot be read is passed over (the worst a deleted or damaged record does is
let a backup deduplicate against a bad copy, as before this record existed; ``check``
finds the damage again). Like condemned records, they describe one place's storage and
are not copied by ``costor pool copy``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from costor.errors import BackendError, ObjectNotFound
from costor.store import crypto

if TYPE_CHECKING:
    from costor.store.pool import Pool

DAMAGE_AD = b"costor-damage"
DAMAGE_PREFIX = "damaged/"
MAX_REASON = 300  # characters of the reason kept per record


@dataclass(frozen=True)
class DamagedCopy:
    blob: bytes
    pack: str
    reason: str
    since: float  # unix time it was found


Damage = dict[tuple[bytes, str], DamagedCopy]  # (blob id, pack id) -> the record


def damage_records(pool: Pool) -> list[str]:
    return [info.name for info in pool.backend.list(DAMAGE_PREFIX)]


def read_damage(pool: Pool, names: Iterable[str] | None = None) -> Damage:
    """Every recorded damaged copy, merged over the records (the earliest time wins).
    A record that is gone or cannot be opened is passed over (see the module's note)."""
    merged: Damage = {}
    for name in damage_records(pool) if names is None else names:
        for copy in _read_record(pool, name):
            earlier = merged.get((copy.blob, copy.pack))
            if earlier is None or earlier.since > copy.since:
                merged[(copy.blob, copy.pack)] = copy
    return merged


def _read_record(pool: Pool, name: str) -> list[DamagedCopy]:
    try:
        data = pool.backend.get(name)
    except (ObjectNotFound, BackendError):
        return []  # replaced by a prune or a repair between list and get
    if crypto.object_hash(data) != name.rsplit("/", 1)[-1]:
        return []
    try:
        doc = json.loads(pool.sealer.open(data, DAMAGE_AD))
        return [
            DamagedCopy(
                bytes.fromhex(entry["blob"]),
                str(entry["pack"]),
                str(entry.get("reason", ""))[:MAX_REASON],
                float(entry["since"]),
            )
            for entry in doc["copies"]
        ]
    except (crypto.AuthenticationFailed, ValueError, KeyError, TypeError):
        return []


def write_damage(pool: Pool, copies: Iterable[DamagedCopy]) -> str | None:
    """Store one record of ``copies``; None when there is nothing to record."""
    ordered = sorted(copies, key=lambda c: (c.pack, c.blob))
    if not ordered:
        return None
    doc = {
        "version": 1,
        "copies": [
            {
                "blob": copy.blob.hex(),
                "pack": copy.pack,
                "reason": copy.reason[:MAX_REASON],
                "since": copy.since,
            }
            for copy in ordered
        ],
    }
    data = pool.sealer.seal(json.dumps(doc, sort_keys=True).encode(), DAMAGE_AD)
    name = f"{DAMAGE_PREFIX}{crypto.object_hash(data)}"
    pool.backend.put(name, data)
    return name


def keep_damage(pool: Pool, keep: set[str]) -> int:
    """Rewrite the records to hold only copies in the packs ``keep`` (those still
    stored). Returns how many copies were dropped."""
    return _rewrite(pool, lambda copy: copy.pack in keep)


def drop_damage(pool: Pool, copies: Collection[tuple[bytes, str]]) -> int:
    """Rewrite the records without ``copies`` (blob id, pack id): read back sound since
    (a pack put back by ``pool copy --verify-existing`` or ``pool repair``)."""
    gone = set(copies)
    return _rewrite(pool, lambda copy: (copy.blob, copy.pack) not in gone)


def _rewrite(pool: Pool, keep: Callable[[DamagedCopy], bool]) -> int:
    """One new record first, then the old ones go."""
    names = damage_records(pool)
    if not names:
        return 0
    damage = read_damage(pool, names)
    kept = [copy for copy in damage.values() if keep(copy)]
    if len(kept) == len(damage) and len(names) == 1:
        return 0
    new_name = write_damage(pool, kept)
    for name in names:
        if name != new_name:
            pool.backend.delete(name)
    return len(damage) - len(kept)


def new_copy(blob: bytes, pack: str, reason: str) -> DamagedCopy:
    return DamagedCopy(blob, pack, reason[:MAX_REASON], time.time())
