"""Restore a snapshot (or a path in it) into a directory, with full metadata.

Files are written by a thread pool (blob reads, decryption and decompression release
the GIL). A blob that fails to verify fails the restore loudly and removes the file
being written, so wrong bytes are never left under the real name; an existing file is
replaced only once its new content has verified (temporary name, then rename). Chunks
that are all zeros are skipped with a seek, and the file is truncated to its size, so
sparse files come back sparse.

Metadata is applied after content: ownership (when running as root), mode, xattrs,
then times; directories last and deepest first, so writing into them does not disturb
their mtime.

What is already at the target is never replaced silently: each entry that exists is
decided by ``overwrite`` (restic 0.17's ``--overwrite``), and counted:

* ``always`` (the default, as restic's): replace it, unless it already holds the
  snapshot's content (same size, and every chunk of it hashes to the snapshot's blob
  id: nothing is read from the pool to tell); such a file is *unchanged*, and only
  its metadata is set again.
* ``if-changed``: as ``always``, but a regular file whose size and mtime match the
  snapshot's is taken as unchanged without reading it.
* ``if-newer``: replace it only if the snapshot's entry is newer (mtime); otherwise it
  is left as it is (*not overwritten*).
* ``never``: leave whatever exists as it is.

An entry that is not a directory where the snapshot has one (a file, or a symbolic
link: never followed) is replaced by the directory with ``always`` and ``if-changed``;
with ``if-newer`` and ``never`` the directory's whole content is left out.

``include``/``exclude`` select by path inside the snapshot (:class:`Selection`), and a
dry run decides and counts everything (reading existing files to compare them) but
writes nothing.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from costor.errors import (
    DataCorruption,
    PathNotInSnapshot,
    RestoreError,
    RestoreTargetNotDirectory,
    UsageError,
)
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.snapshot import Snapshot
from costor.store.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node

_ZEROS = bytes(8 * 1024 * 1024)

OVERWRITE_MODES = ("always", "if-changed", "if-newer", "never")
DEFAULT_OVERWRITE = "always"  # restic's default since 0.17

# What happened to one entry (not a directory) that was selected.
NEW = "new"  # nothing was there: written
OVERWRITE = "overwrite"  # something was there: replaced
UNCHANGED = "unchanged"  # already held the snapshot's content: metadata set again
NOT_OVERWRITTEN = "not-overwritten"  # something else was there, kept (--overwrite)
NOT_RESTORABLE = "not-restorable"  # a socket; a device node without root


class Selection:
    """restic-like ``--include``/``--exclude`` on paths inside the snapshot.

    A pattern is cut at ``/`` into components, each matched with shell wildcards
    (``*``, ``?``, ``[...]``, which never match ``/``); ``**`` matches any number of
    components. A pattern starting with ``/`` is anchored at the snapshot's root; any
    other matches at any depth (``*.log`` is ``/**/*.log``). A pattern that matches a
    directory matches everything in it. An entry is selected when no exclude matches
    it and, if there are includes, one of them does; the directories leading to a
    selected entry are restored too.
    """

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.include = [self._parse(p) for p in include]
        self.exclude = [self._parse(p) for p in exclude]

    @property
    def everything(self) -> bool:
        return not self.include and not self.exclude

    @staticmethod
    def _parse(pattern: str) -> list[bytes]:
        raw = os.fsencode(pattern)
        parts = [part for part in raw.split(b"/") if part]
        if not parts:
            raise UsageError(message=f"empty pattern {pattern!r}")
        return parts if raw.startswith(b"/") else [b"**", *parts]

    def selected(self, path: bytes) -> bool:
        """``path``: absolute, inside the snapshot (``b"/srv/www/index.html"``)."""
        parts = [part for part in path.split(b"/") if part]
        if any(_matches(pattern, parts) for pattern in self.exclude):
            return False
        return not self.include or any(_matches(pattern, parts) for pattern in self.include)


def _matches(pattern: Sequence[bytes], parts: Sequence[bytes]) -> bool:
    """Does ``pattern`` match ``parts`` or a directory above it (a prefix of it)?"""

    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return True  # the pattern matched parts[:j]: parts is that or inside it
        if pattern[i] == b"**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pattern[i]) and match(i + 1, j + 1)

    return match(0, 0)


@dataclass
class RestoreResult:
    """Counts of one restore (or dry run). ``files_*`` count every entry that is not a
    directory (regular files, symbolic links, hard-link names, fifos, device nodes)."""

    files: int = 0  # entries written: new and overwritten
    dirs: int = 0
    bytes_written: int = 0  # content written (a dry run: that would be)
    skipped: int = 0  # entries that cannot be restored here (sockets; devices without root)
    files_new: int = 0
    files_overwritten: int = 0
    files_unchanged: int = 0
    files_not_overwritten: int = 0
    entries: list[dict[str, Any]] | None = None  # with list_entries: each file's action
    _order: list[int] = field(default_factory=list, repr=False)

    @property
    def files_skipped(self) -> int:
        """Entries that existed and were left as they were (unchanged or kept)."""
        return self.files_unchanged + self.files_not_overwritten


class Restorer:
    def __init__(
        self,
        pool: Pool,
        *,
        progress: Progress | None = None,
        workers: int | None = None,
        overwrite: str = DEFAULT_OVERWRITE,
        selection: Selection | None = None,
        dry_run: bool = False,
        list_entries: bool = False,
    ):
        if overwrite not in OVERWRITE_MODES:
            raise UsageError(
                message=f"unknown overwrite mode {overwrite!r}; "
                f"choose one of {', '.join(OVERWRITE_MODES)}"
            )
        self.pool = pool
        self.progress = progress or Progress()
        self.workers = workers or max(2, (os.cpu_count() or 2))
        self.overwrite = overwrite
        self.selection = selection or Selection()
        self.dry_run = dry_run
        self.result = RestoreResult(entries=[] if list_entries else None)
        self._lock = threading.Lock()
        self._is_root = os.geteuid() == 0

    def restore(self, snapshot: Snapshot, target: str, path: str = "/") -> RestoreResult:
        node = self.pool.find_node(bytes.fromhex(snapshot.tree), path)
        if node is None:
            raise PathNotInSnapshot(path=path, snapshot=snapshot.id[:12])
        target_bytes = os.fsencode(os.path.abspath(target))
        _prepare_target(target_bytes, create=not self.dry_run)
        # The path inside the snapshot of the selected node ("" for the root).
        where = b"/".join(part for part in os.fsencode(path).split(b"/") if part and part != b".")
        where = b"/" + where if where else b""
        items = self._selected(node, where)
        total_files = total_bytes = 0
        for _r, n, _s in items:
            if n.type == FILE:
                total_files += 1
                total_bytes += n.size
        self.progress.set_total(total_files, total_bytes)
        try:
            self._restore_items(node, target_bytes, items)
        except OSError as error:
            name = os.fsdecode(error.filename) if error.filename else "the target"
            raise RestoreError(reason=f"{name}: {error.strerror or error}") from error
        if self.result.entries is not None:  # in walk order (workers finish in any)
            pairs = sorted(zip(self.result._order, self.result.entries, strict=True), key=_first)
            self.result.entries = [entry for _number, entry in pairs]
        self.progress.close()
        return self.result

    def _selected(self, node: Node, where: bytes) -> list[tuple[bytes, Node, bytes]]:
        """(path relative to the restored node, node, path inside the snapshot), in walk
        order: the entries the selection keeps, and the directories leading to them."""
        items = [(b"", node)] if node.type != DIR else [(b"", node), *self._iter(node)]
        if node.name == b"":
            items = items[1:]  # the root is the target itself
        listed = [
            (relative, item, where + b"/" + relative if relative else where)
            for relative, item in items
        ]
        if self.selection.everything:
            return listed
        chosen = [self.selection.selected(snap_path) for _r, _n, snap_path in listed]
        needed: set[bytes] = set()
        for (relative, _n, _s), keep in zip(listed, chosen, strict=True):
            if keep:
                parent = relative
                while parent:
                    parent = parent.rpartition(b"/")[0]
                    needed.add(parent)
        return [
            entry
            for entry, keep in zip(listed, chosen, strict=True)
            if keep or (entry[1].type == DIR and entry[0] in needed)
        ]

    def _restore_items(
        self, node: Node, target_bytes: bytes, items: list[tuple[bytes, Node, bytes]]
    ) -> None:
        directories: list[tuple[bytes, Node]] = []
        hardlinks: dict[tuple[int, int], tuple[bytes, Future[str]]] = {}
        futures: list[Future[Any]] = []
        blocked: list[bytes] = []  # relative dirs whose content is left out (see module doc)
        base = target_bytes if node.name == b"" else os.path.join(target_bytes, node.name)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="restore") as executor:
            for number, (relative, item, snap_path) in enumerate(items):
                destination = os.path.join(base, relative) if relative else base
                if blocked and any(relative.startswith(b + b"/") for b in blocked):
                    if item.type != DIR:
                        self._count(number, snap_path, item, NOT_OVERWRITTEN)
                    continue
                if item.type == DIR:
                    state = self._directory(destination)
                    if state == "blocked":
                        blocked.append(relative)
                        continue
                    self.result.dirs += 1
                    if state == "made" or self.overwrite in ("always", "if-changed"):
                        directories.append((destination, item))
                    continue
                if item.type == FILE:
                    key = (item.device, item.inode)
                    first = hardlinks.get(key) if item.links > 1 else None
                    if first is not None:
                        futures.append(
                            executor.submit(
                                self._link_after, *first, destination, item, number, snap_path
                            )
                        )
                        continue
                    future = executor.submit(self._file, destination, item, number, snap_path)
                    futures.append(future)
                    if item.links > 1:
                        hardlinks[key] = (destination, future)
                else:
                    self._special(destination, item, number, snap_path)
            errors = []
            for waited in futures:
                try:
                    waited.result()
                except Exception as error:  # collect, then raise the first
                    errors.append(error)
            if errors:
                first_error = errors[0]
                if isinstance(first_error, DataCorruption | RestoreError):
                    raise first_error
                raise RestoreError(reason=str(first_error)) from first_error
        if not self.dry_run:
            for destination, item in sorted(
                directories, key=lambda d: d[0].count(b"/"), reverse=True
            ):
                self._apply_metadata(destination, item)

    def _iter(self, node: Node) -> list[tuple[bytes, Node]]:
        if node.type != DIR or node.subtree is None:
            return []
        return list(self.pool.walk(node.subtree))

    # --- deciding -------------------------------------------------------------------

    def _decide(self, destination: bytes, node: Node) -> str:
        """What to do with a file or special entry at ``destination``."""
        try:
            st = os.lstat(destination)
        except FileNotFoundError:
            return NEW
        if self.overwrite == "never":
            return NOT_OVERWRITTEN
        if self.overwrite == "if-newer":
            return OVERWRITE if node.mtime_ns > st.st_mtime_ns else NOT_OVERWRITTEN
        if node.type == FILE and stat.S_ISREG(st.st_mode) and st.st_size == node.size:
            if self.overwrite == "if-changed" and st.st_mtime_ns == node.mtime_ns:
                return UNCHANGED
            return UNCHANGED if self._same_content(destination, node) else OVERWRITE
        if node.type == SYMLINK and stat.S_ISLNK(st.st_mode):
            return UNCHANGED if os.readlink(destination) == (node.target or b"") else OVERWRITE
        if node.type == FIFO and stat.S_ISFIFO(st.st_mode):
            return UNCHANGED
        if node.type in (CHARDEV, BLOCKDEV) and st.st_rdev == node.rdev:
            kind = stat.S_ISCHR if node.type == CHARDEV else stat.S_ISBLK
            return UNCHANGED if kind(st.st_mode) else OVERWRITE
        return OVERWRITE

    def _same_content(self, destination: bytes, node: Node) -> bool:
        """Does the file hold the snapshot's content? Each chunk of it is hashed with
        the pool's key and compared with the blob's id; nothing is read from the pool."""
        try:
            fd = os.open(destination, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False  # unreadable (mode 000 as a user): replace it
        try:
            position = 0
            for blob in node.content:
                length = self.pool.locate(blob).raw_length
                data = os.pread(fd, length, position)
                if len(data) != length or self.pool.blob_id(data) != blob:
                    return False
                position += length
            return position == node.size == os.fstat(fd).st_size
        except OSError:
            return False
        finally:
            os.close(fd)

    def _count(
        self, number: int, snap_path: bytes, node: Node, action: str, written: int = 0
    ) -> None:
        with self._lock:
            result = self.result
            if action in (NEW, OVERWRITE):
                result.files += 1
                result.bytes_written += written
                if action == NEW:
                    result.files_new += 1
                else:
                    result.files_overwritten += 1
            elif action == UNCHANGED:
                result.files_unchanged += 1
            elif action == NOT_OVERWRITTEN:
                result.files_not_overwritten += 1
            else:
                result.skipped += 1
            if result.entries is not None:
                result.entries.append(
                    {
                        "path": snap_path.decode("utf-8", "backslashreplace"),
                        "type": node.type,
                        "size": node.size,
                        "action": action,
                    }
                )
                result._order.append(number)

    # --- doing ----------------------------------------------------------------------

    def _directory(self, destination: bytes) -> str:
        """Make the directory (``made``), or find it there (``exists``: its metadata is
        set again only when entries may be replaced); ``blocked`` when something else is
        there and the overwrite mode keeps it (its content is then left out)."""
        try:
            st = os.lstat(destination)
        except FileNotFoundError:
            if not self.dry_run:
                os.mkdir(destination, 0o700)  # its mode is set once its content is in
            return "made"
        if stat.S_ISDIR(st.st_mode):
            return "exists"
        if self.overwrite in ("never", "if-newer"):
            self.progress.warning(
                os.fsdecode(destination),
                f"exists and is not a directory; kept (--overwrite {self.overwrite}), "
                "so what the snapshot holds in it is not restored",
            )
            return "blocked"
        if not self.dry_run:
            os.unlink(destination)  # a file or a symbolic link (never followed)
            os.mkdir(destination, 0o700)
        return "made"

    def _file(self, destination: bytes, node: Node, number: int, snap_path: bytes) -> str:
        action = self._decide(destination, node)
        writes = action in (NEW, OVERWRITE)
        if writes and not self.dry_run:
            written = self._write_file(destination, node)
        else:
            written = node.size if writes else 0
            if action == UNCHANGED and not self.dry_run:
                self._refresh_metadata(destination, node)
            self.progress.advance(size=node.size, files=1)
        self._count(number, snap_path, node, action, written)
        return action

    def _link_after(
        self,
        first: bytes,
        written: Future[str],
        destination: bytes,
        node: Node,
        number: int,
        snap_path: bytes,
    ) -> None:
        # The first name of a hard-link group must be complete before we link to it. It
        # was submitted earlier, so it is running or done: waiting cannot deadlock.
        first_action = written.result()
        if first_action == NOT_OVERWRITTEN:
            # The first name keeps other content: this one gets the snapshot's own.
            self._file(destination, node, number, snap_path)
            return
        try:
            st = os.lstat(destination)
        except FileNotFoundError:
            action = NEW
        else:
            if self.overwrite == "never":
                action = NOT_OVERWRITTEN
            elif self.overwrite == "if-newer":
                action = OVERWRITE if node.mtime_ns > st.st_mtime_ns else NOT_OVERWRITTEN
            elif first_action in (NEW, OVERWRITE):
                action = OVERWRITE  # the first name is new: nothing can be linked to it yet
            else:
                # Unchanged only if already a name of the first one's inode: a copy with
                # the same content would lose the link.
                try:
                    same = os.path.samestat(st, os.lstat(first))
                except FileNotFoundError:
                    same = False
                action = UNCHANGED if same else OVERWRITE
        if action in (NEW, OVERWRITE) and not self.dry_run:
            _remove_existing(destination)
            os.link(first, destination)
        self._count(number, snap_path, node, action)

    def _special(self, destination: bytes, node: Node, number: int, snap_path: bytes) -> None:
        if node.type == SOCKET:
            # Sockets belong to a running process; not restorable.
            self._count(number, snap_path, node, NOT_RESTORABLE)
            return
        action = self._decide(destination, node)
        if action in (NEW, OVERWRITE) and not self.dry_run:
            if not self._make_special(destination, node):
                action = NOT_RESTORABLE
        elif action == UNCHANGED and not self.dry_run:
            self._apply_metadata(destination, node)
        self._count(number, snap_path, node, action)

    def _write_file(self, destination: bytes, node: Node) -> int:
        # A new name is written in place (O_EXCL proves nothing was there). An existing
        # file is replaced through a temporary name and rename(), so it stays whole
        # until the new content has verified. Either way, a blob that fails to verify
        # removes what was written: never wrong bytes under the real name. (In-place
        # writing saves the rename, ~8% of a many-small-files restore.)
        try:
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            written_name = destination
        except FileExistsError:
            written_name = destination + b".costor-restore"
            fd = os.open(written_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            position = 0
            written_to = 0
            for blob in node.content:
                data = self.pool.read_blob(blob)
                end = _write_sparse(fd, data, position)
                position += len(data)
                written_to = end or written_to
                self.progress.advance(size=len(data))
            if written_to != position:
                os.ftruncate(fd, position)  # the file ends in a hole
            # Metadata through the open descriptor: no path lookups, and the times are
            # set last so nothing after them touches the file.
            self._apply_metadata(fd, node, destination)
        except BaseException:
            os.close(fd)
            os.unlink(written_name)
            raise
        os.close(fd)
        if written_name != destination:
            try:
                os.rename(written_name, destination)
            except IsADirectoryError as error:
                os.unlink(written_name)
                raise RestoreError(
                    reason=f"{os.fsdecode(destination)} exists and is a directory"
                ) from error
        self.progress.advance(files=1)
        return position

    def _refresh_metadata(self, destination: bytes, node: Node) -> None:
        """An unchanged file's owner, mode, xattrs and times, set again through a
        descriptor opened without following links."""
        try:
            fd = os.open(destination, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            self.progress.warning(os.fsdecode(destination), f"metadata: {error.strerror}")
            return
        try:
            self._apply_metadata(fd, node, destination)
        finally:
            os.close(fd)

    def _make_special(self, destination: bytes, node: Node) -> bool:
        """False when the entry cannot be made here (a device node without root)."""
        _remove_existing(destination)
        if node.type == SYMLINK:
            os.symlink(node.target or b"", destination)
        elif node.type == FIFO:
            os.mkfifo(destination, 0o600)
        elif node.type in (CHARDEV, BLOCKDEV):
            kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
            try:
                os.mknod(destination, 0o600 | kind, node.rdev)
            except PermissionError:
                self.progress.warning(os.fsdecode(destination), "device nodes need root; skipped")
                return False
        self._apply_metadata(destination, node)
        return True

    def _apply_metadata(self, target: bytes | int, node: Node, path: bytes = b"") -> None:
        """Owner (as root), mode, xattrs, then times. ``target`` is a path (applied to
        the entry itself, never a symlink's target) or an open file descriptor, in which
        case ``path`` names it in warnings."""
        # With a descriptor there is no link to follow; with a path, never follow one.
        follow = isinstance(target, int)
        shown = os.fsdecode(path if isinstance(target, int) else target)
        if self._is_root:
            try:
                os.chown(target, node.uid, node.gid, follow_symlinks=follow)
            except OSError as error:
                self.progress.warning(shown, f"chown: {error.strerror}")
        if node.type != SYMLINK:
            os.chmod(target, node.mode)
        for attribute, value in node.xattrs.items():
            try:
                os.setxattr(target, attribute, value, follow_symlinks=follow)
            except OSError as error:
                if error.errno not in (errno.ENOTSUP, errno.EPERM):
                    self.progress.warning(shown, f"xattr {attribute}: {error.strerror}")
        os.utime(target, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=follow)


# Zero runs of at least this size become holes. 64 KiB: large enough that the block
# comparisons cost nothing next to decryption, small enough to keep real sparse files
# (VM images, databases) sparse; file systems allocate in 4 KiB blocks anyway.
HOLE_BLOCK = 64 * 1024


def _write_sparse(fd: int, data: bytes, position: int) -> int:
    """Write ``data`` at ``position``, leaving holes where it holds zero blocks.
    Returns the file offset just after the last byte written (0 if none)."""
    if not (data[0] or data[-1]) and data == _ZEROS[: len(data)]:
        return 0
    if len(data) <= HOLE_BLOCK:
        os.pwrite(fd, data, position)
        return position + len(data)
    view = memoryview(data)
    zero_block = _ZEROS[:HOLE_BLOCK]
    run_start = None
    end = 0
    for start in range(0, len(data), HOLE_BLOCK):
        # bytes slices compare with memcmp; memoryview comparison goes element by
        # element and was 50x slower on zero runs.
        block = data[start : start + HOLE_BLOCK]
        if not (block[0] or block[-1]) and block == zero_block[: len(block)]:
            if run_start is not None:
                os.pwrite(fd, view[run_start:start], position + run_start)
                end = position + start
                run_start = None
        elif run_start is None:
            run_start = start
    if run_start is not None:
        os.pwrite(fd, view[run_start:], position + run_start)
        end = position + len(data)
    return end


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _prepare_target(target: bytes, *, create: bool) -> None:
    """The target must be a directory (or a symbolic link to one: the user named it),
    or not exist yet; it is made, with its parents, unless this is a dry run."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if create:
            try:
                os.makedirs(target, exist_ok=True)
            except OSError as error:
                raise RestoreError(
                    reason=f"cannot create {os.fsdecode(target)}: {error.strerror or error}"
                ) from error
        return
    except OSError as error:
        raise RestoreError(reason=f"{os.fsdecode(target)}: {error.strerror or error}") from error
    if not stat.S_ISDIR(st.st_mode):
        raise RestoreTargetNotDirectory(target=os.fsdecode(target))


def _remove_existing(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise RestoreError(reason=f"{os.fsdecode(path)} exists and is a directory")
    os.unlink(path)
