# CoStor helper: runs on the host being backed up, for the length of one backup.
#
# It is sent over the SSH connection and executed from memory (nothing is written on the
# host): CoStor starts `python3 -c "exec(__import__('sys').stdin.buffer.readline())"`
# and the first line it sends loads this file. Standard library only, Python 3.6+, one
# file: the host needs nothing but a python3.
#
# Protocol: frames on stdin/stdout, each `kind (1 byte) | length (u32 big-endian) |
# payload`. The server speaks first (HELLO); from then on the helper answers one command
# at a time. A walk is one stream with no round trips: the server sends, before it,
# fingerprints of the parent snapshot's files (keyed hashes of path and stat data; block
# hashes of large files) and a Bloom filter of the whole-file digests already in the
# pool, so the helper itself decides which files are unchanged (their path is sent),
# which may already be in the pool (their digest is sent), which changed (their digest,
# and for a large file which 1 MiB blocks changed: their content is fetched as a delta
# afterwards, one round trip for all of them), and which are new (their content follows,
# zlib-compressed).
#
# A directory whose entry names are those it had in the parent (PARENT_DIRS holds a
# keyed hash of each parent directory's path and names) is walked *sparse*: its entry
# says so, and of its entries only what changed is sent; an unchanged file, or an
# unchanged directory with nothing changed below it, is left out, and the server takes
# the parent's node for it (a file with several links is always sent, by its path, so
# that its other names can refer to it). What was left out is counted (OMITTED), and at
# the end of the walk MATCHED says which parent fingerprints and directories were seen
# unchanged, so the server knows the new snapshot's fingerprints without these paths.
#
# The server gives up on a host that sends nothing for its io timeout. During long work
# that sends nothing (hashing a huge file, reading one for a delta, a long sparse walk)
# the helper sends a HEARTBEAT whenever it has sent nothing for HELLO's heartbeat_s,
# from the work itself, between two reads: a helper stuck in one read still times out.
#
# A file whose size or modification time moved while it was read (lstat before, fstat on
# the open file after: the local walk's rule) is reported with the numbers, in its END
# or, for a digest computed during the walk, in its entry (changed_while_read); the
# server makes the warning.
#
# An image (HELLO's "images": a block device or an image file) is one stream hashed by
# blocks of its own size (64 KiB) and sent like a large file: whole the first time (holes
# and zero blocks as counts), then only the blocks whose hash differs from the parent's,
# or with changes = "thin_delta" only the chunks LVM says changed (see add_image).
#
# The server's side of this format is costor/protocol.py, which the helper cannot import:
# what both need is copied here, and tests/test_protocol.py ties each copy to it.

import base64
import bisect
import fnmatch
import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib

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
OMITTED = b"O"  # JSON [files, bytes, dirs]: left out of the walk as unchanged (see below)
MATCHED = b"U"  # zlib(one byte per PARENT fingerprint, then per PARENT_DIRS hash: 1 if seen)
WALK_DONE = b"Z"  # JSON: counters of the walk
DONE = b"z"  # a command without other output finished (AFTER, FETCH)
ERROR = b"!"  # JSON {error}: the helper failed
HEARTBEAT = b"."  # empty: busy on long work (hashing, reading), alive; ignored

BLOCK_SIZE = 1024 * 1024  # reads, DATA frames and the blocks of large files
ZEROS = b"\x02"  # the DATA/BLOCK flag of a run of zero bytes: u64 count, no bytes
IMAGE_PIECE = 4096  # the pieces of a changed image block a DELTA compares
MAX_IMAGE_BLOCKS = 1024 * 1024  # an image's blocks: a larger one is compared by larger blocks
MAX_IMAGE_BLOCK = 16 * 1024 * 1024
LARGE_FILE = 64 * 1024 * 1024  # from this size, block hashes are kept for in-place diffs
BLOCKS_PERSON = b"costor-blocks"  # a large file's digest is of its block hashes
DIR_PERSON = b"costor-dir"  # a directory's hash: of its path and its entries' names
HEARTBEAT_S = 30.0  # the interval between heartbeats when HELLO names none
CHANGED_WHILE_READ = "changed_while_read"  # [size, mtime_ns before, read, size, mtime_ns after]

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = "f", "d", "l", "p", "c", "b", "s"
IMAGE = "i"  # one of the client's images (HELLO's "images"), read as one stream


class ExcludeMatcher(object):
    """restic-like: a pattern with '/' matches the absolute path, any other the name.
    The same rule as costor.protocol.ExcludeMatcher."""

    def __init__(self, patterns):
        self.path_patterns = [p.rstrip("/") for p in patterns if "/" in p]
        self.name_patterns = [p for p in patterns if "/" not in p]
        self.active = bool(patterns)

    def excluded(self, path, name):
        return any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns) or any(
            fnmatch.fnmatchcase(path, p) for p in self.path_patterns
        )


class Channel(object):
    def __init__(self, stream_in, stream_out):
        self.stream_in = stream_in
        self.stream_out = stream_out
        self.interval = HEARTBEAT_S  # HELLO's heartbeat_s
        self.flushed = time.monotonic()
        self.writing = 0.0  # seconds in writes: waiting for the connection (WALK_DONE)

    def send(self, kind, payload=b""):
        started = time.perf_counter()
        self.stream_out.write(struct.pack(">cI", kind, len(payload)))
        self.stream_out.write(payload)
        self.writing += time.perf_counter() - started

    def send_json(self, kind, document):
        self.send(kind, json.dumps(document, separators=(",", ":")).encode())

    def flush(self):
        started = time.perf_counter()
        self.stream_out.flush()
        self.writing += time.perf_counter() - started
        self.flushed = time.monotonic()

    def alive(self):
        """Called during long work: a HEARTBEAT (and the frames written before it) when
        nothing was sent for ``interval`` seconds. (A frame too large for the buffer went
        out when it was written: a beat after it is one more than needed, harmless.)"""
        if time.monotonic() - self.flushed >= self.interval:
            self.send(HEARTBEAT)
            self.flush()

    def recv(self):
        header = self._read(5)
        kind, length = struct.unpack(">cI", header)
        return kind, self._read(length)

    def _read(self, count):
        parts = []
        while count:
            data = self.stream_in.read(count)
            if not data:
                raise EOFError("the server closed the connection")
            parts.append(data)
            count -= len(data)
        return b"".join(parts)


class Bloom(object):
    """Bits set at k positions taken from the digest itself (a keyed hash: uniform)."""

    def __init__(self, payload):
        self.k = struct.unpack(">I", payload[:4])[0]
        self.bits = payload[4:]
        self.size = len(self.bits) * 8

    def may_contain(self, digest):
        if not self.size:
            return False
        for i in range(self.k):
            position = int.from_bytes(digest[4 * i : 4 * i + 4], "big") % self.size
            if not self.bits[position >> 3] & (1 << (position & 7)):
                return False
        return True


class Helper(object):
    # An image's full scan for block hashes: threads, and the bytes each reads at a time
    # (tuning of this helper, not protocol).
    scan_threads = 4
    scan_run = 4 * 1024 * 1024
    # Before deflating a frame, its first compress_sample bytes are looked at: as many
    # distinct byte values as random bytes have (~251 of 256 in 1 KiB) say the data is
    # already compressed or encrypted, and it is sent as it is. Measured on bench/run.py's
    # tree, /usr/bin and /usr/share/doc/*.gz: compressible files had at most ~140 distinct
    # values in their first KiB, incompressible ones at least ~220. The look costs ~5 us,
    # where deflating a small random file only to send it raw cost ~120 us (zlib's set-up
    # alone is ~50 us a call): 0.7-1.0 s less of the host's CPU on that tree's first pull.
    compress_sample = 1024
    random_looking = 200  # distinct byte values in the sample from which it is not deflated

    def __init__(self, channel):
        self.channel = channel
        self.users = {}
        self.groups = {}
        self.unchanged = {}  # fingerprint of a parent file (path and stat data) -> its index
        self.known_paths = set()  # fingerprints of the parent's file paths
        self.parent_dirs = {}  # hash of a parent directory's path and names -> its index
        self.matched = bytearray()  # per parent fingerprint: 1 once seen unchanged
        self.matched_dirs = bytearray()  # per parent directory: 1 once seen with its names
        self.headers = []  # entries of directories not sent yet (sent before their first child)
        self.omitted = [0, 0, 0]  # files, bytes, directories left out since the last OMITTED
        self.large = {}  # path -> 1 MiB block hashes of the parent's version
        self.bloom = Bloom(struct.pack(">I", 0))
        self.after_hooks = []
        self.after_done = False
        self.links = {}  # (device, inode) -> first path of a file with several links
        self.walked = {}  # large changed file -> (stat fingerprint, block hashes) seen
        self.images = {}  # path -> its spec in HELLO's "images"
        self.counters = {
            "files": 0,
            "sent": 0,
            "unchanged": 0,
            "digests": 0,
            "errors": 0,
            "omitted": 0,
        }
        # Where the walk's time went on this host, sent with WALK_DONE ("seconds"): for
        # bench/ssh.py's breakdown; the server does not need it.
        self.reading = 0.0  # reading files and hashing what was read
        self.compressing = 0.0  # zlib

    # --- commands ----------------------------------------------------------------------

    def serve(self):
        kind, payload = self.channel.recv()
        if kind != HELLO:
            raise ValueError("expected HELLO")
        self.options = json.loads(payload.decode())
        self.key = bytes.fromhex(self.options["digest_key"])
        self.compress_level = int(self.options.get("compress_level", 1))
        self.after_hooks = list(self.options.get("hooks_after", []))
        self.channel.interval = float(self.options.get("heartbeat_s", HEARTBEAT_S))
        self.images = dict((spec["path"], spec) for spec in self.options.get("images", []))
        self.channel.send_json(
            HELLO_REPLY,
            {
                "python": ".".join(str(n) for n in sys.version_info[:3]),
                "uid": os.getuid(),
                "hostname": socket.gethostname(),
            },
        )
        failed = False
        for command in self.options.get("hooks_before", []):
            result = self.run_hook("before", command)
            self.channel.send_json(HOOK, result)
            if result["rc"] != 0:
                failed = True
                break
        self.channel.send(HOOK_FAILED if failed else READY)
        self.channel.flush()
        while True:
            kind, payload = self.channel.recv()
            if kind == PARENT:
                index = len(self.matched)
                for start in range(0, len(payload), 12):
                    self.known_paths.add(payload[start : start + 4])
                    self.unchanged[payload[start + 4 : start + 12]] = index
                    index += 1
                self.matched.extend(bytes(index - len(self.matched)))
            elif kind == PARENT_DIRS:
                index = len(self.matched_dirs)
                for start in range(0, len(payload), 8):
                    self.parent_dirs[payload[start : start + 8]] = index
                    index += 1
                self.matched_dirs.extend(bytes(index - len(self.matched_dirs)))
            elif kind == PARENT_LARGE:
                for path, blocks in json.loads(zlib.decompress(payload).decode()):
                    self.large[path] = base64.b64decode(blocks)
            elif kind == BLOOM:
                self.bloom = Bloom(payload)
            elif kind == WALK:
                self.walk()
            elif kind == FETCH:
                for path in json.loads(payload.decode()):
                    self.fetch(path)
                self.channel.send(DONE)
            elif kind == DELTA:
                for path, old_size, ranges in json.loads(payload.decode()):
                    if path in self.images:
                        self.image_delta(path, old_size, ranges)
                    else:
                        self.delta(path, old_size, ranges)
                self.channel.send(DONE)
            elif kind == AFTER:
                self.run_after_hooks()
                self.channel.send(DONE)
            elif kind == QUIT:
                break
            else:
                raise ValueError("unknown command %r" % kind)
            self.channel.flush()

    def run_after_hooks(self):
        if self.after_done:
            return
        self.after_done = True
        for command in self.after_hooks:
            self.channel.send_json(HOOK, self.run_hook("after", command))

    def run_hook(self, phase, command):
        timeout = float(self.options.get("hook_timeout", 300))
        started = time.time()
        try:
            # A session of its own: on timeout the whole group is killed, children
            # too (killing only the shell leaves them holding the pipes open).
            process = subprocess.Popen(
                command,
                shell=True,
                env=dict(os.environ, **self.options.get("hooks_env", {})),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                out, err = process.communicate(timeout=timeout)
                rc = process.returncode
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except OSError:
                    process.kill()
                out, err = process.communicate()
                rc, err = -9, err + ("\ntimed out after %gs" % timeout).encode()
        except OSError as error:
            rc, out, err = 127, b"", str(error).encode()
        return {
            "phase": phase,
            "command": command,
            "rc": rc,
            "stdout": out[-4096:].decode("utf-8", "replace"),
            "stderr": err[-4096:].decode("utf-8", "replace"),
            "duration_s": round(time.time() - started, 3),
        }

    # --- walking -------------------------------------------------------------------------

    def walk(self):
        started = time.perf_counter()
        self.matcher = ExcludeMatcher(self.options.get("exclude", []))
        self.one_file_system = bool(self.options.get("one_file_system"))
        self.batch = []
        self.batch_bytes = 0
        spec = {}  # type: dict
        # The paths, then the images: an image inside a path is met by that path's walk
        # (add sends it as an image); one outside them is a leaf of its own.
        for path in list(self.options["paths"]) + list(self.images):
            parts = [p for p in path.split("/") if p]
            level = spec
            for part in parts[:-1]:
                level = level.setdefault(part, {})
                if level is True:
                    break
            else:
                if parts and level.get(parts[-1]) is not True:
                    level[parts[-1]] = True
        root = os.lstat("/")
        if self.options["paths"] == ["/"]:
            header = self.entry("/", root, "")
            self.headers.append(header)
            self.walk_dir("/", root.st_dev, header)
            self.open_headers()
        else:
            self.emit("/", root, "")
            self.walk_virtual("/", spec)
        self.report_omitted()
        self.flush_entries()
        self.channel.send(MATCHED, zlib.compress(bytes(self.matched + self.matched_dirs)))
        seconds = {
            "walk": round(time.perf_counter() - started, 4),
            "read_hash": round(self.reading, 4),
            "compress": round(self.compressing, 4),
            "write": round(self.channel.writing, 4),
        }
        self.channel.send_json(WALK_DONE, dict(self.counters, seconds=seconds))

    def walk_virtual(self, path, spec):
        for name in sorted(spec, key=os.fsencode):
            child = os.path.join(path, name)
            try:
                st = os.lstat(child)
            except OSError as error:
                self.emit_error(child, "cannot stat: %s" % error.strerror)
                continue
            sub = spec[name]
            if child in self.images and sub is True:
                self.add_image(child)
            elif sub is True:
                if not self.matcher.excluded(child, name):
                    self.add(child, st, st.st_dev)
            elif stat.S_ISDIR(st.st_mode):
                self.emit(child, st, "")
                self.walk_virtual(child, sub)
            else:
                self.emit_error(child, "is not a directory")

    def walk_dir(self, path, root_device, header):
        """The entries of a directory whose own entry is ``header`` (not sent yet).
        Sparse when its names are the parent's: the header says so, and unchanged
        entries are left out (see the top of this file)."""
        try:
            names = sorted(os.listdir(os.fsencode(path)))
        except OSError as error:
            self.emit_error(path, "cannot list directory: %s" % error.strerror)
            return
        # The loop below runs once per entry of the host's tree: kept lean (names bound
        # locally, no os.path.join, the matcher skipped when there are no patterns).
        prefix = path if path.endswith("/") else path + "/"
        excluded = self.matcher.excluded if self.matcher.active else None
        fsdecode, lstat = os.fsdecode, os.lstat
        children = []  # type: list
        errors = False
        for raw in names:
            name = fsdecode(raw)
            child = prefix + name
            if excluded is not None and excluded(child, name):
                continue
            try:
                children.append((raw, child, lstat(child)))
            except OSError as error:
                children.append((raw, child, error))
                errors = True
        sparse = False
        if self.parent_dirs:
            if errors:
                listed = b"\0".join(r for r, _c, st in children if not isinstance(st, OSError))
            else:
                listed = b"\0".join(r for r, _c, _s in children)
            key = path.encode("utf-8", "surrogateescape") + b"\0" + listed
            index = self.parent_dirs.get(self.dir_hash(key))
            if index is not None:
                sparse = True
                self.matched_dirs[index] = 1
                if len(header) == 1:
                    header.append("sparse")
                else:
                    header[16] = "sparse"
        add = self.add
        for _raw, child, st in children:
            if errors and isinstance(st, OSError):
                self.emit_error(child, "cannot stat: %s" % st.strerror)
            else:
                add(child, st, root_device, sparse)

    def add(self, path, st, root_device, sparse=False):
        """One entry; in a sparse directory, left out if unchanged."""
        if self.images and path in self.images:
            self.add_image(path)
            return
        if sparse and st.st_nlink == 1 and stat.S_ISREG(st.st_mode):
            # The common case of an incremental walk, first and lean: an unchanged file
            # with one name, in a directory walked sparse, is left out (and counted when
            # the omissions are reported).
            index = self.unchanged.get(self.fingerprint(_stat_key(path, st)))
            if index is not None:
                self.matched[index] = 1
                omitted = self.omitted
                omitted[0] += 1
                omitted[1] += st.st_size
                if omitted[0] + omitted[2] >= 5000:  # progress for the server, now and then
                    self.report_omitted()
                return
        if stat.S_ISDIR(st.st_mode):
            same = self.seen(_stat_key(path, st))
            # Its own metadata unchanged: its path alone; its entries may have changed.
            header = [path] if same else self.entry(path, st, "")
            if self.one_file_system and st.st_dev != root_device:
                self.open_headers()
                self.push(header)
                below = self.images_below(path)
                if below:  # an image on another file system (/dev) is still read
                    self.walk_virtual(path, below)
                return
            self.headers.append(header)
            self.walk_dir(path, root_device, header)
            if self.headers and self.headers[-1] is header:  # nothing below it was sent
                self.headers.pop()
                if sparse and same and len(header) == 2:
                    self.omitted[2] += 1
                else:
                    self.open_headers()
                    self.push(header)
            return
        if not stat.S_ISREG(st.st_mode):
            self.emit(path, st, "")
            return
        self.counters["files"] += 1
        if st.st_nlink > 1:
            first = self.links.setdefault((st.st_dev, st.st_ino), path)
            if first != path:  # its content is the first link's, sent (or not) once
                self.emit(path, st, "link:" + first)
                return
        if self.seen(_stat_key(path, st)):
            self.counters["unchanged"] += 1
            self.compact(path)
            return
        path_key = self.fingerprint(path.encode("utf-8", "surrogateescape"))
        had_parent = path_key[:4] in self.known_paths
        if not had_parent and not self.bloom.size:
            # New, and the pool has no digest to compare with: send at once.
            self.emit(path, st, "data", last=True)
            self.send_content(path, st, want_blocks=st.st_size >= LARGE_FILE)
            return
        try:
            digest, blocks, changed = self.digest(path, st, want_blocks=st.st_size >= LARGE_FILE)
        except OSError as error:
            self.emit_error(path, "cannot read: %s" % error.strerror)
            return
        # A digest of a file that changed while it was hashed says so: if the server
        # takes the content it names, that copy is what was read (otherwise the content
        # is read again, and that read says for itself).
        unsteady = None if changed is None else {CHANGED_WHILE_READ: changed}
        if had_parent:
            self.counters["digests"] += 1
            extra = {"digest": digest.hex()}
            if blocks is not None:
                extra["blocks"] = base64.b64encode(b"".join(blocks)).decode()
                if changed is None:  # else these hashes are not the file's: read it again
                    self.walked[path] = (self.fingerprint(_stat_key(path, st)), blocks)
                known = self.large.get(path, b"")
                extra["changed_blocks"] = [
                    i for i, block in enumerate(blocks) if known[16 * i : 16 * i + 16] != block
                ]
            extra.update(unsteady or {})
            self.emit(path, st, "changed", extra=extra)
            return
        if self.bloom.may_contain(digest):
            self.counters["digests"] += 1
            self.emit(path, st, "digest:" + digest.hex(), extra=unsteady)
            return
        self.emit(path, st, "data", last=True)
        self.send_content(path, st, want_blocks=st.st_size >= LARGE_FILE)

    def seen(self, key):
        """Whether this path and stat data are the parent's (noted for MATCHED)."""
        index = self.unchanged.get(self.fingerprint(key))
        if index is None:
            return False
        self.matched[index] = 1
        return True

    def report_omitted(self):
        """Send the count of what was left out since the last report (files, their bytes,
        directories)."""
        omitted = self.omitted
        if any(omitted):
            counters = self.counters
            counters["files"] += omitted[0]
            counters["unchanged"] += omitted[0]
            counters["omitted"] += omitted[0] + omitted[2]
            self.flush_entries()
            self.channel.send_json(OMITTED, omitted)
            self.omitted = [0, 0, 0]
            self.channel.alive()  # a long sparse walk may send nothing else for a while

    def open_headers(self):
        """Send the entries of the directories above what is sent next."""
        if self.headers:
            headers, self.headers = self.headers, []
            for header in headers:
                self.push(header)

    def push(self, item):
        self.batch.append(item)
        self.batch_bytes += 8 + len(item[0]) if len(item) <= 2 else 80 + len(item[0])
        if self.batch_bytes >= 64 * 1024:
            self.flush_entries()

    def compact(self, path):
        """An entry unchanged since the parent snapshot: its path alone (the server
        copies the parent's entry)."""
        self.open_headers()
        self.push([path])

    def dir_hash(self, data):
        return hashlib.blake2b(data, key=self.key, digest_size=8, person=DIR_PERSON).digest()

    def fingerprint(self, data):
        return hashlib.blake2b(data, key=self.key, digest_size=8).digest()

    # --- file content --------------------------------------------------------------------

    def digest(self, path, st, want_blocks=False):
        """The file's digest (costor/protocol.py ``ContentDigest``): of the whole file,
        or of a large file's 1 MiB block hashes, which are returned too; and whether it
        changed while it was read (``_changed_while_read``; ``st``: its lstat before)."""
        whole = None if want_blocks else hashlib.blake2b(key=self.key, digest_size=32)
        blocks = []  # type: list
        read = 0
        with open(path, "rb", buffering=0) as handle:
            for data in self.hashed_reads(handle, whole, blocks):
                read += len(data)
            changed = _changed_while_read(st, read, handle)
        if whole is None:
            return self.blocks_digest(blocks), blocks, changed
        return whole.digest(), None, changed

    def hashed_reads(self, handle, whole, blocks):
        """The file's 1 MiB reads, each added to the whole-file digest or, without one,
        to the block hashes, as read; a heartbeat between them when due."""
        alive = self.channel.alive
        clock = time.perf_counter
        while True:
            started = clock()
            data = handle.read(BLOCK_SIZE)
            if not data:
                self.reading += clock() - started
                return
            if whole is None:
                blocks.append(self.block_hash(data))
            else:
                whole.update(data)
            self.reading += clock() - started
            alive()
            yield data

    def block_hash(self, data):
        return hashlib.blake2b(data, key=self.key, digest_size=16).digest()

    def blocks_digest(self, blocks):
        return hashlib.blake2b(
            b"".join(blocks), key=self.key, digest_size=32, person=BLOCKS_PERSON
        ).digest()

    def end_document(self, size, whole, blocks, changed=None):
        if whole is not None:
            end = {"size": size, "digest": whole.hexdigest(), "blocks": None}
        else:
            end = {
                "size": size,
                "digest": self.blocks_digest(blocks).hex(),
                "blocks": base64.b64encode(b"".join(blocks)).decode(),
            }
        if changed is not None:
            end[CHANGED_WHILE_READ] = changed
        return end

    def send_content(self, path, st, want_blocks):
        """The whole file in DATA frames, then END with its digest (and block hashes),
        and whether it changed while it was read (``st``: its lstat before)."""
        whole = None if want_blocks else hashlib.blake2b(key=self.key, digest_size=32)
        blocks = []  # type: list
        size = 0
        compress = self.compress_level > 0
        try:
            handle = open(path, "rb", buffering=0)
        except OSError as error:
            self.channel.send_json(END, {"error": "cannot read: %s" % error.strerror})
            return
        try:
            for data in self.hashed_reads(handle, whole, blocks):
                size += len(data)
                compress = self.send_data(DATA, b"", data, compress)
            changed = _changed_while_read(st, size, handle)
        except OSError as error:
            self.channel.send_json(END, {"error": "read error: %s" % error.strerror})
            return
        finally:
            handle.close()
        self.counters["sent"] += 1
        self.channel.send_json(END, self.end_document(size, whole, blocks, changed))

    def fetch(self, path):
        """A file the server needs whole: its entry again (stat now), then its content."""
        if path in self.images:
            self.fetch_image(path)
            return
        try:
            st = os.lstat(path)
        except OSError as error:
            self.channel.send_json(
                START, self.error_entry(path, "cannot stat: %s" % error.strerror)
            )
            return
        self.channel.send_json(START, self.entry(path, st, "data"))
        self.send_content(path, st, want_blocks=st.st_size >= LARGE_FILE)

    def delta(self, path, old_size, ranges):
        """A changed file: only the blocks that differ from the old version's hashes (the
        server computed them from its copy), and what lies beyond its old end. The whole
        file is read, for the digest that proves the server's reconstruction."""
        try:
            st = os.lstat(path)
            handle = open(path, "rb", buffering=0)
        except OSError as error:
            self.channel.send_json(
                START, self.error_entry(path, "cannot read: %s" % error.strerror)
            )
            return
        self.channel.send_json(START, self.entry(path, st, "delta"))
        large = st.st_size >= LARGE_FILE
        whole = None if large else hashlib.blake2b(key=self.key, digest_size=32)
        blocks = []  # type: list
        compress = self.compress_level > 0
        wanted = sorted((int(o), int(n), int(b), base64.b64decode(h)) for o, n, b, h in ranges)
        seen = self.walked.pop(path, None)
        try:
            if large and seen is not None and seen[0] == self.fingerprint(_stat_key(path, st)):
                # Unchanged since the walk read it whole: its block hashes stand, and only
                # the wanted blocks and what lies past the old end need reading.
                blocks = list(seen[1])
                indexes = set(o // BLOCK_SIZE for o, _n, _b, _h in wanted)
                indexes.update(range(old_size // BLOCK_SIZE, -(-st.st_size // BLOCK_SIZE)))
                for index in sorted(indexes):
                    handle.seek(index * BLOCK_SIZE)
                    data = handle.read(BLOCK_SIZE)
                    blocks[index] = self.block_hash(data)  # as sent, if it changed again
                    compress = self.send_changed(
                        index * BLOCK_SIZE, data, old_size, wanted, compress
                    )
                    self.channel.alive()
                position = st.st_size
            else:
                position = 0
                for data in self.hashed_reads(handle, whole, blocks):
                    compress = self.send_changed(position, data, old_size, wanted, compress)
                    position += len(data)
            changed = _changed_while_read(st, position, handle)
        except OSError as error:
            self.channel.send_json(END, {"error": "read error: %s" % error.strerror})
            return
        finally:
            handle.close()
        self.counters["sent"] += 1
        self.channel.send_json(END, self.end_document(position, whole, blocks, changed))

    def send_changed(self, position, data, old_size, wanted, compress):
        """Of ``data`` (the file's bytes at ``position``; reads are 1 MiB and the ranges
        1 MiB-aligned, so no sub-block spans two reads), send what the server lacks:
        sub-blocks of the wanted ranges whose hash differs, and anything past the old end.
        Adjacent pieces go in one frame."""
        pieces = []
        end = position + len(data)
        for offset, length, block, hashes in wanted:
            low, high = max(offset, position), min(offset + length, end, old_size)
            cursor = low
            while cursor < high:
                index = (cursor - offset) // block
                piece_end = min(offset + (index + 1) * block, high)
                piece = data[cursor - position : piece_end - position]
                if (
                    hashes[8 * index : 8 * index + 8]
                    != hashlib.blake2b(piece, key=self.key, digest_size=8).digest()
                ):
                    pieces.append((cursor, piece_end))
                cursor = piece_end
        if end > old_size:
            pieces.append((max(position, old_size), end))
        merged = []  # type: list
        for start, stop in sorted(pieces):
            if merged and merged[-1][1] == start:
                merged[-1][1] = stop
            else:
                merged.append([start, stop])
        for start, stop in merged:
            chunk = data[start - position : stop - position]
            compress = self.send_data(BLOCK, struct.pack(">Q", start), chunk, compress)
        return compress

    def send_data(self, kind, prefix, data, compress):
        """One frame of file bytes, zlib-compressed unless that does not pay; returns
        whether to keep trying compression for this file (not after a block that did
        not shrink, or that looked random: already-compressed data stays incompressible)."""
        sample = self.compress_sample
        if compress and len(data) >= sample and len(set(data[:sample])) >= self.random_looking:
            compress = False
        if compress:
            started = time.perf_counter()
            packed = zlib.compress(data, self.compress_level)
            self.compressing += time.perf_counter() - started
            if len(packed) < len(data) * 0.95:
                self.channel.send(kind, prefix + b"\x01" + packed)
                return True
        self.channel.send(kind, prefix + b"\x00" + data)
        return False

    # --- images --------------------------------------------------------------------------
    #
    # An image (HELLO's "images": a block device or an image file) is one stream of
    # blocks of its spec's block_size, hashed like a large file's 1 MiB blocks. With no
    # usable parent it is sent whole (state "data"); else its block hashes are compared
    # with the parent's (PARENT_LARGE) and the server fetches the changed blocks as a
    # delta (state "changed"). Holes of an image file (SEEK_DATA/SEEK_HOLE) are not read
    # and, like all-zero blocks of a device, cross as ZEROS. With changes = "thin_delta"
    # only the chunks LVM's thin_delta names as changed since `previous` are read; the
    # other blocks' hashes are the parent's.

    def images_below(self, directory):
        """The images below ``directory``, as walk_virtual's spec (None: none)."""
        spec = {}  # type: dict
        prefix = directory.rstrip("/") + "/"
        for path in self.images:
            if path.startswith(prefix):
                level = spec
                parts = path[len(prefix) :].split("/")
                for part in parts[:-1]:
                    level = level.setdefault(part, {})
                level[parts[-1]] = True
        return spec or None

    def add_image(self, path):
        spec = self.images[path]
        try:
            st = os.stat(path)  # /dev/VG/LV is a link to the device
            if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                self.emit_error(path, "is not a block device or a regular file")
                return
            if stat.S_ISREG(st.st_mode) and spec.get("stat") == [
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
            ]:  # an image file unchanged since the parent snapshot (the rule for files)
                self.counters["files"] += 1
                self.counters["unchanged"] += 1
                self.compact(path)
                return
            handle = open(path, "rb", buffering=0)
        except OSError as error:
            self.emit_error(path, "cannot read: %s" % error.strerror)
            return
        self.counters["files"] += 1
        try:
            size = _image_size(handle, st)
            block = _image_block(int(spec["block_size"]), size)
            spec["block"] = block  # for its DELTA
            facts = {
                "block_size": block,
                "source": "blockdev" if stat.S_ISBLK(st.st_mode) else "file",
            }
            parent = spec.get("parent") or None
            known = self.large.get(path)
            if parent is None or known is None or int(parent.get("block_size", 0)) != block:
                known = None
            extents = _data_extents(handle, size) if stat.S_ISREG(st.st_mode) else None
            changed = None
            if spec.get("changes") == "thin_delta":
                try:
                    changed, facts["source_id"] = self.thin_changes(spec, parent, size, known)
                except ThinFallback as fallback:
                    facts["full_read"] = str(fallback)
                    facts["source_id"] = fallback.source_id
            if known is None:
                facts["method"] = "full"
                facts.setdefault("full_read", "no parent to compare with")
                facts["bytes_read"] = _extent_bytes(extents, 0, size)
                self.emit_image(path, st, size, "data", {"image": facts})
                self.send_image(handle, size, block, extents, st)
                return
            blocks, read = self.image_hashes(handle, size, block, extents, changed, known)
            facts["method"] = "blocks" if changed is None else "thin_delta"
            facts["bytes_read"] = read
            self.walked[path] = (self.fingerprint(_stat_key(path, st)), blocks)
            extra = {
                "digest": self.blocks_digest(blocks).hex(),
                "changed_blocks": [
                    i for i, h in enumerate(blocks) if known[16 * i : 16 * i + 16] != h
                ],
                "image": facts,
            }
            self.emit_image(path, st, size, "changed", extra)
        except OSError as error:
            self.emit_error(path, "read error: %s" % error.strerror)
        finally:
            handle.close()

    def image_entry(self, path, st, size, state, extra=None):
        """An image's entry: kind IMAGE and its byte length (a device's stat says 0)."""
        entry = self.entry(path, st, state, extra)
        entry[1], entry[7] = IMAGE, size
        return entry

    def start_image(self, path, state):
        """Open an image the server asked for (FETCH or DELTA) and send its START:
        (handle, stat, size), or None when it cannot be read (its START says why)."""
        try:
            st = os.stat(path)
            handle = open(path, "rb", buffering=0)
        except OSError as error:
            self.channel.send_json(
                START, self.error_entry(path, "cannot read: %s" % error.strerror)
            )
            return None
        try:
            size = _image_size(handle, st)
        except OSError as error:
            handle.close()
            self.channel.send_json(
                START, self.error_entry(path, "cannot read: %s" % error.strerror)
            )
            return None
        self.channel.send_json(START, self.image_entry(path, st, size, state))
        return handle, st, size

    def emit_image(self, path, st, size, state, extra):
        entry = self.image_entry(path, st, size, state, extra)
        self.open_headers()
        self.batch.append(entry)
        self.flush_entries()

    def image_blocks(self, handle, size, block, extents, wanted=None):
        """(index, bytes or None, length, bytes read) of the image's blocks (``wanted``:
        only those indexes); None: all zeros, found so without reading (a hole) or by
        reading."""
        indexes = range(-(-size // block)) if wanted is None else wanted
        zeros = bytes(block)
        for index in indexes:
            offset = index * block
            length = min(block, size - offset)
            if extents is not None and not _extent_bytes(extents, offset, offset + length):
                yield index, None, length, 0
                continue
            handle.seek(offset)
            data = handle.read(length)
            if len(data) != length:
                raise OSError(5, "the image ended %d bytes early" % (size - offset - len(data)))
            self.channel.alive()
            zero = data[:1] == b"\0" and data == zeros[:length]
            yield index, (None if zero else data), length, length

    def zero_hash(self, length):
        cache = self.__dict__.setdefault("zero_hashes", {})
        if length not in cache:
            cache[length] = self.block_hash(bytes(length))
        return cache[length]

    def image_hashes(self, handle, size, block, extents, changed, known):
        """The image's block hashes and the bytes read for them: every block, or with
        ``changed`` (thin_delta's block indexes) those alone, the others the parent's."""
        count = -(-size // block)
        if changed is None:
            return self.scan_hashes(handle.fileno(), size, block, extents)
        blocks = [known[16 * i : 16 * i + 16] for i in range(count)]
        read = 0
        for index, data, length, got in self.image_blocks(
            handle, size, block, extents, sorted(changed)
        ):
            blocks[index] = self.zero_hash(length) if data is None else self.block_hash(data)
            read += got
        return blocks, read

    def scan_hashes(self, fd, size, block, extents):
        """Every block's hash, read and hashed by a few threads in runs of ``scan_run``
        bytes (os.pread and hashlib release the GIL, so a full scan uses the host's
        cores: 512 MiB in page cache took 0.81 s in one thread, 0.60 s in two, on a
        2-core machine with other work). The results come back in order to this
        thread, which says it is alive between runs."""
        import concurrent.futures  # here: only an image's full scan needs threads

        per_run = max(1, self.scan_run // block)
        count = -(-size // block)
        zero_hash = self.zero_hash(block)
        zeros = bytes(block)

        def run(first):
            hashes, read = [], 0
            for index in range(first, min(first + per_run, count)):
                offset = index * block
                length = min(block, size - offset)
                if extents is not None and not _extent_bytes(extents, offset, offset + length):
                    hashes.append(self.zero_hash(length) if length != block else zero_hash)
                    continue
                data = os.pread(fd, length, offset)
                if len(data) != length:
                    raise OSError(5, "the image ended %d bytes early" % (size - offset - len(data)))
                read += length
                if data[:1] == b"\0" and data == zeros[:length]:
                    hashes.append(self.zero_hash(length) if length != block else zero_hash)
                else:
                    hashes.append(self.block_hash(data))
            return hashes, read

        blocks, read = [], 0
        workers = max(1, min(self.scan_threads, os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            starts = list(range(0, count, per_run))
            ahead = 2 * workers  # runs queued: bounded memory (ahead x scan_run at most)
            pending = [pool.submit(run, first) for first in starts[:ahead]]
            for first in starts[ahead:] + [None] * len(pending):
                hashes, got = pending.pop(0).result()
                blocks.extend(hashes)
                read += got
                self.channel.alive()
                if first is not None:
                    pending.append(pool.submit(run, first))
        return blocks, read

    def send_image(self, handle, size, block, extents, st):
        """The whole image in DATA frames (zero runs as ZEROS), then END; for an image
        file, whether it changed while it was read (a device's times say nothing)."""
        blocks = []
        zeros = 0
        compress = self.compress_level > 0
        for index, data, length, _got in self.image_blocks(handle, size, block, extents):
            if data is None:
                blocks.append(self.zero_hash(length))
                zeros += length
                if zeros >= 8 * 1024 * 1024:
                    self.channel.send(DATA, ZEROS + struct.pack(">Q", zeros))
                    zeros = 0
                continue
            if zeros:
                self.channel.send(DATA, ZEROS + struct.pack(">Q", zeros))
                zeros = 0
            blocks.append(self.block_hash(data))
            if not index % 64:  # an image's regions differ: try compressing again now and then
                compress = self.compress_level > 0
            compress = self.send_data(DATA, b"", data, compress)
        if zeros:
            self.channel.send(DATA, ZEROS + struct.pack(">Q", zeros))
        self.counters["sent"] += 1
        changed = _changed_while_read(st, size, handle) if stat.S_ISREG(st.st_mode) else None
        self.channel.send_json(END, self.end_document(size, None, blocks, changed))

    def fetch_image(self, path):
        """An image the server needs whole after all (its copy of the parent is gone, or
        a delta did not rebuild it): its entry, then every block (holes as ZEROS)."""
        spec = self.images[path]
        started = self.start_image(path, "data")
        if started is None:
            return
        handle, st, size = started
        try:
            block = int(spec.get("block", spec["block_size"]))
            extents = _data_extents(handle, size) if stat.S_ISREG(st.st_mode) else None
            self.send_image(handle, size, block, extents, st)
        except OSError as error:
            self.channel.send_json(END, {"error": "read error: %s" % error.strerror})
        finally:
            handle.close()

    def image_delta(self, path, old_size, ranges):
        """The changed blocks of an image the walk compared (DELTA): of each wanted
        block, the pieces whose hash differs from the parent's."""
        spec = self.images[path]
        block = int(spec.get("block", spec["block_size"]))
        started = self.start_image(path, "delta")
        if started is None:
            return
        handle, st, size = started
        try:
            seen = self.walked.pop(path, None)
            if seen is None or seen[0] != self.fingerprint(_stat_key(path, st)):
                self.channel.send_json(
                    END, {"error": _in_use("changed since the walk compared it")}
                )
                return
            blocks = list(seen[1])
            if len(blocks) != -(-size // block):
                self.channel.send_json(END, {"error": "its size changed since the walk"})
                return
            compress = self.compress_level > 0
            wanted = sorted((int(o), int(n), int(b), base64.b64decode(h)) for o, n, b, h in ranges)
            indexes = set(o // block for o, _n, _b, _h in wanted)
            indexes.update(range(old_size // block, len(blocks)))
            for index in sorted(indexes):
                handle.seek(index * block)
                data = handle.read(min(block, size - index * block))
                if self.block_hash(data) != blocks[index]:
                    self.channel.send_json(END, {"error": _in_use("changed while it was read")})
                    return
                compress = self.send_changed(index * block, data, old_size, wanted, compress)
                self.channel.alive()
        except OSError as error:
            self.channel.send_json(END, {"error": "read error: %s" % error.strerror})
            return
        finally:
            handle.close()
        self.counters["sent"] += 1
        self.channel.send_json(END, self.end_document(size, None, blocks))

    def thin_changes(self, spec, parent, size, known):
        """(indexes of the blocks thin_delta says changed since ``previous``, the id of
        what is read now), or ThinFallback with the reason a full compare is needed."""
        block = spec["block"]
        current = _thin_lv(spec["path"])
        source_id = "%s:%s" % (current["lv_uuid"], current["thin_id"])
        if parent is None or known is None:
            raise ThinFallback("first backup (no parent image to compare with)", source_id)
        previous = _thin_lv(spec["previous"])
        previous_id = "%s:%s" % (previous["lv_uuid"], previous["thin_id"])
        if previous_id != parent.get("source_id"):
            raise ThinFallback(
                "previous %s is %s, not what the parent snapshot read (%s)"
                % (spec["previous"], previous_id, parent.get("source_id")),
                source_id,
            )
        if int(parent.get("size", -1)) != size:
            raise ThinFallback("the image's size changed since the parent snapshot", source_id)
        if (previous["vg_name"], previous["pool_lv"]) != (current["vg_name"], current["pool_lv"]):
            raise ThinFallback("previous is in another thin pool", source_id)
        try:
            ranges, chunk = _thin_delta(current["vg_name"], current["pool_lv"], previous, current)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            raise ThinFallback("thin_delta failed: %s" % error, source_id) from None
        changed = set()  # type: set
        for begin, length in ranges:
            start, end = begin * chunk, min((begin + length) * chunk, size)
            if start < end:
                changed.update(range(start // block, -(-end // block)))
        return changed, source_id

    # --- entries -------------------------------------------------------------------------

    def emit(self, path, st, state, last=False, extra=None):
        self.open_headers()
        self.batch.append(self.entry(path, st, state, extra))
        self.batch_bytes += 80 + len(path)
        # An entry whose content follows ends its batch, so the server reads the entries
        # and then that content, in the order they were written.
        if last or self.batch_bytes >= 64 * 1024:
            self.flush_entries()

    def entry(self, path, st, state, extra=None):
        mode = st.st_mode
        entry = [
            path,
            _kind(mode),
            stat.S_IMODE(mode),
            st.st_uid,
            st.st_gid,
            self.name(self.users, pwd.getpwuid, st.st_uid),
            self.name(self.groups, grp.getgrgid, st.st_gid),
            st.st_size if stat.S_ISREG(mode) else 0,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_dev,
            st.st_nlink,
            st.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0,
            None,
            self.xattrs(path),
            state,
        ]
        if stat.S_ISLNK(mode):
            try:
                entry[14] = os.readlink(path)
            except OSError as error:
                self.counters["errors"] += 1
                entry[14] = ""
                entry[16] = "warning:cannot read link: %s" % error.strerror
        if extra is not None:
            entry.append(extra)
        return entry

    def emit_error(self, path, message):
        self.open_headers()
        self.counters["errors"] += 1
        self.batch.append(self.error_entry(path, message))

    def error_entry(self, path, message):
        return [path, "", 0, 0, 0, "", "", 0, 0, 0, 0, 0, 0, 0, None, None, "error:" + message]

    def flush_entries(self):
        if self.batch:
            payload = json.dumps(self.batch, separators=(",", ":")).encode(
                "utf-8", "surrogateescape"
            )
            self.channel.send(ENTRIES, zlib.compress(payload, 6))
            self.batch = []
            self.batch_bytes = 0
            self.channel.alive()

    def name(self, cache, lookup, number):
        if number not in cache:
            try:
                cache[number] = lookup(number)[0]
            except KeyError:
                cache[number] = ""
        return cache[number]

    def xattrs(self, path):
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except (OSError, AttributeError):
            return None
        values = {}
        for attribute in names:
            try:
                value = os.getxattr(path, attribute, follow_symlinks=False)
            except OSError:
                continue
            values[attribute] = base64.b64encode(value).decode()
        return values or None


def _changed_while_read(st, read, handle):
    """[size, mtime_ns before, bytes read, size, mtime_ns after] of a file that changed
    while it was read (``st``: its lstat before; after: fstat on the open file), else
    None. The rule of costor/store/backup/common.py ``changed_while_read``."""
    after = os.fstat(handle.fileno())
    if read == st.st_size == after.st_size and st.st_mtime_ns == after.st_mtime_ns:
        return None
    return [st.st_size, st.st_mtime_ns, read, after.st_size, after.st_mtime_ns]


def _in_use(what):
    return what + " (an image in use: back it up from a snapshot, see the consistency profiles)"


class ThinFallback(Exception):
    """thin_delta cannot say what changed (the message says why): compare every block."""

    def __init__(self, reason, source_id=None):
        Exception.__init__(self, reason)
        self.source_id = source_id


def _image_block(block, size):
    """The block size asked for, doubled while the image would have more than
    MAX_IMAGE_BLOCKS blocks (their hashes cross in one frame)."""
    while -(-size // block) > MAX_IMAGE_BLOCKS and block < MAX_IMAGE_BLOCK:
        block *= 2
    return block


def _image_size(handle, st):
    """An image file's size (stat), a block device's (its end, by seeking)."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    return size


def _data_extents(handle, size):
    """The [start, end) ranges of an image file that hold data (SEEK_DATA/SEEK_HOLE);
    None where the file system cannot say (then everything is read)."""
    if not hasattr(os, "SEEK_DATA"):
        return None
    extents = []
    fd = handle.fileno()
    position = 0
    try:
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as error:
                if error.errno == 6:  # ENXIO: no data past position
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end))
            position = end
    except OSError:
        return None
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return extents


def _extent_bytes(extents, start, end):
    """How many bytes of [start, end) hold data (all of them without extents)."""
    if extents is None:
        return end - start
    total = 0
    index = max(bisect.bisect_right(extents, (start,)) - 1, 0)
    while index < len(extents) and extents[index][0] < end:
        low, high = extents[index]
        if high > start:
            total += min(high, end) - max(low, start)
        index += 1
    return total


def _run(command):
    """A system tool's output (lvs, dmsetup, thin_delta: in /usr/sbin, which a user's
    PATH may lack); OSError with its stderr if it fails."""
    found = shutil.which(command[0], path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise OSError("%s is not installed" % command[0])
    result = subprocess.run(
        [found] + list(command[1:]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=300,
    )
    if result.returncode != 0:
        raise OSError(
            "%s exited with %d: %s"
            % (command[0], result.returncode, result.stderr.decode("utf-8", "replace").strip())
        )
    return result.stdout.decode("utf-8", "replace")


def _thin_lv(path):
    """uuid, thin id, pool and volume group of the thin LV at ``path`` (lvs)."""
    try:
        out = _run(
            [
                "lvs",
                "--noheadings",
                "--separator",
                "|",
                "-o",
                "lv_uuid,thin_id,pool_lv,vg_name,segtype",
                path,
            ]
        )
    except OSError as error:
        raise ThinFallback("lvs cannot say what %s is: %s" % (path, error)) from None
    fields = [f.strip() for f in out.strip().split("|")]
    if len(fields) != 5 or fields[4] != "thin" or not fields[1]:
        raise ThinFallback("%s is not a thin LV (lvs: %r)" % (path, out.strip()[:200]))
    return {"lv_uuid": fields[0], "thin_id": fields[1], "pool_lv": fields[2], "vg_name": fields[3]}


def _thin_delta(vg, pool, previous, current):
    """The ranges (begin, length, in pool chunks) where ``current`` differs from
    ``previous`` (thin_delta on a reserved metadata snapshot, released whatever
    happens), and the chunk size in bytes."""
    name = "%s-%s" % (vg.replace("-", "--"), pool.replace("-", "--"))
    reserve = ["dmsetup", "message", name + "-tpool", "0", "reserve_metadata_snap"]
    release = ["dmsetup", "message", name + "-tpool", "0", "release_metadata_snap"]
    try:
        _run(reserve)
    except OSError:
        # A pool holds one metadata snapshot: one left by a helper killed before its
        # release would make every later backup read in full. Released, then reserved
        # again (a second failure is the fallback's, with its reason).
        _run(release)
        _run(reserve)
    try:
        out = _run(
            [
                "thin_delta",
                "-m",
                "--snap1",
                previous["thin_id"],
                "--snap2",
                current["thin_id"],
                "/dev/mapper/%s_tmeta" % name,
            ]
        )
    finally:
        _run(release)
    return _thin_ranges(out)


def _thin_ranges(out):
    """thin_delta's output read: the ranges (begin, length, in pool chunks) that differ
    (different, right_only, left_only: mapped only before reads zeros now), and the
    chunk size in bytes."""
    chunk = None
    ranges = []
    for line in out.splitlines():
        line = line.strip()
        values = {}
        for part in line.split()[1:]:
            if "=" in part:
                key, value = part.split("=", 1)
                values[key] = value.strip("/>").strip('"')
        if line.startswith("<superblock"):
            chunk = int(values["data_block_size"]) * 512
        elif line.startswith(("<different", "<right_only", "<left_only")):
            ranges.append((int(values["begin"]), int(values["length"])))
    if not chunk:
        raise ValueError("no data_block_size in its output")
    return ranges, chunk


def _stat_key(path, st):
    """What the parent fingerprint covers: the path and the stat data that any change of
    content or metadata alters (ctime changes with mode, owner and xattrs too)."""
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0  # a directory's size says nothing
    return (
        path.encode("utf-8", "surrogateescape")
        + b"\0"
        + struct.pack(">QQQQ", size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    )


def _kind(mode):
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    return SOCKET


def main():
    channel = Channel(sys.stdin.buffer, sys.stdout.buffer)
    helper = Helper(channel)
    try:
        helper.serve()
    except Exception as error:  # report, then run the after hooks whatever happened
        try:
            channel.send_json(ERROR, {"error": "%s: %s" % (type(error).__name__, error)})
            channel.flush()
        except Exception:
            pass
        try:
            helper.run_after_hooks()
            channel.flush()
        except Exception:
            pass
        sys.exit(1)
    finally:
        if not helper.after_done:
            try:
                helper.run_after_hooks()
                channel.flush()
            except Exception:
                pass


if __name__ == "__main__":
    main()
