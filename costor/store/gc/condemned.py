"""Condemned packs: phase one of prune's two-phase garbage collection.

A pack that no snapshot needs is first *condemned*: recorded in a ``condemned/<hash>``
object (sealed JSON) with the time and the leases (running backups) that prune saw
right after recording it. New backups do not reuse condemned packs (``Pool.load_index``
puts them aside). A later prune deletes a condemned pack only when the safety window has
passed since then, every one of those leases is gone, and still no snapshot needs a blob
that only condemned packs hold; otherwise the pack is kept, or taken back ("resurrected")
when a snapshot finished by one of those backups turned out to need it.

Several records may exist after a prune killed half-way; they are merged (the latest
time and every lease win, which only makes deletion wait longer).

A record that does not match its name or cannot be opened with the pool's key is
passed over, not an error: whoever may add objects to the storage without the key (a
token of the Backup API's ``append`` scope, a compromised host of the storage) could
otherwise plant one junk record and stop every backup, restore and prune, which read
the records first. Passing one over only un-condemns packs, which the next prune
condemns again and deletes a window later; it never deletes anything sooner. Prune
deletes the records it passed over with the others once it has written its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from costor.errors import ObjectNotFound
from costor.store import crypto

if TYPE_CHECKING:
    from costor.store.pool import Pool

CONDEMNED_AD = b"costor-condemned"


@dataclass(frozen=True)
class CondemnedPack:
    since: float  # unix time the record was written
    leases: tuple[str, ...] = ()  # lease ids live right after it was written
    # Written before prune listed the leases (phase one of recording); a prune killed
    # before the final record leaves it. Its packs stay condemned, but the next prune
    # records them again rather than deleting them: their leases are not known.
    provisional: bool = False


def read_condemned(pool: Pool) -> dict[str, CondemnedPack]:
    merged: dict[str, CondemnedPack] = {}
    for name in condemned_records(pool):
        for pack_id, entry in _read_record(pool, name).items():
            earlier = merged.get(pack_id)
            if earlier is not None:
                entry = CondemnedPack(
                    max(entry.since, earlier.since),
                    tuple(sorted(set(entry.leases) | set(earlier.leases))),
                    entry.provisional or earlier.provisional,
                )
            merged[pack_id] = entry
    return merged


def condemned_records(pool: Pool) -> list[str]:
    return [info.name for info in pool.backend.list("condemned/")]


def _read_record(pool: Pool, name: str) -> dict[str, CondemnedPack]:
    try:
        data = pool.backend.get(name)
    except ObjectNotFound:
        return {}  # replaced by a prune between list and get
    if crypto.object_hash(data) != name.rsplit("/", 1)[-1]:
        return {}  # damaged, or planted: passed over (see the module's docstring)
    try:
        doc = json.loads(pool.sealer.open(data, CONDEMNED_AD))
    except crypto.AuthenticationFailed:
        return {}  # not sealed under this pool's key: planted, or damaged
    return {
        pack_id: CondemnedPack(
            float(entry["since"]), tuple(entry["leases"]), bool(entry.get("provisional"))
        )
        for pack_id, entry in doc["packs"].items()
    }


def write_condemned(pool: Pool, packs: dict[str, CondemnedPack]) -> str | None:
    """Store one record holding ``packs``; None when there is nothing to record."""
    if not packs:
        return None
    doc = {
        "version": 1,
        "packs": {
            pack_id: {
                "since": entry.since,
                "leases": list(entry.leases),
                **({"provisional": True} if entry.provisional else {}),
            }
            for pack_id, entry in sorted(packs.items())
        },
    }
    data = pool.sealer.seal(json.dumps(doc, sort_keys=True).encode(), CONDEMNED_AD)
    name = f"condemned/{crypto.object_hash(data)}"
    pool.backend.put(name, data)
    return name
