"""The pool: identity, key slots, the blob index, packs, trees and snapshots over one
backend. With ``identity.py`` (the identity file and the key slots, which are read
before the key is known), this is the only module that knows the pool's object layout::

    costor-pool.json          identity (plain JSON; reading it is the connectivity check)
    keys/<slot>               key slots (master key wrapped per passphrase)
    packs/xx/yy/<hash>        packs of data or tree blobs
    index/<hash>              index segments
    snapshots/<hash>          snapshot manifests
    damaged/<hash>            copies of blobs found damaged (damage.py)

Write ordering makes every write crash-safe: a pack is stored whole before the index
segment naming it, and the index segment before the snapshot that needs it. A killed
backup leaves at most packs no segment names; :meth:`Pool.adopt_orphan_packs` reads their
trailers so the next backup reuses their blobs instead of storing them again.

Thread safety: ``reserve``, ``store_blob``, ``read_blob`` and ``flush`` may be called
from many threads; sealing and compression run outside the lock.
"""

from __future__ import annotations

import copy
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from typing import Any

import zstandard

from costor.errors import (
    AmbiguousSnapshot,
    BackendError,
    DataCorruption,
    ObjectDamaged,
    ObjectNotFound,
    PackMissing,
    PoolError,
    PoolExists,
    PoolMismatch,
    SnapshotNotFound,
)
from costor.store import crypto, pool_params
from costor.store.backends.base import Backend
from costor.store.backends.local import LocalBackend
from costor.store.backends.memory import MemoryBackend
from costor.store.damage import Damage, DamagedCopy, new_copy, read_damage, write_damage
from costor.store.gc.condemned import CondemnedPack, read_condemned
from costor.store.gc.leases import READER_LEASES, Lease, LeaseInfo, list_leases
from costor.store.identity import (
    DEFAULT_CHUNK_AVG_KIB,
    DEFAULT_CHUNKER,
    DEFAULT_PACK_SIZE,
    FORMAT_VERSION,
    IDENTITY_NAME,
    KEYS_PREFIX,
    SUPPORTED_VERSIONS,
    PoolIdentity,
    chunk_avg_kib,
    count_snapshots,
    foreign_object,
    read_identity,
    read_key_slots,
    remove_key_slot,
)
from costor.store.index import (
    SEGMENT_AD,
    SEGMENT_BLOBS,
    BlobLocation,
    Index,
    IndexCache,
    SegmentLoader,
    decode_segment,
    encode_segment,
    split_segments,
)
from costor.store.pack import (
    FOOTER,
    BlobCodec,
    BlobCorrupt,
    BlobType,
    PackBuilder,
    PackEntry,
    pack_name,
    parse_footer,
    parse_trailer,
)
from costor.store.snapshot import Snapshot
from costor.store.tree import Node, decode_tree, encode_docs, encode_tree
from costor.util.log import get_logger

SNAPSHOT_AD = b"costor-snapshot"
_log = get_logger("store.pool")
# Decoded trees kept for walks that come back to them (browsing, diff): at most so many
# trees and so many entries in them. By trees alone, 4,096 directories of 100 files held
# ~250 MB on a 1,000,000-file snapshot.
TREE_CACHE_SIZE = 4096
TREE_CACHE_NODES = 50_000


# On object storage blobs are read through aligned windows of a pack: restores and tree
# walks read blobs in roughly the order the backup wrote them, so one ranged GET serves
# many blobs (a per-blob GET made a 20,000-file restore 11x slower than restic's,
# docs/benchmarks-s3.md). Windows of several packs are read in turn when a snapshot's
# files lie in the packs of many backups (an aged pool): with 4 windows, restoring the
# 4th of 4 incrementals read 714 MiB for 98 with 16, so 16 x 4 MiB.
# A local disk gets no windows: each blob is one pread of exactly its bytes. Measured
# on bench/aging.py's pool (12 incrementals, restored to tmpfs) 32 x 1 MiB windows read
# 241 MiB to restore the latest snapshot, blob by blob 116 MiB, in the same time
# (0.38-0.49 s against 0.40-0.41 s); 20,000 small files restored no slower (1.4-1.8 s
# against 1.6-1.9 s); and no window is held in memory.
READ_WINDOW = 4 * 1024 * 1024
READ_WINDOWS_CACHED = 16
LOCAL_READ_WINDOW = 0  # every blob read on its own (a window of 0 bytes)
LOCAL_READ_WINDOWS_CACHED = 0


def _is_local(backend: Backend) -> bool:
    """A disk the pool reads directly (under whatever wrappers: retries, limits)."""
    while True:
        if isinstance(backend, LocalBackend | MemoryBackend):
            return True
        inner = getattr(backend, "inner", None)
        if inner is None:
            return False
        backend = inner


class ReadWindows:
    """An LRU of recently read pack windows, shared by all reading threads; a window
    being fetched by one thread is waited for, not fetched again, by the others. With a
    ``size`` of 0 there are none: each blob is read on its own (a local disk)."""

    def __init__(
        self, backend: Backend, size: int = READ_WINDOW, capacity: int = READ_WINDOWS_CACHED
    ) -> None:
        self.backend = backend
        self.size = size
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._loading: dict[tuple[str, int], threading.Event] = {}
        self._lock = threading.Lock()
        self.reads = 0  # ranged reads made (for tests and reports)

    def read(self, pack_id: str, offset: int, length: int, data_end: int) -> bytes:
        if length >= self.size or data_end <= 0:
            self.reads += 1
            return self.backend.get_range(pack_name(pack_id), offset, length)
        start = offset - offset % self.size
        key = (pack_id, start)
        needed = offset + length
        while True:
            with self._lock:
                window = self._cache.get(key)
                if window is not None and needed <= start + len(window):
                    self._cache.move_to_end(key)
                    return window[offset - start : needed - start]
                loading = self._loading.get(key)
                if loading is None:
                    loading = self._loading[key] = threading.Event()
                    break
            loading.wait()  # another thread is fetching (part of) this window
        try:
            have = b"" if window is None else window
            # A window covers its aligned span up to the last blob (the trailer follows);
            # a blob straddling its end extends it by just the missing tail, so no byte
            # is fetched twice.
            end = min(max(start + self.size, needed), max(data_end, needed))
            self.reads += 1
            tail = self.backend.get_range(
                pack_name(pack_id), start + len(have), end - start - len(have)
            )
            window = have + tail if have else tail
            with self._lock:
                self._cache[key] = window
                self._cache.move_to_end(key)
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        finally:
            with self._lock:
                self._loading.pop(key).set()
        return window[offset - start : needed - start]

    def forget(self, pack_id: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == pack_id]:
                del self._cache[key]


class Pool:
    def __init__(self, backend: Backend, identity: PoolIdentity, master: crypto.MasterKey) -> None:
        # The parameters below are used only once their tag is checked (pool_params.py).
        pool_params.verify(identity, master, backend.location)
        self.backend = backend
        self.identity = identity
        self.master = master
        self.sealer = crypto.Sealer(identity.encryption, master.encryption_key)
        compression = identity.compression
        level = compression.get("level", 3) if compression.get("algorithm") == "zstd" else None
        self.codec = BlobCodec(self.sealer, master.id_key, level)
        self.pack_size = identity.pack_size
        self.index = Index()
        # Packs a prune condemned (costor/store/gc/prune.py): not reused for new writes, but
        # still read if a snapshot needs a blob only they hold (a backup that began
        # before they were condemned); ``fallback`` indexes them.
        self.condemned: dict[str, CondemnedPack] = {}
        self.fallback = Index()
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._builders: dict[BlobType, PackBuilder] = {}
        self._unindexed: dict[str, list[PackEntry]] = {}  # written, not yet in a segment
        self._unindexed_blobs = 0
        self._own_leases: set[str] = set()  # leases this process holds
        self._gone_leases: list[str] = []  # killed writers' leases, until their packs are listed
        # Index segments loaded or written by this process: while all of them stay, no
        # blob they index has left the index (segments are immutable; only a prune or a
        # reindex removes one).
        self.segments: set[str] = set()
        # Segments load_index skipped as damaged (name -> why): their packs are found
        # through their trailers (``locate``); ``check`` reports them as damage.
        self.bad_segments: dict[str, str] = {}
        # Copies of blobs recorded as damaged (damage.py), left out of the index by
        # load_index; and those this process found, recorded by save_damage (flush).
        self.damage: Damage = {}
        self.unreadable_snapshots: dict[str, str] = {}  # list_snapshots left them out
        # Manifests read and verified (load_snapshot), by id; a plain dict's get and set
        # are atomic, so it may be shared between threads and Pool objects of one pool.
        self.manifests: dict[str, Snapshot] = {}
        self._new_damage: list[DamagedCopy] = []
        self._adopt_lock = threading.Lock()
        self._adopted = False
        self._tree_cache: OrderedDict[bytes, list[Node]] = OrderedDict()
        self._tree_cache_nodes = 0  # entries held by the cached trees
        self.bytes_added = 0  # sealed bytes of new blobs (after compression)
        self.raw_bytes_added = 0  # their plaintext size: the two give the compression ratio
        self.blobs_added = 0
        self.blobs_not_compressed = 0  # skipped by the caller's hint (compressibility.py)
        self.packs_written = 0
        if _is_local(backend):
            self._windows = ReadWindows(backend, LOCAL_READ_WINDOW, LOCAL_READ_WINDOWS_CACHED)
        else:
            self._windows = ReadWindows(backend)
        # Called with (pack_id, size) after each pack is stored; the db layer hooks in.
        self.on_pack_written: Callable[[str, int], None] | None = None

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        *,
        passphrase: str | None,
        encryption: str = "aes-256-gcm",
        kdf: str = "argon2id",
        compression_level: int | None = 3,
        pack_size: int = DEFAULT_PACK_SIZE,
        chunk_avg: int | None = None,
    ) -> Pool:
        if backend.exists(IDENTITY_NAME):
            raise PoolExists(location=backend.location)
        if encryption not in crypto.CIPHERS:
            raise PoolError(message=f"unknown encryption {encryption!r}")
        if encryption != "none" and not passphrase:
            raise PoolError(message="an encrypted pool needs a passphrase")
        chunker = dict(DEFAULT_CHUNKER)
        if chunk_avg:
            chunker.update(avg_size=chunk_avg // 2, min_size=chunk_avg // 2, max_size=chunk_avg * 8)
        master = crypto.MasterKey.generate()
        identity = PoolIdentity(
            uuid=str(uuid.uuid4()),
            version=FORMAT_VERSION,
            encryption=encryption,
            compression=(
                {"algorithm": "zstd", "level": compression_level}
                if compression_level
                else {"algorithm": "none"}
            ),
            chunker=chunker,
            pack_size=pack_size,
            created=_now(),
        )
        identity = pool_params.bind(identity, master)
        pool = cls(backend, identity, master)
        # Key slot first, identity last: a pool without an identity file is "not there",
        # so an init killed half-way can simply be run again.
        pool.add_key_slot(passphrase or "", kdf)
        backend.put(IDENTITY_NAME, identity.to_bytes())
        return pool

    @classmethod
    def open(
        cls, backend: Backend, passphrase: str | None, *, expected_uuid: str | None = None
    ) -> Pool:
        identity = read_identity(backend)
        if expected_uuid and identity.uuid != expected_uuid:
            raise PoolMismatch(
                location=backend.location, found=identity.uuid, expected=expected_uuid
            )
        slots = read_key_slots(backend)
        if not slots:
            raise PoolError(message=f"pool at {backend.location} has no key slots")
        master = crypto.unlock(slots, passphrase or "", identity.uuid, backend.location)
        return cls(backend, identity, master)

    def transfer_key(self) -> bytes:
        """The key of whole-file digests computed on backed-up hosts (keyed BLAKE2b):
        the same for every host of this pool, so content seen on one is recognised on
        another without being sent."""
        return self.master.derive(b"costor transfer digest v1")

    def configure_writes(self, *, compression_level: int | None, pack_size: int) -> None:
        """Compression and pack size for what is written from now on.

        The identity file holds the values the pool was created with; the inventory may
        change them later, and they apply to new blobs and packs only. Readers need
        neither: every sealed blob records whether it is compressed, and a pack's
        trailer lists its blobs whatever its size. Call before writing.
        """
        if compression_level != self.codec.compression_level:
            self.codec = BlobCodec(self.sealer, self.master.id_key, compression_level)
        self.pack_size = pack_size

    def add_key_slot(self, passphrase: str, kdf: str = "argon2id", label: str = "") -> str:
        """Write a new key slot for ``passphrase``; returns its object name."""
        name = f"{KEYS_PREFIX}{uuid.uuid4().hex}"
        self.backend.put(
            name, crypto.make_key_slot(self.master, passphrase, kdf, self.identity.uuid, label)
        )
        return name

    @property
    def uuid(self) -> str:
        return self.identity.uuid

    @property
    def location(self) -> str:
        return self.backend.location

    def make_chunker(self) -> Any:
        # Imported when data is chunked: pyfastcdc costs ~10 ms of imports that listing,
        # restoring or checking a pool does not need.
        from pyfastcdc import FastCDC

        chunker = self.identity.chunker
        return FastCDC(
            int(chunker["avg_size"]),
            min_size=int(chunker["min_size"]),
            max_size=int(chunker["max_size"]),
            normalized_chunking=int(chunker.get("normalization", 1)),  # type: ignore[arg-type]
            seed=self.master.chunker_seed,
        )

    # --- index --------------------------------------------------------------------

    def load_index(self, cache: IndexCache | None = None) -> None:
        """Load every index segment. Packs a prune condemned go to ``fallback``: new
        writes do not reuse them. A backup takes its lease before calling this (see
        gc/leases.py for why the order matters). With ``cache``: only the segments it
        does not hold yet are read (see :class:`IndexCache`)."""
        self.condemned = read_condemned(self)
        self.damage = read_damage(self)
        listed = self._listed_segments()
        if cache is None:
            loader = SegmentLoader(self.index, self.fallback, self.condemned)
            for name, full_name in listed.items():
                self.segments.add(name)
                self._load_segment(full_name, loader)
            loader.finish()
        else:
            with cache.lock:
                self._update_cache(cache, listed)
                self.index, self.fallback = cache.index.copy(), cache.fallback.copy()
                self.segments = set(cache.segments)
        for blob, pack_id in self.damage:
            self.index.drop(blob, pack_id)
            self.fallback.drop(blob, pack_id)

    def refresh_index_cache(self, cache: IndexCache) -> None:
        """Bring ``cache`` up to the segments listed now, without loading this pool's own
        index (a daemon between jobs: what it forks next starts from there)."""
        self.condemned = read_condemned(self)
        listed = self._listed_segments()
        with cache.lock:
            self._update_cache(cache, listed)

    def _listed_segments(self) -> dict[str, str]:
        """Each index segment's name, to its object's name."""
        return {info.name.rsplit("/", 1)[-1]: info.name for info in self.backend.list("index/")}

    def _update_cache(self, cache: IndexCache, listed: dict[str, str]) -> None:
        condemned = frozenset(self.condemned)
        if (
            cache.uuid != self.uuid
            or cache.condemned != condemned
            or not cache.segments <= listed.keys()
        ):
            cache.reset(self.uuid, condemned)
        loader = SegmentLoader(cache.index, cache.fallback, condemned)
        for name, full_name in listed.items():
            if name not in cache.segments:
                self._load_segment(full_name, loader)
                cache.segments.add(name)
        loader.finish()

    def _load_segment(self, name: str, loader: SegmentLoader) -> None:
        """A damaged segment is skipped, not fatal (issue 19): the index is rebuildable
        (what the loader took of it is given back)."""
        try:
            loader.add_segment(self._open_segment(name))
        except (DataCorruption, ValueError, struct.error, zstandard.ZstdError) as error:
            self.bad_segments[name] = str(error)

    def lease(self, kind: str = "backup") -> Lease:
        """Announce a writer (``with pool.lease(): ...``); see gc/leases.py."""
        lease = Lease(self, kind)
        self._own_leases.add(lease.id)
        return lease

    def read_segment(self, name: str) -> dict[str, list[PackEntry]]:
        return decode_segment(self._open_segment(name))

    def _open_segment(self, name: str) -> bytes:
        """An index segment's plaintext (still zstd-compressed), verified."""
        data = self.backend.get(name)
        expected = name.rsplit("/", 1)[-1]
        if crypto.object_hash(data) != expected:
            raise ObjectDamaged(name=name, reason="the index segment does not match its name")
        try:
            return self.sealer.open(data, SEGMENT_AD)
        except crypto.AuthenticationFailed as error:
            raise ObjectDamaged(name=name, reason=f"index segment: {error}") from error

    def list_packs(self) -> dict[str, int]:
        """Pack id -> size for every pack in the backend."""
        return {info.name.rsplit("/", 1)[-1]: info.size for info in self.backend.list("packs/")}

    def read_pack_entries(self, pack_id: str, size: int | None = None) -> list[PackEntry]:
        """A pack's blob list from its trailer (two ranged reads, not the whole pack)."""
        name = pack_name(pack_id)
        if size is None:
            size = next((i.size for i in self.backend.list(name) if i.name == name), None)
            if size is None:
                raise ObjectNotFound(name=name)
        try:
            if size < FOOTER.size:
                raise BlobCorrupt("pack too short")
            trailer_length = parse_footer(
                self.backend.get_range(name, size - FOOTER.size, FOOTER.size)
            )
            start = size - FOOTER.size - trailer_length
            if start < 0:
                raise BlobCorrupt("pack trailer length out of range")
            sealed = self.backend.get_range(name, start, trailer_length)
            return parse_trailer(self.sealer, sealed, size)
        except BlobCorrupt as error:
            raise DataCorruption(pack=pack_id, reason=str(error)) from error

    def adopt_orphan_packs(self, *, record: bool = True) -> int:
        """Index packs that no segment names (left by a killed backup, or by another
        backup still running): their blobs are reused, and (``record``) the next segment
        lists them. Packs that cannot be read are left for ``check`` to report.

        With ``record`` (a backup starting), only when a segment could not be read (its
        packs are listed again) or a writer's lease says there may be such packs:
        another writer running, or one whose holder is gone (killed). A writer that
        stops, even by an exception, lists its packs before it drops its lease
        (:meth:`flush_index`), so no lease, no orphan; listing every pack at every
        backup cost seconds on a pool of 300,000 packs (bench/index.py). The gone
        leases are removed once the packs they left are listed in a segment."""
        if record:
            writers = self._other_writers()
            if not writers and not self.bad_segments:
                return 0
            self._gone_leases = [lease.id for lease in writers if lease.gone(time.time())]
        known = self.index.pack_ids | self.fallback.pack_ids
        adopted = 0
        for pack_id, size in self.list_packs().items():
            if pack_id in known or pack_id in self.condemned:
                continue
            try:
                entries = self.read_pack_entries(pack_id, size)
            except (DataCorruption, BackendError):
                continue
            self.index.add_pack(pack_id, entries)
            if record:
                with self._lock:
                    self._unindexed[pack_id] = entries
            adopted += 1
        if record and not adopted:
            self._drop_gone_leases()  # they left nothing to list
        return adopted

    def _other_writers(self) -> list[LeaseInfo]:
        """Leases of processes that may have written packs no segment names yet (a
        reader's lease — restore, download, self-test — cannot have)."""
        return [
            lease
            for lease in list_leases(self)
            if lease.id not in self._own_leases and lease.kind not in READER_LEASES
        ]

    def _drop_gone_leases(self) -> None:
        gone, self._gone_leases = self._gone_leases, []
        for lease_id in gone:
            try:
                self.backend.delete(f"locks/{lease_id}")
            except (BackendError, ObjectNotFound):
                pass  # removed by another backup meanwhile; or left to go stale again

    def flush_index(self) -> None:
        """An index segment for the packs written and not yet listed (a writer that
        stops without :meth:`flush`: a failed backup's packs are reused, not orphaned)."""
        with self._lock:
            unindexed, self._unindexed, self._unindexed_blobs = self._unindexed, {}, 0
        if unindexed:
            self.write_index_segment(unindexed)
        self._drop_gone_leases()

    # --- writing blobs ------------------------------------------------------------

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return self.codec.blob_id(data)

    def reserve(self, blob_identity: bytes) -> bool:
        """True if the blob is new and the caller must now store it; False if the pool
        already has it or another thread is storing it."""
        if blob_identity in self.index:
            return False
        with self._lock:
            if blob_identity in self._pending or blob_identity in self.index:
                return False
            self._pending.add(blob_identity)
            return True

    def store_blob(
        self,
        blob_type: BlobType,
        blob_identity: bytes,
        data: bytes | memoryview,
        *,
        compress: bool = True,
    ) -> int:
        """Seal a reserved blob and add it to a pack; returns the stored size.
        ``compress=False`` skips the zstd attempt for content known to be compressed."""
        sealed = self.codec.seal(blob_type, blob_identity, data, compress=compress)
        full: PackBuilder | None = None
        with self._lock:
            builder = self._builders.get(blob_type)
            if builder is None:
                builder = self._builders[blob_type] = PackBuilder(blob_type)
            builder.add(blob_identity, sealed, len(data))
            self.bytes_added += len(sealed)
            self.raw_bytes_added += len(data)
            self.blobs_added += 1
            self.blobs_not_compressed += not compress
            if builder.size >= self.pack_size:
                full = self._builders.pop(blob_type)
        if full is not None:
            self._write_pack(full)
        return len(sealed)

    def put_blob(self, blob_type: BlobType, data: bytes) -> bytes:
        blob_identity = self.blob_id(data)
        if self.reserve(blob_identity):
            self.store_blob(blob_type, blob_identity, data)
        return blob_identity

    def _write_pack(self, builder: PackBuilder) -> None:
        data = builder.finish(self.sealer)
        pack_id = crypto.object_hash(data)
        self.backend.put(pack_name(pack_id), data)
        self.index.add_pack(pack_id, builder.entries)
        segment: dict[str, list[PackEntry]] = {}
        with self._lock:
            self._unindexed[pack_id] = builder.entries
            self._unindexed_blobs += len(builder.entries)
            for entry in builder.entries:
                self._pending.discard(entry.blob_id)
            self.packs_written += 1
            if self._unindexed_blobs >= SEGMENT_BLOBS // 4:
                # A long backup lists its packs as it goes (a segment every 256 Ki
                # blobs), not all at the end: their entries are not all held at once.
                segment, self._unindexed, self._unindexed_blobs = self._unindexed, {}, 0
        if segment:
            self.write_index_segment(segment)
        if self.on_pack_written is not None:
            self.on_pack_written(pack_id, len(data))

    def flush(self) -> None:
        """Store partly filled packs, then an index segment naming every pack written
        since the last flush. After flush returns, every stored blob is findable."""
        with self._lock:
            builders = list(self._builders.values())
            self._builders.clear()
        for builder in builders:
            if builder.entries:
                self._write_pack(builder)
        self.flush_index()
        self.save_damage()

    def write_index_segment(self, packs: dict[str, list[PackEntry]]) -> list[str]:
        """Segments listing ``packs`` (one for every :data:`SEGMENT_BLOBS` blobs, so
        that no reader needs a large one whole); their object names."""
        names = []
        for part in split_segments(packs):
            data = self.sealer.seal(encode_segment(part), SEGMENT_AD)
            name = f"index/{crypto.object_hash(data)}"
            self.backend.put(name, data)
            self.segments.add(name.rsplit("/", 1)[-1])
            names.append(name)
        return names

    # --- reading blobs ------------------------------------------------------------

    def locate(self, blob_identity: bytes) -> BlobLocation:
        location = self.index.lookup(blob_identity) or self.fallback.lookup(blob_identity)
        if location is None:
            # Not indexed: perhaps in a pack whose segment is missing or damaged (the
            # index is rebuildable from the trailers). Read them, once per process.
            with self._adopt_lock:
                if not self._adopted:
                    self._adopted = True
                    self.adopt_orphan_packs(record=False)
            location = self.index.lookup(blob_identity)
        if location is None:
            bad = sorted(pack for blob, pack in self._damaged_copies() if blob == blob_identity)
            raise ObjectDamaged(
                name=f"blob {blob_identity.hex()}",
                reason=(
                    f"every copy of it is damaged (in pack {', '.join(bad)}); a backup of "
                    "the files that hold it stores it again, or `costor pool repair "
                    "--from` another copy of the pool"
                    if bad
                    else "no index segment and no pack's trailer lists it (its pack is lost or damaged)"
                ),
            )
        return location

    # --- damage ---------------------------------------------------------------------

    def note_damage(self, blob_identity: bytes, pack_id: str, reason: str) -> None:
        """A copy of a blob is damaged: reads and backups pass it by from now on, and
        :meth:`save_damage` records it for the processes that come after (damage.py)."""
        self.index.drop(blob_identity, pack_id)
        self.fallback.drop(blob_identity, pack_id)
        with self._lock:
            if (blob_identity, pack_id) in self.damage or any(
                c.blob == blob_identity and c.pack == pack_id for c in self._new_damage
            ):
                return
            self._new_damage.append(new_copy(blob_identity, pack_id, reason))

    def save_damage(self) -> int:
        """Record the damaged copies this process found (one ``damaged/`` object);
        returns how many."""
        with self._lock:
            found, self._new_damage = self._new_damage, []
        try:
            write_damage(self, found)
        except BaseException:
            with self._lock:  # kept for the next try
                self._new_damage = found + self._new_damage
            raise
        with self._lock:
            for copy in found:
                self.damage[(copy.blob, copy.pack)] = copy
        return len(found)

    def _damaged_copies(self) -> list[tuple[bytes, str]]:
        with self._lock:
            return [*self.damage, *((c.blob, c.pack) for c in self._new_damage)]

    def read_blob(self, blob_identity: bytes, *, window: bool = True) -> bytes:
        """A blob's plaintext, verified. ``window``: through the cache of pack windows
        (reads in order: a restore, a large file); False, the blob's bytes alone (a
        small file's parent version, wanted once: a 4 MiB window for 8 KiB was most of
        an incremental pull's reading). A copy found damaged is noted
        (:meth:`note_damage`) and the next copy read, if the pool holds one."""
        tried: set[str] = set()
        while True:
            location = self.locate(blob_identity)
            try:
                return self.read_copy(blob_identity, location, window=window)
            except DataCorruption as error:
                self.note_damage(blob_identity, location.pack_id, str(error))
                tried.add(location.pack_id)
                following = self.index.lookup(blob_identity) or self.fallback.lookup(blob_identity)
                if following is None or following.pack_id in tried:
                    raise

    def read_copy(
        self, blob_identity: bytes, location: BlobLocation, *, window: bool = False
    ) -> bytes:
        """The blob's plaintext from one given copy, verified (read twice before it is
        :class:`DataCorruption`)."""
        try:
            if window:
                sealed = self._windows.read(
                    location.pack_id,
                    location.offset,
                    location.length,
                    self.index.data_end(location.pack_id)
                    or self.fallback.data_end(location.pack_id),
                )
            else:
                sealed = self.backend.get_range(
                    pack_name(location.pack_id), location.offset, location.length
                )
        except ObjectNotFound as error:  # the index names it: lost, not a failed read
            raise PackMissing(name=pack_name(location.pack_id)) from error
        try:
            return self.codec.open(location.type, blob_identity, sealed, location.raw_length)
        except BlobCorrupt:
            pass
        # A blob that fails to verify is read once more, alone and uncached: a transfer
        # corrupted in transit is not damaged storage. Twice wrong is damage.
        self._windows.forget(location.pack_id)
        sealed = self.backend.get_range(
            pack_name(location.pack_id), location.offset, location.length
        )
        try:
            return self.codec.open(location.type, blob_identity, sealed, location.raw_length)
        except BlobCorrupt as error:
            raise DataCorruption(pack=location.pack_id, reason=str(error)) from error

    # --- trees ----------------------------------------------------------------------

    def save_tree(self, nodes: list[Node]) -> bytes:
        return self.put_blob(BlobType.TREE, encode_tree(nodes))

    def save_tree_docs(self, docs: list[dict[str, Any]]) -> bytes:
        """A tree from node documents in canonical order (tree.py ``encode_docs``)."""
        return self.put_blob(BlobType.TREE, encode_docs(docs))

    def save_tree_data(self, data: bytes) -> bytes:
        """A tree already encoded (tree.py ``replace_docs``)."""
        return self.put_blob(BlobType.TREE, data)

    def load_tree(self, tree_id: bytes) -> list[Node]:
        with self._lock:
            cached = self._tree_cache.get(tree_id)
            if cached is not None:
                self._tree_cache.move_to_end(tree_id)
                return cached
        nodes = decode_tree(self.read_blob(tree_id))
        with self._lock:
            if tree_id not in self._tree_cache:
                self._tree_cache[tree_id] = nodes
                self._tree_cache_nodes += len(nodes)
            while self._tree_cache and (
                len(self._tree_cache) > TREE_CACHE_SIZE or self._tree_cache_nodes > TREE_CACHE_NODES
            ):
                self._tree_cache_nodes -= len(self._tree_cache.popitem(last=False)[1])
        return nodes

    def walk(self, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        """Every node under a tree, depth first, with its path relative to the root
        (``b"usr/share/doc"``)."""
        for node in self.load_tree(tree_id):
            path = prefix + b"/" + node.name if prefix else node.name
            yield path, node
            if node.type == "dir" and node.subtree is not None:
                yield from self.walk(node.subtree, path)

    def find_node(self, tree_id: bytes, path: str | bytes) -> Node | None:
        """The node at ``path`` (``/usr/share``) in a snapshot's tree; for ``/`` a
        synthetic directory node whose subtree is the root."""
        raw = os.fsencode(path) if isinstance(path, str) else path
        parts = [part for part in raw.split(b"/") if part and part != b"."]
        node = Node(name=b"", type="dir", mode=0o755, subtree=tree_id)
        for part in parts:
            if node.type != "dir" or node.subtree is None:
                return None
            node_or_none = next((n for n in self.load_tree(node.subtree) if n.name == part), None)
            if node_or_none is None:
                return None
            node = node_or_none
        return node

    # --- snapshots ------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> str:
        data = self.sealer.seal(snapshot.to_bytes(), SNAPSHOT_AD)
        snapshot_id = crypto.object_hash(data)
        self.backend.put(f"snapshots/{snapshot_id}", data)
        snapshot.id = snapshot_id
        return snapshot_id

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        """A manifest, verified. Manifests are immutable and named by their hash, so one
        read once is kept in ``manifests`` (which a long-lived caller may share between
        the Pool objects it opens for one pool: the site server lists every snapshot per
        request, and reading them was most of that); a copy is returned, for callers that
        change what they got."""
        known = self.manifests.get(snapshot_id)
        if known is not None:
            return copy.copy(known)
        name = f"snapshots/{snapshot_id}"
        data = self.backend.get(name)
        if crypto.object_hash(data) != snapshot_id:
            raise ObjectDamaged(name=name, reason="the snapshot does not match its name")
        try:
            snapshot = Snapshot.from_bytes(self.sealer.open(data, SNAPSHOT_AD), snapshot_id)
        except crypto.AuthenticationFailed as error:
            raise ObjectDamaged(name=name, reason=f"snapshot: {error}") from error
        self.manifests[snapshot_id] = snapshot
        return copy.copy(snapshot)

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot manifest (``forget``). Its data stays until ``prune``
        finds it referenced by no other snapshot."""
        self.backend.delete(f"snapshots/{snapshot_id}")
        self.manifests.pop(snapshot_id, None)

    def snapshot_ids(self) -> list[str]:
        return [info.name.rsplit("/", 1)[-1] for info in self.backend.list("snapshots/")]

    def list_snapshots(self, client: str | Collection[str] | None = None) -> list[Snapshot]:
        """Snapshots, oldest first; ``client``: a name, or several (a renamed client's
        snapshots carry the name it had when they were taken). A manifest that cannot be
        read is left out, with a warning, and kept in ``unreadable_snapshots`` (id ->
        why): one damaged snapshot must not hide the others (``check`` reports it)."""
        snapshots = []
        for snapshot_id in self.snapshot_ids():
            try:
                snapshots.append(self.load_snapshot(snapshot_id))
            except ObjectNotFound:
                continue  # forgotten between the listing and the read
            except DataCorruption as error:
                if snapshot_id not in self.unreadable_snapshots:
                    _log.warning(
                        "pool %s: snapshot %s cannot be read and is left out (%s); "
                        "`costor check` reports it, `costor pool repair --from` a copy "
                        "puts it back",
                        self.location,
                        snapshot_id[:12],
                        error,
                    )
                self.unreadable_snapshots[snapshot_id] = str(error)
        if client is not None:
            names = {client} if isinstance(client, str) else set(client)
            snapshots = [s for s in snapshots if s.client in names]
        return sorted(snapshots, key=lambda s: (s.time, s.id))

    def find_snapshot(self, ref: str, *, client_names: Collection[str] | None = None) -> Snapshot:
        """A full id, a unique prefix, or ``CLIENT:latest`` (``client_names``: every name
        the client had, if it was renamed)."""
        if ref.endswith(":latest"):
            client = ref[: -len(":latest")]
            candidates = self.list_snapshots(client_names or client)
            if not candidates:
                raise SnapshotNotFound(ref=ref)
            return candidates[-1]
        matches = [sid for sid in self.snapshot_ids() if sid.startswith(ref)]
        if not matches:
            raise SnapshotNotFound(ref=ref)
        if len(matches) > 1:
            raise AmbiguousSnapshot(ref=ref, count=len(matches))
        return self.load_snapshot(matches[0])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# The identity and key-slot names (identity.py) are re-exported: ops and tests import
# them from here, with the pool they describe.
__all__ = [
    "DEFAULT_CHUNKER",
    "DEFAULT_CHUNK_AVG_KIB",
    "DEFAULT_PACK_SIZE",
    "FORMAT_VERSION",
    "IDENTITY_NAME",
    "KEYS_PREFIX",
    "Pool",
    "PoolIdentity",
    "READ_WINDOW",
    "READ_WINDOWS_CACHED",
    "ReadWindows",
    "SNAPSHOT_AD",
    "SUPPORTED_VERSIONS",
    "TREE_CACHE_SIZE",
    "chunk_avg_kib",
    "count_snapshots",
    "foreign_object",
    "read_identity",
    "read_key_slots",
    "remove_key_slot",
]
