"""The audit chain's head, anchored in a pool (docs/audit.md, "Anchors").

The audit log lives in the state database, where whoever can write the database could
cut records from its end and move the head back: the chain would still verify. So the
site writes its chain's head into its pools from time to time (after a backup, a check
or a prune of the pool): an ``anchors/<hash>`` object, sealed under the pool's key,
saying which chain (the hash of its first record), which record was last and its hash.
``costor audit verify`` compares the database with the newest anchor of each pool: a
chain that ends before an anchored record, or holds another hash there, was cut or
rewritten.

Only the newest anchors of a chain are kept (:data:`KEEP`). One that cannot be opened
is passed over: someone who can write the storage can delete anchors (then the check
proves less), not forge them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from costor.errors import BackendError, ObjectNotFound
from costor.store import crypto

if TYPE_CHECKING:
    from costor.store.pool import Pool

ANCHOR_AD = b"costor-audit-anchor"
ANCHOR_PREFIX = "anchors/"
KEEP = 3  # anchors of one chain kept in a pool, newest first


@dataclass(frozen=True)
class Anchor:
    chain: str  # the hash of the chain's first record: which chain (which state)
    record: int  # the last record's id when it was written
    hash: str  # that record's hash
    time: float  # Unix time it was written


def read_anchors(pool: Pool, chain: str | None) -> list[tuple[str, Anchor]]:
    """The pool's anchors of ``chain`` (of any chain: None) as (object name, anchor),
    newest record first."""
    found = []
    for info in pool.backend.list(ANCHOR_PREFIX):
        anchor = _read(pool, info.name)
        if anchor is not None and chain in (None, anchor.chain):
            found.append((info.name, anchor))
    return sorted(found, key=lambda item: (-item[1].record, -item[1].time))


def newest_anchor(pool: Pool, chain: str) -> Anchor | None:
    anchors = read_anchors(pool, chain)
    return anchors[0][1] if anchors else None


def write_anchor(pool: Pool, anchor: Anchor) -> str:
    """Store ``anchor``, then remove this chain's anchors older than the :data:`KEEP`
    newest. Returns the new object's name."""
    data = pool.sealer.seal(
        json.dumps(
            {
                "version": 1,
                "chain": anchor.chain,
                "record": anchor.record,
                "hash": anchor.hash,
                "time": anchor.time,
            },
            sort_keys=True,
        ).encode(),
        ANCHOR_AD,
    )
    name = f"{ANCHOR_PREFIX}{crypto.object_hash(data)}"
    pool.backend.put(name, data)
    for old, _anchor in read_anchors(pool, anchor.chain)[KEEP:]:
        if old != name:
            pool.backend.delete(old)
    return name


def _read(pool: Pool, name: str) -> Anchor | None:
    try:
        data = pool.backend.get(name)
    except (ObjectNotFound, BackendError):
        return None
    if crypto.object_hash(data) != name.rsplit("/", 1)[-1]:
        return None
    try:
        doc = json.loads(pool.sealer.open(data, ANCHOR_AD))
        return Anchor(str(doc["chain"]), int(doc["record"]), str(doc["hash"]), float(doc["time"]))
    except (crypto.AuthenticationFailed, ValueError, KeyError, TypeError):
        return None
