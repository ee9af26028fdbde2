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
- **Images** (kind ``i``: a block device or an image file the client names in ``images``)
  go through the large-file path by blocks of their own size (see "images" below);
  DATA and BLOCK frames may carry a run of zeros as a count (:data:`ZEROS`).
- **Fingerprints and digests**: keyed BLAKE2b hashes under the pool's transfer key
  (``Pool.transfer_key``), with the personalisation strings that keep them apart.
- **The Bloom filter** of the pool's whole-file digests: ``u32 k | bits``.
- **Heartbeats**: during long work that sends nothing (hashing a huge file whole or
  by blocks, reading one for a delta, a long sparse walk) the helper sends a
  ``HEARTBEAT`` whenever it has sent nothing for HELLO's ``heartbeat_s``
  (:func:`heartbeat_interval`). The site takes one wherever a frame may come, checks it
  (:func:`check_heartbeat`) and drops it; each one restarts the io timeout. The helper
  sends them from the work itself, between two reads, not from a timer: a host stuck in
  one read (a hung NFS mount) still times out.
- **Changed while read**: a file whose size or modification time moved while the
  producer read it (size and mtime before, by ``lstat``; after, by ``fstat`` on the open
  file: the local walk's rule) comes with ``changed_while_read`` = ``[size before,
  mtime_ns before, bytes read, size after, mtime_ns after]``, in the END of its content
  or, for a digest computed during the walk, in the entry's ``extra``. The site makes
  the warning from those numbers (:func:`check_changed_while_read`), as the local walk
  does, and only for a copy it stores.

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
HEARTBEAT = b"."  # empty: busy on long work (hashing, reading), alive; ignored (see below)

BLOCK_OFFSET = struct.Struct(">Q")  # the offset that starts a BLOCK frame
RAW, ZLIB = b"\x00", b"\x01"  # the flag before the bytes of DATA and BLOCK frames
ZEROS = b"\x02"  # that flag, then u64 N: N zero bytes (a hole or an all-zero block), unsent
ZEROS_COUNT = struct.Struct(">Q")

# --- entries --------------------------------------------------------------------------

# Kinds of entry (the letters of ``ls -l``).
FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = "f", "d", "l", "p", "c", "b", "s"
IMAGE = "i"  # one of a client's ``images`` (a block device or a file), read as one stream

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
CHANGED_WHILE_READ = "changed_while_read"  # in END and ``extra``: see the top of this module

HEARTBEAT_S = 30.0  # the longest interval between heartbeats (:func:`heartbeat_interval`)
MIN_HEARTBEAT_S = 0.05  # and the shortest, whatever the io timeout


class Entry(NamedTuple):
    """One entry of the walk, its fields in the order the wire sends them. ``extra``
    (an 18th field) comes with state ``changed``: ``{"digest", "blocks",
    "changed_blocks"}`` and maybe ``"changed_while_read"``; with ``digest:…`` only
    ``{"changed_while_read"}`` (see the top of this module). ``compact``: not on the wire; a ``[path]`` or ``[path,
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


def parse_entry(item: Any) -> Entry:
    """An entry as received from a host (a decoded JSON list): where host input enters.
    Every field is checked (:func:`check_entry`); :class:`Refused` if one is wrong."""
    if type(item) is not list or not 1 <= len(item) <= ENTRY_FIELDS + 1:
        raise Refused(f"an entry that is not a list of 1, 2, 17 or 18 fields: {_cut(item)}")
    if len(item) <= 2:
        path, state = item[0], item[1] if len(item) == 2 else ""
        if type(path) is not str or state not in ("", SPARSE):
            raise Refused(f"a compact entry that is not [path] or [path, 'sparse']: {_cut(item)}")
        _check_path(path)
        return Entry(path, state=state, compact=True)
    if len(item) < ENTRY_FIELDS:
        raise Refused(f"an entry of {len(item)} fields (a full entry has {ENTRY_FIELDS})")
    return check_entry(Entry(*item))


def check_heartbeat(payload: bytes) -> None:
    """A HEARTBEAT frame: empty from the helper; a few bytes are let through (ignored)."""
    if len(payload) > MAX_HEARTBEAT:
        raise Refused(f"a HEARTBEAT frame of {len(payload)} bytes (at most {MAX_HEARTBEAT})")


def heartbeat_interval(io_timeout: float) -> float:
    """HELLO's ``heartbeat_s``: how long the helper may send nothing during long work
    before it sends a HEARTBEAT. A quarter of the server's io timeout, so that a beat
    delayed by one slow read (the helper looks at the clock between 1 MiB reads) or by
    a loaded link still comes well in time; at most :data:`HEARTBEAT_S` (a 5-byte frame
    every 30 s costs nothing, and a shorter interval would gain nothing)."""
    return max(min(io_timeout / 4, HEARTBEAT_S), MIN_HEARTBEAT_S)


def check_end(document: Any) -> dict[str, Any]:
    """An END frame's document (a JSON object), its ``changed_while_read`` checked."""
    if type(document) is not dict:
        raise Refused(f"an END frame that is not one: {_cut(document)}")
    if CHANGED_WHILE_READ in document:
        check_changed_while_read("an END frame", document[CHANGED_WHILE_READ])
    return document


def check_changed_while_read(what: str, facts: Any) -> list[int]:
    """``[size before, mtime_ns before, bytes read, size after, mtime_ns after]`` of a
    file that changed while it was read (see the top of this module)."""
    if (
        type(facts) is not list
        or len(facts) != 5
        or not all(type(n) is int for n in facts)
        or min(facts[0], facts[2], facts[3]) < 0
        or max(abs(n) for n in facts) > MAX_NUMBER
    ):
        raise Refused(f"{what} whose changed_while_read is {_cut(facts)}")
    return facts


def error_entry(path: str, message: str) -> Entry:
    """What a producer sends for a path it could not read."""
    return Entry(path, state=ERROR_PREFIX + message)


def unpack_data(payload: bytes, *, zeros: bool = True) -> bytes:
    """The bytes of a DATA frame (or of a BLOCK frame after its offset), at most
    :data:`MAX_DATA` once inflated (a run of :data:`ZEROS` too; ``zeros=False``: an
    image's content alone may hold ZEROS runs, whose length its size bounds)."""
    if payload[:1] == ZLIB:
        return inflate(payload[1:], MAX_DATA, "a DATA frame")
    if payload[:1] == ZEROS:
        if not zeros:
            raise Refused("a ZEROS run in the content of a file (only images send them)")
        if len(payload) != 1 + ZEROS_COUNT.size:
            raise Refused(f"a ZEROS frame of {len(payload)} bytes (the flag and a u64)")
        (count,) = ZEROS_COUNT.unpack(payload[1:])
        if not 0 < count <= MAX_DATA:
            raise Refused(f"a ZEROS frame of {count} bytes (1 to {MAX_DATA})")
        return bytes(count)
    if len(payload) > MAX_DATA + 1:
        raise Refused(f"a DATA frame of {len(payload) - 1} bytes (at most {MAX_DATA})")
    return payload[1:]


# --- what a host may send -------------------------------------------------------------
#
# Everything a host sends is checked where it enters, once, for every producer (the
# helper, the SFTP walk, a later agent): a violation is :class:`Refused`, which the
# transport turns into the backup's error (nothing of that run is committed). The limits
# are generous for real trees and bound what one host can make the server hold.

MAX_FRAME = 128 * 1024 * 1024  # a frame's payload: a ~4 TiB changed file's block hashes
MAX_INFLATED = 128 * 1024 * 1024  # an ENTRIES frame inflated (the helper: ~64 KiB batches)
MAX_DATA = 16 * 1024 * 1024  # a DATA or BLOCK frame inflated (the helper: 1 MiB)
MAX_ENTRIES = 100_000  # entries in one ENTRIES frame (the helper: at most ~8,200)
MAX_PATH = 32 * 1024  # characters of a path (Linux: 4,096 bytes reachable by name)
MAX_NAME = 1024  # characters of one name (Linux: 255 bytes)
MAX_TARGET = 32 * 1024  # characters of a symbolic link's target (Linux: 4,095 bytes)
MAX_OWNER = 256  # characters of a user or group name
MAX_XATTRS = 4096  # extended attributes of one entry
MAX_MESSAGE = 64 * 1024  # characters of an error or warning state
MAX_HEARTBEAT = 16  # bytes of a HEARTBEAT's payload (the helper sends none)
MAX_ID = 2**32 - 1  # uid, gid
MAX_NUMBER = 2**63 - 1  # size, inode, device, links, rdev; times in ns, ± (see below)
MODE_BITS = 0o7777  # an entry's mode: permission bits, setuid/setgid/sticky; no type
KINDS = frozenset((FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET, IMAGE))
_STATES = frozenset(("", SAME, DATA_FOLLOWS, CHANGED, DELTA_FOLLOWS, SPARSE))
_FINGERPRINTED = frozenset((FILE, DIR))  # their times are from 1970 (fingerprint: u64)
_PLAIN = frozenset(("", SAME, DATA_FOLLOWS, DELTA_FOLLOWS))  # states with nothing to check
_BAD_NAMES = frozenset(("", ".", ".."))

# --- images ---------------------------------------------------------------------------
#
# An image (kind IMAGE: a block device or an image file named in the client's
# ``images``) is one byte stream sent by the large-file path with a block size of its
# own: state ``data`` (first backup: the content follows, holes and all-zero blocks as
# ZEROS) or ``changed`` (its blocks compared with the parent's; the changed ones are
# fetched as a delta). Its ``extra`` always holds ``image``: how it was read
# (:func:`check_image`); with ``changed`` also ``digest`` (of its block hashes) and
# ``changed_blocks`` (indexes of blocks of ``block_size``).

IMAGE_BLOCK_SIZE = 64 * 1024  # images' comparison blocks (bench/image_granularity.py)
MIN_IMAGE_BLOCK = 4096  # an image's block size: a power of two between these
MAX_IMAGE_BLOCK = 16 * 1024 * 1024
MAX_IMAGE_BLOCKS = 1024 * 1024  # an image's blocks: a larger one is compared by larger blocks
IMAGE_PIECE = 4096  # the pieces of a changed image block a DELTA compares
IMAGE_METHODS = ("full", "blocks", "thin_delta")  # node.image["method"]
IMAGE_SOURCES = ("blockdev", "file")  # node.image["source"]
_IMAGE_KEYS = frozenset(("method", "block_size", "source", "source_id", "full_read", "bytes_read"))
_IMAGE_STATES = frozenset((DATA_FOLLOWS, CHANGED))


def check_image_block(block_size: Any) -> int:
    """An image's block size: a power of two from :data:`MIN_IMAGE_BLOCK` to
    :data:`MAX_IMAGE_BLOCK`."""
    if (
        type(block_size) is not int
        or not MIN_IMAGE_BLOCK <= block_size <= MAX_IMAGE_BLOCK
        or block_size & (block_size - 1)
    ):
        raise Refused(
            f"an image block size of {_cut(block_size)} (a power of two from "
            f"{MIN_IMAGE_BLOCK} to {MAX_IMAGE_BLOCK})"
        )
    return block_size


def check_image(path: str, facts: Any) -> dict[str, Any]:
    """An image entry's ``extra["image"]``: how the host read it (``node.image``)."""
    if type(facts) is not dict or not facts.keys() <= _IMAGE_KEYS or "method" not in facts:
        raise Refused(f"an image {_shown(path)} whose facts are {_cut(facts)}")
    if facts["method"] not in IMAGE_METHODS or facts.get("source", "file") not in IMAGE_SOURCES:
        raise Refused(f"an image {_shown(path)} read by {_cut(facts)}")
    check_image_block(facts.get("block_size"))
    for key in ("source_id", "full_read"):
        value = facts.get(key)
        if value is not None and (type(value) is not str or len(value) > MAX_MESSAGE):
            raise Refused(f"an image {_shown(path)} whose {key} is {_cut(value)}")
    read = facts.get("bytes_read", 0)
    if type(read) is not int or not 0 <= read <= MAX_NUMBER:
        raise Refused(f"an image {_shown(path)} whose bytes_read is {_cut(read)}")
    return facts


def _check_image_entry(entry: Entry) -> None:
    """An IMAGE entry's state and extra (see above): block indexes inside the image."""
    state, extra = entry.state, entry.extra
    if state in (DELTA_FOLLOWS, DATA_FOLLOWS) and extra is None:  # a START: the walk said
        return  # the rest
    if state not in _IMAGE_STATES or type(extra) is not dict:
        raise Refused(f"an image {_shown(entry.path)} in state {_cut(state)} with {_cut(extra)}")
    facts = check_image(entry.path, extra.get("image"))
    allowed = {"image"} if state == DATA_FOLLOWS else {"image", "digest", "changed_blocks"}
    if not extra.keys() <= allowed:
        raise Refused(f"an image {_shown(entry.path)} with {_cut(sorted(extra))}")
    count = -(-entry.size // facts["block_size"])
    if count > MAX_IMAGE_BLOCKS:
        raise Refused(
            f"an image {_shown(entry.path)} of {count} blocks (at most {MAX_IMAGE_BLOCKS})"
        )
    if state == CHANGED:
        _check_digest(entry.path, extra.get("digest"))
        blocks = extra.get("changed_blocks")
        if (
            type(blocks) is not list
            or not all(type(i) is int and 0 <= i < count for i in blocks)
            or len(set(blocks)) != len(blocks)
        ):
            raise Refused(f"an image {_shown(entry.path)} whose changed blocks are wrong")


class Refused(ValueError):
    """What a host sent breaks the protocol or its limits; the message says what (the
    transport adds which host: :class:`costor.errors.HostProtocolError`)."""


def inflate(data: bytes, limit: int, what: str) -> bytes:
    """``data`` decompressed (zlib), refused past ``limit`` bytes: no zlib bomb is
    inflated further than that."""
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(data, limit + 1)
    except zlib.error as error:
        raise Refused(f"{what} that does not inflate ({error})") from None
    if len(inflated) > limit:
        raise Refused(f"{what} that inflates past {limit} bytes")
    if not inflater.eof:
        raise Refused(f"{what} whose zlib stream is truncated")
    return inflated


def _cut(value: Any, length: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= length else text[:length] + "…"


def _shown(path: str) -> str:
    return path if path.isprintable() and len(path) <= 200 else _cut(path, 200)


def _check_path(path: Any) -> None:
    if type(path) is not str or not path.startswith("/") or "\0" in path:
        raise Refused(f"an entry whose path is not an absolute path: {_cut(path)}")
    if len(path) > MAX_PATH:
        raise Refused(f"a path of {len(path)} characters (at most {MAX_PATH}): {_cut(path)}")


def check_entry(entry: Entry) -> Entry:
    """``entry``, if each of its fields is of its type and within its limits. Runs once per
    entry of a host's tree: the common case is a few comparisons, the rest only for
    what is rare (links, extended attributes, digests) or wrong."""
    path, kind, mode, uid, gid, user, group, size, mtime, ctime, inode, device, links = entry[:13]
    rdev, target, xattrs, state = entry[13:ENTRY_FIELDS]
    if type(path) is not str or path[:1] != "/" or "\0" in path or len(path) > MAX_PATH:
        _check_path(path)
    if type(state) is not str or len(state) > MAX_MESSAGE:
        raise Refused(f"an entry {_shown(path)} whose state is {_cut(state)}")
    if state.startswith(ERROR_PREFIX):  # nothing else of it is used
        return entry
    if kind not in KINDS:
        raise Refused(f"an entry {_shown(path)} of unknown type {_cut(kind)}")
    if not (
        type(mode)
        is type(uid)
        is type(gid)
        is type(size)
        is type(mtime)
        is type(ctime)
        is type(inode)
        is type(device)
        is type(links)
        is type(rdev)
        is int
    ):
        raise Refused(f"an entry {_shown(path)} with a number that is not one")
    if (
        min(mode, uid, gid, size, inode, device, links, rdev) < 0
        or min(mtime, ctime) < (0 if kind in _FINGERPRINTED else -MAX_NUMBER)
        or max(size, mtime, ctime, inode, device, links, rdev) > MAX_NUMBER
        or max(uid, gid) > MAX_ID
        or mode > MODE_BITS
    ):
        _out_of_range(entry)
    if type(user) is not str or type(group) is not str or max(len(user), len(group)) > MAX_OWNER:
        raise Refused(f"an entry {_shown(path)} owned by {_cut(user)}:{_cut(group)}")
    if kind == IMAGE:
        _check_image_entry(entry)
    if target is not None or kind == SYMLINK:
        _check_target(entry)
    if xattrs is not None:
        _check_xattrs(path, xattrs)
    if (state not in _PLAIN or entry.extra is not None) and kind != IMAGE:
        _check_state(entry)
    return entry


def _out_of_range(entry: Entry) -> None:
    raise Refused(
        f"an entry {_shown(entry.path)} with mode {entry.mode:o}, uid {entry.uid}, gid "
        f"{entry.gid}, size {entry.size}, mtime {entry.mtime_ns}, ctime {entry.ctime_ns}, "
        f"inode {entry.inode}, device {entry.device}, links {entry.links}, rdev "
        f"{entry.rdev} (out of range)"
    )


def _check_target(entry: Entry) -> None:
    target = entry.target
    if target is not None and (
        type(target) is not str or len(target) > MAX_TARGET or "\0" in target
    ):
        raise Refused(f"an entry {_shown(entry.path)} whose link target is {_cut(target)}")
    if entry.kind == SYMLINK and target is None:
        raise Refused(f"a symbolic link {_shown(entry.path)} without a target")


def _check_xattrs(path: str, xattrs: Any) -> None:
    if type(xattrs) is not dict or len(xattrs) > MAX_XATTRS:
        raise Refused(f"an entry {_shown(path)} whose extended attributes are {_cut(xattrs)}")
    for name, value in xattrs.items():
        if type(name) is not str or not name or "\0" in name or len(name) > MAX_NAME:
            raise Refused(f"an entry {_shown(path)} with an extended attribute {_cut(name)}")
        try:
            base64.b64decode(value, validate=True)
        except (TypeError, ValueError):
            raise Refused(
                f"an entry {_shown(path)} whose extended attribute {_cut(name)} is not base64"
            ) from None


def _check_state(entry: Entry) -> None:
    state, extra = entry.state, entry.extra
    if state.startswith(DIGEST_PREFIX):
        _check_digest(entry.path, state[len(DIGEST_PREFIX) :])
    elif state.startswith(LINK_PREFIX):
        _check_path(state[len(LINK_PREFIX) :])
    elif state not in _STATES and not state.startswith(WARNING_PREFIX):
        raise Refused(f"an entry {_shown(entry.path)} whose state is {_cut(state)}")
    if state == SPARSE and entry.kind != DIR:
        raise Refused(f"an entry {_shown(entry.path)} walked sparse that is not a directory")
    if state == CHANGED:
        if type(extra) is not dict:
            raise Refused(f"a changed file {_shown(entry.path)} without its digest")
        _check_digest(entry.path, extra.get("digest"))
        blocks = extra.get("changed_blocks", [])
        if type(blocks) is not list or not set(map(type, blocks)) <= {int}:
            raise Refused(f"a changed file {_shown(entry.path)} whose changed blocks are wrong")
    elif extra is not None and not (
        state.startswith(DIGEST_PREFIX)
        and type(extra) is dict
        and extra.keys() == {CHANGED_WHILE_READ}
    ):
        raise Refused(f"an entry {_shown(entry.path)} with an 18th field in state {state!r}")
    if extra is not None and CHANGED_WHILE_READ in extra:
        check_changed_while_read(f"an entry {_shown(entry.path)}", extra[CHANGED_WHILE_READ])


def _check_digest(path: str, digest: Any) -> None:
    try:
        ok = type(digest) is str and len(bytes.fromhex(digest)) == DIGEST_SIZE
    except ValueError:
        ok = False
    if not ok:
        raise Refused(f"an entry {_shown(path)} whose digest is {_cut(digest)}")


def check_name(name: str, directory: str) -> None:
    """A name in ``directory`` (a producer's listing): not empty, ``.`` or ``..``, no
    ``/`` or NUL, at most :data:`MAX_NAME` characters."""
    if name in _BAD_NAMES or "/" in name or "\0" in name or len(name) > MAX_NAME:
        raise Refused(f"an entry named {_cut(name)} in {_shown(directory)}")


class WalkCheck:
    """The entries of one walk, in the order they arrive: the root ``/`` first, a
    directory before its entries, each entry's path its directory's path and one name
    (:func:`check_name`), and the names of a directory in strictly increasing byte order
    (the order every producer walks in): no name twice. Error entries are not placed.
    Memory: one small record per directory level open."""

    def __init__(self) -> None:
        # Per open directory: its path with a trailing "/", the last name placed in it
        # (and its bytes), and whether that entry may be a directory (False: it is not).
        self._open: list[list[Any]] = []

    def entry(self, entry: Entry) -> None:
        if entry.state.startswith(ERROR_PREFIX):
            return
        path, stack = entry.path, self._open
        if not stack:
            if path != "/" or not (entry.compact or entry.kind == DIR):
                raise Refused(f"an entry {_shown(path)} before the root directory /")
            stack.append(["/", "", b"", False])
            return
        while not path.startswith(stack[-1][0]):
            stack.pop()  # left: the walk goes on in a directory above
            if not stack:
                raise Refused(f"an entry {_shown(path)} outside the walk")
        top = stack[-1]
        name = path[len(top[0]) :]
        if "/" in name and name.partition("/")[0] == top[1] and top[3] is not False:
            top = [top[0] + top[1] + "/", "", b"", False]  # into the last directory
            stack.append(top)
            name = path[len(top[0]) :]
        directory = top[0][:-1] or "/"
        check_name(name, directory)
        try:
            raw = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise Refused(f"an entry named {_cut(name)} in {_shown(directory)}") from None
        if raw <= top[2] and top[1]:
            what = "two entries" if raw == top[2] else "entries out of order"
            raise Refused(f"{what} named {_cut(name)} in {_shown(directory)}")
        top[1], top[2] = name, raw
        top[3] = None if entry.compact else entry.kind == DIR


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

    def __init__(self, key: bytes, *, large: bool, block_size: int = BLOCK_SIZE) -> None:
        self.key = key
        self.large = large
        self.block_size = block_size  # an image's own (IMAGE_BLOCK_SIZE), else 1 MiB
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
            index, within = divmod(self.position, self.block_size)
            take = min(len(view), self.block_size - within)
            if within == 0:
                self._index = index
                self._block = hashlib.blake2b(key=self.key, digest_size=BLOCK_HASH_SIZE)
            if self._block is not None and self._index == index:
                self._block.update(view[:take])
                if within + take == self.block_size:
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
        blocks = b"".join(self.blocks[index] for index in range(-(-size // self.block_size)))
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
