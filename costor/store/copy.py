"""Copy a whole pool between backends, as stored (still encrypted: no key needed).

Incremental: objects are immutable and named by the hash of their bytes, so an object
the destination already lists under the same name is already there and is skipped
(key slots, which have random names, by name and size; the identity file byte for byte).

``verify_existing``: what the destination already holds is read back instead of trusted
by name: each hash-named object must hash to its name, each key slot must equal the
source's; what does not (bit rot, a truncated upload, someone's edit) is replaced from
the source. The replacement overwrites in place (atomic on every backend); a backend that
kept the old bytes gets the object deleted and written again.

Verified: every hash-named object is checked against its name when read from the
source (a damaged source object is reported, not spread) and read back from the
destination after writing — except on a destination that checks each object itself
before it stores it (``verifies_on_arrival``: a site's Backup API, which hashes what
arrives and keeps the identity file and key slots write-once). Such a destination may
be write-only (a token of scope ``append``: it can add, never read back), so nothing is
read from it then: its listing says what it has, and a different pool's identity file
there is refused by it (409) when the copy puts this one.

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
    copied: int = 0  # objects the destination lacked
    skipped: int = 0  # present, trusted by name (no --verify-existing)
    bytes_copied: int = 0  # copied and replaced
    verify_existing: bool = False
    verified: int = 0  # present, read back and sound
    replaced: int = 0  # present but damaged, replaced from the source
    bytes_verified: int = 0
    replaced_objects: list[str] = field(default_factory=list)
    damaged_in_source: list[str] = field(default_factory=list)
    # Key slots the destination holds and the source does not (e.g. removed from the
    # source by a passphrase rotation): copies never delete, so they still open it.
    extra_key_slots: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "destination": self.destination,
            "uuid": self.uuid,
            "copied": self.copied,
            "skipped": self.skipped,
            "bytes_copied": self.bytes_copied,
            "verify_existing": self.verify_existing,
            "verified": self.verified,
            "replaced": self.replaced,
            "bytes_verified": self.bytes_verified,
            "replaced_objects": sorted(self.replaced_objects),
            "damaged_in_source": self.damaged_in_source,
            "extra_key_slots": self.extra_key_slots,
        }


_Listing = list[tuple[str, int]]  # (object name, size)


def copy_pool(
    source: Backend,
    destination: Backend,
    *,
    progress: Progress | None = None,
    workers: int = 4,
    verify_existing: bool = False,
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
    report = CopyReport(
        source.location, destination.location, identity.uuid, verify_existing=verify_existing
    )
    plan = _plan(source, destination, report)
    files = sum(len(t) + len(c) for t, c in plan)
    size = sum(s for t, c in plan for _n, s in t + c)
    progress.set_total(files, size)
    with ThreadPoolExecutor(workers, thread_name_prefix="copy") as executor:
        for family_todo, family_check in plan:  # one family at a time: the write order
            damaged = _verify(executor, source, destination, family_check, report, progress)
            if damaged:
                files += len(damaged)
                size += sum(s for _n, s in damaged)
                progress.set_total(files, size)
            _copy_family(executor, source, destination, family_todo, damaged, report, progress)
    progress.close()
    if not report.damaged_in_source:  # a copy missing objects is never made a pool
        identity_bytes = source.get(IDENTITY_NAME)
        if (
            existing is None
            or _verifies_on_arrival(destination)
            or destination.get(IDENTITY_NAME) != identity_bytes
        ):
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


def _plan(
    source: Backend, destination: Backend, report: CopyReport
) -> list[tuple[_Listing, _Listing]]:
    """For each family in write order: the objects to copy, and those the destination
    has that are to be verified (``verify_existing``; otherwise they are skipped)."""
    present = {info.name: info.size for info in destination.list("")}
    plan: list[tuple[_Listing, _Listing]] = []
    source_keys: set[str] = set()
    for family in ORDER:
        todo, check = [], []
        for info in source.list(family):
            if family == "keys/":
                source_keys.add(info.name)
            if info.name in present and (family in HASH_NAMED or present[info.name] == info.size):
                if report.verify_existing:
                    check.append((info.name, present[info.name]))
                else:
                    report.skipped += 1
            else:
                todo.append((info.name, info.size))
        plan.append((sorted(todo), sorted(check)))
    report.extra_key_slots = sorted(
        name for name in present if name.startswith("keys/") and name not in source_keys
    )
    return plan


def _verify(
    executor: ThreadPoolExecutor,
    source: Backend,
    destination: Backend,
    family_check: _Listing,
    report: CopyReport,
    progress: Progress,
) -> _Listing:
    """Verify the destination's copies of one family; the damaged ones."""
    damaged: _Listing = []
    results = executor.map(lambda item: _sound(source, destination, item[0]), family_check)
    for (name, stored_size), sound in zip(family_check, results, strict=True):
        progress.advance(files=1, size=stored_size)
        if sound:
            report.verified += 1
            report.bytes_verified += stored_size
        else:
            damaged.append((name, stored_size))
    return damaged


def _copy_family(
    executor: ThreadPoolExecutor,
    source: Backend,
    destination: Backend,
    family_todo: _Listing,
    damaged: _Listing,
    report: CopyReport,
    progress: Progress,
) -> None:
    """Copy one family's missing objects and replace its damaged ones."""
    work = [(name, s, False) for name, s in family_todo]
    work += [(name, s, True) for name, s in damaged]
    done = executor.map(
        lambda item: _copy_one(source, destination, item[0], report, replace=item[2]),
        work,
    )
    for (name, item_size, replace), copied in zip(work, done, strict=True):
        if copied is not None:
            if replace:
                report.replaced += 1
                report.replaced_objects.append(name)
            else:
                report.copied += 1
            report.bytes_copied += copied
        progress.advance(files=1, size=item_size)


def _sound(source: Backend, destination: Backend, name: str) -> bool:
    """Whether the destination's object is intact: hash-named ones hash to their name,
    others (key slots) equal the source's. Runs on worker threads."""
    expected = content_address(name)
    for _attempt in range(2):  # read twice: a transfer corrupted in transit is not damage
        try:
            stored = destination.get(name)
        except ObjectNotFound:
            return False
        if stored == source.get(name) if expected is None else object_hash(stored) == expected:
            return True
    return False


def _copy_one(
    source: Backend, destination: Backend, name: str, report: CopyReport, *, replace: bool = False
) -> int | None:
    """Copy one object; its size, or None when the source's is damaged. Runs on worker
    threads; ``list.append`` on the report is atomic in CPython."""
    data = source.get(name)
    expected = content_address(name)
    if expected is not None and object_hash(data) != expected:
        report.damaged_in_source.append(name)
        return None
    if replace:
        _replace_object(destination, name, data)
    else:
        _copy_object(source, destination, name, data=data, verify=_hash_or_bytes)
    return len(data)


def _replace_object(destination: Backend, name: str, data: bytes) -> None:
    """Overwrite a damaged object with good bytes, verified. A backend may keep the old
    object on a second put (the backend contract allows it): then delete, and put again."""
    try:
        destination.put(name, data)
        stored = destination.get(name)
    except (WriteNotVerified, ObjectNotFound):
        stored = b""
    if _hash_or_bytes(name, data, stored):
        return
    destination.delete(name)
    _copy_object(destination, destination, name, data=data, verify=_hash_or_bytes)


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
    if _verifies_on_arrival(destination):
        return  # checked against its name (or write-once bytes) before it was stored
    try:
        stored = destination.get(name)
    except ObjectNotFound:
        stored = b""
    if not verify(name, data, stored):
        raise WriteNotVerified(name=name, attempts=1, reason="read-back differs from the source")


def _verifies_on_arrival(backend: Backend) -> bool:
    """Whether ``backend`` refuses an object that does not match its name (see the
    module's docstring), so a read-back would prove nothing more."""
    return bool(getattr(backend, "verifies_on_arrival", False))


def _same_bytes(_name: str, written: bytes, stored: bytes) -> bool:
    return written == stored


def _hash_or_bytes(name: str, written: bytes, stored: bytes) -> bool:
    expected = content_address(name)
    return object_hash(stored) == expected if expected is not None else written == stored
