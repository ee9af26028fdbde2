"""The host↔site wire format of a pull: what the helper on a host (or an SFTP walk, or
later an agent) and the site say to each other.

- **Frames**: ``kind (1 byte) | length (u32 big-endian) | payload``; the kinds below.
- **Entries**: one per file, directory, link or device, as a JSON list whose fields come
  in the order of :class:`Entry`; a compact entry (``[path]`` or ``[path, "sparse"]``)
  says that path and stat data are the parent snapshot's. :func:`parse_entry` is the one
  place where an entry received from a host becomes an :class:`Entry`.
- **States**: what an entry says of a regular file's content, which the site
  (:class:`costor.store.backup.stream.Ingest`) acts on:

  ``[path]`` (a compact entry)
      path and stat data equal to the parent snapshot's (unchanged ctime: unchanged
      metadata too): the parent's node is reused as it is;
  ``digest:HEX``
      a whole-file digest (keyed BLAKE2b under the transfer key) that may already be in
      the pool: looked up in the site's digest index; a miss is fetched later;
  ``changed`` (with ``{"digest", "blocks", "changed_blocks"}``)
      a file that was in the parent and changed: known digest → reused; otherwise its
      content is fetched later as a *delta* against the parent's version: only blocks
      whose hash differs are sent;
  ``data``
      the content follows;
  ``link:PATH``
      another name of a file already sent in this walk;
  ``same``
      unchanged by the producer's own rule (the SFTP walk: size and mtime);
  ``sparse`` (a directory)
      walked sparse: only what changed below it is sent; ``""`` for a directory walked
      whole;
  ``delta`` (a START frame)
      changed blocks follow in BLOCK frames;
  ``warning:MESSAGE``
      stored, but not as the user may think (a device node without its contents);
  ``error:MESSAGE``
      the producer could not read it: counted, left out of the snapshot.
- **Fingerprints and digests**: keyed BLAKE2b hashes under the pool's transfer key
  (``Pool.transfer_key``), with the personalisation strings that keep them apart.
- **The Bloom filter** of the pool's whole-file digests: ``u32 k | bits``.

The helper (``costor/transport/helper.py``) runs on the host with the standard library
alone and cannot import this module: it keeps its own copy of what it needs, and
``tests/test_protocol.py`` ties every copy to this file.

Standard library only, importing nothing else from CoStor: every layer may use it.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import math
import struct
import zlib
from collections.abc import Iterable
from typing import Any, NamedTuple

# --- frames ---------------------------------------------------------------------------

FRAME_HEADER = struct.Struct(">cI")  # kind, payload length

# Server -> helper
HELLO = b"H"  # JSON: options, digest key, hooks
PARENT = b"P"  # parent files: 4-byte path fingerprint | 8-byte path+stat fingerprint, each
PARENT_LARGE = b"L"  # zlib(JSON list): [path, base64 1 MiB block hashes] of large parent files
PARENT_DIRS = b"G"  # the parent's directories: 8-byte keyed hash of path and entry names, each
BLOOM = b"B"  # the Bloom filter of digests in the pool: u32 k | bits
WALK = b"W"  # walk the paths and stream entries
FETCH = b"F"  # JSON list of paths: send their content (digests the pool did not have)
DELTA = b"T"  # JSON list of [path, old_size, [[offset, length, block, base64 hashes]…]]
AFTER = b"A"  # run the after hooks
QUIT = b"Q"
# Helper -> server
HELLO_REPLY = b"h"  # JSON: python version, uid, hostname
HOOK = b"k"  # JSON: one hook's result
READY = b"r"  # the before hooks succeeded (or there were none)
HOOK_FAILED = b"x"  # a before hook failed; the helper waits for AFTER and QUIT
ENTRIES = b"M"  # zlib(JSON list of entries)
DATA = b"D"  # flag (0 raw, 1 zlib) | bytes: the next bytes of the current file
BLOCK = b"X"  # u64 offset | flag | bytes: a changed block of the current file
END = b"d"  # JSON {size, digest, blocks, error}: the current file is complete
START = b"S"  # JSON entry: the content of a FETCHed or DELTA file follows
OMITTED = b"O"  # JSON [files, bytes, dirs]: left out of a sparse walk as unchanged
MATCHED = b"U"  # zlib(one byte per PARENT fingerprint, then per PARENT_DIRS hash: 1 if seen)
WALK_DONE = b"Z"  # JSON: counters of the walk
DONE = b"z"  # a command without other output finished (AFTER, FETCH, DELTA)
ERROR = b"!"  # JSON {error}: the helper failed

BLOCK_OFFSET = struct.Struct(">Q")  # the offset that starts a BLOCK frame
RAW, ZLIB = b"\x00", b"\x01"  # the flag before the bytes of DATA and BLOCK frames

# --- entries --------------------------------------------------------------------------

# Kinds of entry (the letters of ``ls -l``).
FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = "f", "d", "l", "p", "c", "b", "s"

# States (the entry's last field). Prefixed ones carry a value after the colon.
SAME = "same"  # unchanged by the producer's own rule (SFTP: size and mtime)
DATA_FOLLOWS = "data"  # the content follows in DATA frames, then END
CHANGED = "changed"  # in the parent and changed: the extra field says how
DELTA_FOLLOWS = "delta"  # (START) changed blocks follow in BLOCK frames, then END
SPARSE = "sparse"  # a directory walked sparse: only what changed below it is sent
DIGEST_PREFIX = "digest:"  # a whole-file digest that may already be in the pool
LINK_PREFIX = "link:"  # another name of a file sent earlier in this walk
ERROR_PREFIX = "error:"  # could not be read: left out of the snapshot
WARNING_PREFIX = "warning:"  # stored, with a warning (a link whose target is unreadable)

ENTRY_FIELDS = 17  # the fields of a full entry, without ``extra``


class Entry(NamedTuple):
    """One entry of the walk, its fields in the order the wire sends them. ``extra``
    (an 18th field) comes with state ``changed``: ``{"digest", "blocks",
    "changed_blocks"}``. ``compact``: not on the wire; a ``[path]`` or ``[path,
    "sparse"]`` entry (then ``state`` is ``""`` or ``"sparse"``)."""

    path: str
    kind: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0
    links: int = 0
    rdev: int = 0
    target: str | None = None
    xattrs: dict[str, str] | None = None  # name -> base64 value
    state: str = ""
    extra: dict[str, Any] | None = None
    compact: bool = False


def parse_entry(item: list[Any]) -> Entry:
    """An entry as received from a host (a decoded JSON list): where host input enters."""
    if len(item) <= 2:
        return Entry(item[0], state=item[1] if len(item) == 2 else "", compact=True)
    if len(item) < ENTRY_FIELDS:
        raise IndexError(f"an entry has {ENTRY_FIELDS} fields, not {len(item)}")
    return Entry(*item[: ENTRY_FIELDS + 1])


def error_entry(path: str, message: str) -> Entry:
    """What a producer sends for a path it could not read."""
    return Entry(path, state=ERROR_PREFIX + message)


def unpack_data(payload: bytes) -> bytes:
    """The bytes of a DATA frame (or of a BLOCK frame after its offset)."""
    return zlib.decompress(payload[1:]) if payload[:1] == ZLIB else payload[1:]


# --- fingerprints and digests ---------------------------------------------------------

BLOCK_SIZE = 1024 * 1024  # reads, DATA frames and the blocks of large files
LARGE_FILE = 64 * 1024 * 1024  # from this size, block hashes are kept for in-place diffs
BLOCKS_PERSON = b"costor-blocks"  # a large file's digest is of its block hashes
DIR_PERSON = b"costor-dir"  # a directory's hash: of its path and its entries' names
FINGERPRINT_SIZE = 12  # PARENT: a 4-byte hash of the path | an 8-byte one of path and stat
DIR_HASH_SIZE = 8  # PARENT_DIRS, each
BLOCK_HASH_SIZE = 16  # a 1 MiB block's hash
PIECE_HASH_SIZE = 8  # a hash of a DELTA request's piece
DIGEST_SIZE = 32  # a whole-file digest

_STAT = struct.Struct(">QQQQ")  # size, mtime_ns, ctime_ns, inode


def fingerprint(
    key: bytes, path: bytes, size: int, mtime_ns: int, ctime_ns: int, inode: int
) -> bytes:
    """The producer's view of an entry (costor/transport/helper.py ``_stat_key``): a 4-byte
    keyed hash of its path and an 8-byte one of path and stat data."""
    keyed = _keyed8(key)
    by_path, by_stat = keyed.copy(), keyed.copy()  # a copy costs half a keyed start
    by_path.update(path)
    by_stat.update(path + b"\0" + _STAT.pack(size, mtime_ns, ctime_ns, inode))
    return by_path.digest()[:4] + by_stat.digest()


@functools.lru_cache(maxsize=8)
def _keyed8(key: bytes) -> Any:
    return hashlib.blake2b(key=key, digest_size=8)


def dir_hash(key: bytes, path: str, names: Iterable[bytes]) -> bytes:
    """costor/transport/helper.py ``dir_hash``: of the path and the sorted names."""
    data = path.encode("utf-8", "surrogateescape") + b"\0" + b"\0".join(sorted(names))
    return hashlib.blake2b(data, key=key, digest_size=DIR_HASH_SIZE, person=DIR_PERSON).digest()


def piece_hash(key: bytes, data: bytes | memoryview) -> bytes:
    """The hash of one piece of a DELTA request's range."""
    return hashlib.blake2b(data, key=key, digest_size=PIECE_HASH_SIZE).digest()


def blocks_digest(key: bytes, blocks: bytes) -> bytes:
    """A large file's digest: of its block hashes."""
    return hashlib.blake2b(blocks, key=key, digest_size=DIGEST_SIZE, person=BLOCKS_PERSON).digest()


class ContentDigest:
    """What proves a file's content (costor/transport/helper.py computes the same): a keyed
    BLAKE2b of the whole file; for a large file, the keyed 16-byte BLAKE2b of each 1 MiB
    block, and as digest the BLAKE2b of those. A large file's digest can so be checked
    from its blocks: one changed block costs hashing that block, not the file.

    Bytes are fed in file order; :meth:`jump` moves to another offset (blocks not fed
    from their first byte get no hash: the caller knows them otherwise)."""

    def __init__(self, key: bytes, *, large: bool) -> None:
        self.key = key
        self.large = large
        self.whole = None if large else hashlib.blake2b(key=key, digest_size=DIGEST_SIZE)
        self.blocks: dict[int, bytes] = {}  # block index -> hash, of blocks fed whole
        self.position = 0
        self._index = -1
        self._block: Any = None

    def update(self, data: bytes | memoryview) -> None:
        if self.whole is not None:
            self.whole.update(data)
            self.position += len(data)
            return
        view = memoryview(data)
        while len(view):
            index, within = divmod(self.position, BLOCK_SIZE)
            take = min(len(view), BLOCK_SIZE - within)
            if within == 0:
                self._index = index
                self._block = hashlib.blake2b(key=self.key, digest_size=BLOCK_HASH_SIZE)
            if self._block is not None and self._index == index:
                self._block.update(view[:take])
                if within + take == BLOCK_SIZE:
                    self.blocks[index] = self._block.digest()
                    self._block = None
            view = view[take:]
            self.position += take

    def jump(self, position: int) -> None:
        assert self.whole is None, "only a large file's blocks can be skipped"
        self._block, self.position = None, position

    def close(self) -> None:
        """The file ended: a last, partial block fed from its start has its hash."""
        if self._block is not None:
            self.blocks[self._index] = self._block.digest()
            self._block = None

    def hexdigest(self) -> str:
        """Of a small file; a large file's is :func:`blocks_digest` of its blocks."""
        assert self.whole is not None
        return self.whole.hexdigest()

    def end(self, size: int) -> dict[str, Any]:
        """What a producer reports at the end of a file fed whole (the END frame)."""
        self.close()
        if self.whole is not None:
            return {"size": size, "digest": self.whole.hexdigest(), "blocks": None}
        blocks = b"".join(self.blocks[index] for index in range(-(-size // BLOCK_SIZE)))
        digest = blocks_digest(self.key, blocks)
        return {"size": size, "digest": digest.hex(), "blocks": base64.b64encode(blocks).decode()}


# --- the Bloom filter of the pool's digests ---------------------------------------------


class Bloom:
    """Reads a filter (costor/transport/helper.py ``Bloom``): bits set at k positions taken
    from the digest itself (a keyed hash: uniform)."""

    def __init__(self, payload: bytes) -> None:
        self.k = struct.unpack(">I", payload[:4])[0]
        self.bits = payload[4:]
        self.size = len(self.bits) * 8

    def may_contain(self, digest: bytes) -> bool:
        if not self.size:
            return False
        for i in range(self.k):
            position = int.from_bytes(digest[4 * i : 4 * i + 4], "big") % self.size
            if not self.bits[position >> 3] & (1 << (position & 7)):
                return False
        return True


def bloom_filter(digests: list[bytes], *, false_positive: float = 0.01) -> bytes:
    """A filter of ``digests``: ``u32 k | bits``, positions taken from the digests' own
    bytes (keyed hashes: already uniform)."""
    count = max(len(digests), 1)
    bits = max(64, int(-count * math.log(false_positive) / (math.log(2) ** 2)))
    hashes = max(1, min(7, round(bits / count * math.log(2))))
    size = (bits + 7) // 8
    array = bytearray(size)
    _set_bits(array, hashes, digests)
    return struct.pack(">I", hashes if digests else 0) + bytes(array if digests else b"")


def bloom_add(payload: bytes, digests: list[bytes]) -> bytes:
    """``payload`` (:func:`bloom_filter`) with ``digests`` added."""
    hashes = struct.unpack(">I", payload[:4])[0]
    if not hashes:  # made of no digests: no size to add to
        return bloom_filter(digests) if digests else payload
    array = bytearray(payload[4:])
    _set_bits(array, hashes, digests)
    return payload[:4] + bytes(array)


def _set_bits(array: bytearray, hashes: int, digests: list[bytes]) -> None:
    words, total = struct.Struct(f">{hashes}I"), len(array) * 8
    for digest in digests:
        for word in words.unpack_from(digest):
            position = word % total
            array[position >> 3] |= 1 << (position & 7)


# --- the exclude rule -------------------------------------------------------------------


class ExcludeMatcher:
    """HELLO's ``exclude``, restic-like: a pattern with '/' matches the absolute path, any
    other the name; an excluded directory is skipped with everything in it. The one
    rule for every walk: the local one (on decoded names), the SFTP walker, and the
    shipped helper's stdlib copy (tied to this class by tests/test_protocol.py)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.path_patterns = [p.rstrip("/") for p in patterns if "/" in p]
        self.name_patterns = [p for p in patterns if "/" not in p]
        self.active = bool(patterns)

    def excluded(self, path: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns) or any(
            fnmatch.fnmatchcase(path, p) for p in self.path_patterns
        )
