"""Copy a whole pool between backends, as stored (still encrypted: no key needed).

Incremental: objects are immutable and named by the hash of their bytes, so an object
the destination already lists under the same name is already there and is skipped
(identity and key slots, which have fixed or random names, are compared byte for byte).

Verified: every hash-named object is checked against its name when read from the
source (a damaged source object is reported, not spread) and read back from the
destination after writing.

Crash-safe, in the pool's own write order: key slots, packs, index segments,
snapshots, and the identity file last, so an interrupted first copy is not yet a pool
and an interrupted later copy only lacks some snapshots, never the data of one it has.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from costor.errors import DataCorruption, ObjectNotFound, PoolMismatch, WriteNotVerified
from costor.store.backends.base import Backend
from costor.store.backends.filters import content_address
from costor.store.crypto import object_hash
from costor.store.pool import IDENTITY_NAME, read_identity
from costor.store.progress import Progress

# Object families in write order; all but keys/ are named by the BLAKE3 of their bytes.
ORDER = ("keys/", "packs/", "index/", "snapshots/")
HASH_NAMED = ("packs/", "index/", "snapshots/")


@dataclass
class CopyReport:
    source: str
    destination: str
    uuid: str
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    damaged_in_source: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "destination": self.destination,
            "uuid": self.uuid,
            "copied": self.copied,
            "skipped": self.skipped,
            "bytes_copied": self.bytes_copied,
            "damaged_in_source": self.damaged_in_source,
        }


def copy_pool(
    source: Backend, destination: Backend, *, progress: Progress | None = None, workers: int = 4
) -> CopyReport:
    progress = progress or Progress()
    identity = read_identity(source)
    try:
        existing = read_identity(destination)
    except Exception:  # no pool there yet (or unreadable: the final identity check says)
        existing = None
    if existing is not None and existing.uuid != identity.uuid:
        raise PoolMismatch(
            location=destination.location, found=existing.uuid, expected=identity.uuid
        )
    report = CopyReport(source.location, destination.location, identity.uuid)
    present = {info.name: info.size for info in destination.list("")}
    plan: list[list[tuple[str, int]]] = []
    for family in ORDER:
        todo = []
        for info in source.list(family):
            if info.name in present and (family in HASH_NAMED or present[info.name] == info.size):
                report.skipped += 1
            else:
                todo.append((info.name, info.size))
        plan.append(sorted(todo))
    progress.set_total(sum(len(t) for t in plan), sum(s for t in plan for _n, s in t))
    with ThreadPoolExecutor(workers, thread_name_prefix="copy") as executor:
        for family_todo in plan:  # one family at a time: the write order above
            results = executor.map(
                lambda item: _copy_one(source, destination, item[0], report), family_todo
            )
            for (_name, size), copied in zip(family_todo, results, strict=True):
                if copied:
                    report.copied += 1
                    report.bytes_copied += size
                progress.advance(files=1, size=size)
    progress.close()
    if not report.damaged_in_source:  # a copy missing objects is never made a pool
        identity_bytes = source.get(IDENTITY_NAME)
        if existing is None or destination.get(IDENTITY_NAME) != identity_bytes:
            _copy_object(
                source, destination, IDENTITY_NAME, data=identity_bytes, verify=_same_bytes
            )
    else:
        raise DataCorruption(
            pack=", ".join(report.damaged_in_source[:5]),
            reason=f"{len(report.damaged_in_source)} object(s) in the source do not match their "
            "names; they were not copied (run `costor check --read-data` on the source)",
        )
    return report


def _copy_one(source: Backend, destination: Backend, name: str, report: CopyReport) -> bool:
    """Runs on worker threads; ``list.append`` on the report is atomic in CPython."""
    data = source.get(name)
    expected = content_address(name)
    if expected is not None and object_hash(data) != expected:
        report.damaged_in_source.append(name)
        return False
    _copy_object(source, destination, name, data=data, verify=_hash_or_bytes)
    return True


def _copy_object(
    source: Backend,
    destination: Backend,
    name: str,
    *,
    data: bytes | None = None,
    verify: Callable[[str, bytes, bytes], bool],
) -> None:
    if data is None:
        data = source.get(name)
    destination.put(name, data)
    try:
        stored = destination.get(name)
    except ObjectNotFound:
        stored = b""
    if not verify(name, data, stored):
        raise WriteNotVerified(name=name, attempts=1, reason="read-back differs from the source")


def _same_bytes(_name: str, written: bytes, stored: bytes) -> bool:
    return written == stored


def _hash_or_bytes(name: str, written: bytes, stored: bytes) -> bool:
    expected = content_address(name)
    return object_hash(stored) == expected if expected is not None else written == stored
