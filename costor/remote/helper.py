# CoStor helper: runs on the host being backed up, for the length of one backup.
#
# It is sent over the SSH connection and executed from memory (nothing is written on the
# host): CoStor starts `python3 -c "exec(__import__('sys').stdin.buffer.readline())"`
# and the first line it sends loads this file. Standard library only, Python 3.6+, one
# file: the host needs nothing but a python3.
#
# Protocol: frames on stdin/stdout, each `kind (1 byte) | length (u32 big-endian) |
# payload`. The server speaks first (HELLO); from then on the helper answers one command
# at a time. A walk is one stream with no round trips: the server sends, before it, the
# stat data of the parent snapshot's files (and block hashes of large ones) and a Bloom
# filter of the whole-file digests already in the pool, so the helper itself decides
# which files are unchanged (nothing sent), which may already be in the pool (their
# digest is sent), and which are new (their content is sent, zlib-compressed), and for a
# large file changed in place which blocks changed (only those are sent).
#
# This module is also imported by the server (costor.remote) for the frame kinds and the
# exclude rule, which must be the same on both sides.

import base64
import fnmatch
import grp
import hashlib
import json
import os
import pwd
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib

VERSION = 1

# Server -> helper
HELLO = b"H"  # JSON: options, digest key, hooks
PARENT = b"P"  # zlib(JSON list): parent files [path, size, mtime_ns, ctime_ns, ino, blocks]
BLOOM = b"B"  # the Bloom filter of digests in the pool: u32 k | bits
WALK = b"W"  # walk the paths and stream entries
FETCH = b"F"  # JSON list of paths: send their content (digests the pool did not have)
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
START = b"S"  # JSON path: content of a FETCHed file follows
WALK_DONE = b"Z"  # JSON: counters of the walk
DONE = b"z"  # a command without other output finished (AFTER, FETCH)
ERROR = b"!"  # JSON {error}: the helper failed

BLOCK_SIZE = 1024 * 1024  # reads, DATA frames and the blocks of large files
LARGE_FILE = 64 * 1024 * 1024  # from this size, block hashes are kept for in-place diffs
SMALL_READ = 256 * 1024

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = "f", "d", "l", "p", "c", "b", "s"


class ExcludeMatcher(object):
    """restic-like: a pattern with '/' matches the absolute path, any other the name.
    The same rule as costor.store.archiver.ExcludeMatcher, on text."""

    def __init__(self, patterns):
        self.path_patterns = [p.rstrip("/") for p in patterns if "/" in p]
        self.name_patterns = [p for p in patterns if "/" not in p]

    def excluded(self, path, name):
        return any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns) or any(
            fnmatch.fnmatchcase(path, p) for p in self.path_patterns
        )


class Channel(object):
    def __init__(self, stream_in, stream_out):
        self.stream_in = stream_in
        self.stream_out = stream_out

    def send(self, kind, payload=b""):
        self.stream_out.write(struct.pack(">cI", kind, len(payload)))
        self.stream_out.write(payload)

    def send_json(self, kind, document):
        self.send(kind, json.dumps(document, separators=(",", ":")).encode())

    def flush(self):
        self.stream_out.flush()

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
    def __init__(self, channel):
        self.channel = channel
        self.users = {}
        self.groups = {}
        self.parent = {}
        self.bloom = Bloom(struct.pack(">I", 0))
        self.after_hooks = []
        self.after_done = False
        self.links = {}  # (device, inode) -> first path of a file with several links
        self.counters = {"files": 0, "sent": 0, "unchanged": 0, "digests": 0, "errors": 0}

    # --- commands ----------------------------------------------------------------------

    def serve(self):
        kind, payload = self.channel.recv()
        if kind != HELLO:
            raise ValueError("expected HELLO")
        self.options = json.loads(payload.decode())
        self.key = bytes.fromhex(self.options["digest_key"])
        self.compress_level = int(self.options.get("compress_level", 1))
        self.after_hooks = list(self.options.get("hooks_after", []))
        self.channel.send_json(
            HELLO_REPLY,
            {
                "version": VERSION,
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
                for item in json.loads(zlib.decompress(payload).decode()):
                    self.parent[item[0]] = item[1:]
            elif kind == BLOOM:
                self.bloom = Bloom(payload)
            elif kind == WALK:
                self.walk()
            elif kind == FETCH:
                for path in json.loads(payload.decode()):
                    self.channel.send_json(START, path)
                    self.send_content(path, want_blocks=True)
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
        self.matcher = ExcludeMatcher(self.options.get("exclude", []))
        self.one_file_system = bool(self.options.get("one_file_system"))
        self.batch = []
        self.batch_bytes = 0
        spec = {}  # type: dict
        for path in self.options["paths"]:
            parts = [p for p in path.split("/") if p]
            level = spec
            for part in parts[:-1]:
                level = level.setdefault(part, {})
                if level is True:
                    break
            else:
                if parts:
                    level[parts[-1]] = True
        root = os.lstat("/")
        self.emit("/", root, "")
        if self.options["paths"] == ["/"]:
            self.walk_dir("/", root.st_dev)
        else:
            self.walk_virtual("/", spec)
        self.flush_entries()
        self.channel.send_json(WALK_DONE, self.counters)

    def walk_virtual(self, path, spec):
        for name in sorted(spec, key=os.fsencode):
            child = os.path.join(path, name)
            try:
                st = os.lstat(child)
            except OSError as error:
                self.emit_error(child, "cannot stat: %s" % error.strerror)
                continue
            sub = spec[name]
            if sub is True:
                if not self.matcher.excluded(child, name):
                    self.add(child, st, st.st_dev)
            elif stat.S_ISDIR(st.st_mode):
                self.emit(child, st, "")
                self.walk_virtual(child, sub)
            else:
                self.emit_error(child, "is not a directory")

    def walk_dir(self, path, root_device):
        try:
            names = sorted(os.listdir(os.fsencode(path)))
        except OSError as error:
            self.emit_error(path, "cannot list directory: %s" % error.strerror)
            return
        for raw in names:
            name = os.fsdecode(raw)
            child = os.path.join(path, name)
            if self.matcher.excluded(child, name):
                continue
            try:
                st = os.lstat(child)
            except OSError as error:
                self.emit_error(child, "cannot stat: %s" % error.strerror)
                continue
            self.add(child, st, root_device)

    def add(self, path, st, root_device):
        if stat.S_ISDIR(st.st_mode):
            self.emit(path, st, "")
            if not (self.one_file_system and st.st_dev != root_device):
                self.walk_dir(path, root_device)
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
        known = self.parent.get(path)
        if known is not None and known[:4] == [
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
        ]:
            self.counters["unchanged"] += 1
            self.emit(path, st, "same")
            return
        if known is not None and known[4] and st.st_size >= LARGE_FILE:
            self.emit(path, st, "blocks", last=True)
            self.send_blocks(path, known[4])
            return
        try:
            digest = self.digest(path)
        except OSError as error:
            self.emit_error(path, "cannot read: %s" % error.strerror)
            return
        if self.bloom.may_contain(digest):
            self.counters["digests"] += 1
            self.emit(path, st, "digest:" + digest.hex())
            return
        self.emit(path, st, "data", last=True)
        self.send_content(path, want_blocks=st.st_size >= LARGE_FILE)

    # --- file content --------------------------------------------------------------------

    def digest(self, path):
        whole = hashlib.blake2b(key=self.key, digest_size=32)
        with open(path, "rb", buffering=0) as handle:
            while True:
                data = handle.read(BLOCK_SIZE)
                if not data:
                    break
                whole.update(data)
        return whole.digest()

    def send_content(self, path, want_blocks):
        """The whole file in DATA frames, then END with its digest (and block hashes)."""
        whole = hashlib.blake2b(key=self.key, digest_size=32)
        blocks = []
        size = 0
        compress = self.compress_level > 0
        try:
            handle = open(path, "rb", buffering=0)
        except OSError as error:
            self.channel.send_json(END, {"error": "cannot read: %s" % error.strerror})
            return
        try:
            while True:
                data = handle.read(BLOCK_SIZE)
                if not data:
                    break
                whole.update(data)
                if want_blocks:
                    blocks.append(hashlib.blake2b(data, key=self.key, digest_size=16).digest())
                size += len(data)
                compress = self.send_data(DATA, b"", data, compress)
        except OSError as error:
            self.channel.send_json(END, {"error": "read error: %s" % error.strerror})
            return
        finally:
            handle.close()
        self.counters["sent"] += 1
        self.channel.send_json(
            END,
            {
                "size": size,
                "digest": whole.hexdigest(),
                "blocks": base64.b64encode(b"".join(blocks)).decode() if want_blocks else None,
            },
        )

    def send_blocks(self, path, known_blocks):
        """A large file changed in place: only the blocks whose hash differs from the
        parent's (or beyond its end) are sent; the server has the others."""
        known = base64.b64decode(known_blocks)
        whole = hashlib.blake2b(key=self.key, digest_size=32)
        blocks = []
        size = 0
        compress = self.compress_level > 0
        try:
            handle = open(path, "rb", buffering=0)
        except OSError as error:
            self.channel.send_json(END, {"error": "cannot read: %s" % error.strerror})
            return
        try:
            index = 0
            while True:
                data = handle.read(BLOCK_SIZE)
                if not data:
                    break
                whole.update(data)
                digest = hashlib.blake2b(data, key=self.key, digest_size=16).digest()
                blocks.append(digest)
                if known[16 * index : 16 * index + 16] != digest:
                    compress = self.send_data(BLOCK, struct.pack(">Q", size), data, compress)
                size += len(data)
                index += 1
        except OSError as error:
            self.channel.send_json(END, {"error": "read error: %s" % error.strerror})
            return
        finally:
            handle.close()
        self.counters["sent"] += 1
        self.channel.send_json(
            END,
            {
                "size": size,
                "digest": whole.hexdigest(),
                "blocks": base64.b64encode(b"".join(blocks)).decode(),
            },
        )

    def send_data(self, kind, prefix, data, compress):
        """One frame of file bytes, zlib-compressed unless that does not pay; returns
        whether to keep trying compression for this file (not after a block that did
        not shrink: already-compressed data stays incompressible)."""
        if compress:
            packed = zlib.compress(data, self.compress_level)
            if len(packed) < len(data) * 0.95:
                self.channel.send(kind, prefix + b"\x01" + packed)
                return True
        self.channel.send(kind, prefix + b"\x00" + data)
        return False

    # --- entries -------------------------------------------------------------------------

    def emit(self, path, st, state, last=False):
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
        self.batch.append(entry)
        self.batch_bytes += 80 + len(path)
        # An entry whose content follows ends its batch, so the server reads the entries
        # and then that content, in the order they were written.
        if last or self.batch_bytes >= 64 * 1024:
            self.flush_entries()

    def emit_error(self, path, message):
        self.counters["errors"] += 1
        self.batch.append(
            [path, "", 0, 0, 0, "", "", 0, 0, 0, 0, 0, 0, 0, None, None, "error:" + message]
        )

    def flush_entries(self):
        if self.batch:
            payload = json.dumps(self.batch, separators=(",", ":")).encode(
                "utf-8", "surrogateescape"
            )
            self.channel.send(ENTRIES, zlib.compress(payload, 1))
            self.batch = []
            self.batch_bytes = 0

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
