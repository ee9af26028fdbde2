"""Restore a snapshot (or a path in it) into a directory, with full metadata.

Whatever a snapshot holds, the restore stays inside its target (see
``store/restore/confined.py``): every entry is placed from its checked name, relative
to its parent directory's open descriptor, never through a symbolic link; an entry
whose name could leave its directory (empty, ``.``, ``..``, with ``/`` or NUL) or
repeats a name already restored in its directory (a symlink ``x`` then a directory
``x``) is refused: reported, not written, and the restore goes on with the rest, then
fails (:class:`~costor.errors.RestoreRefused`). Outside a system restore (the target is
not ``/`` and ``faithful`` is not given) setuid/setgid bits are cleared, device nodes
and fifos are not made, and ``security.*``/``trusted.*`` xattrs are left out.

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

import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from costor.errors import (
    DataCorruption,
    PathNotInSnapshot,
    RestoreError,
    RestoreRefused,
    UsageError,
)
from costor.store.pool import Pool
from costor.store.progress import Progress, wants_totals
from costor.store.restore.confined import (
    CREATE_FLAGS,
    READ_FLAGS,
    REFUSED,
    Parts,
    Policy,
    Refusal,
    close_fd,
    lstat_at,
    make_special_at,
    open_dir,
    open_parts,
    open_target,
    prepare_target,
    remove_at,
    set_metadata_at,
    set_metadata_fd,
    walk_checked,
    write_sparse,
)
from costor.store.restore.readahead import MANY_BLOBS, blobs_in_order
from costor.store.restore.selection import Selection
from costor.store.restore.walk import Walk, WriterDirs
from costor.store.snapshot import Snapshot
from costor.store.tree import (
    BLOCKDEV,
    CHARDEV,
    CONTENT_TYPES,
    DIR,
    FIFO,
    IMAGE,
    SOCKET,
    SYMLINK,
    Node,
)

OVERWRITE_MODES = ("always", "if-changed", "if-newer", "never")
DEFAULT_OVERWRITE = "always"  # restic's default since 0.17

# What happened to one entry (not a directory) that was selected.
NEW = "new"  # nothing was there: written
OVERWRITE = "overwrite"  # something was there: replaced
UNCHANGED = "unchanged"  # already held the snapshot's content: metadata set again
NOT_OVERWRITTEN = "not-overwritten"  # something else was there, kept (--overwrite)
NOT_RESTORABLE = "not-restorable"  # a socket; a device node without root; an image into /
# or over a device node
# REFUSED (confined.py): its name could leave the target or repeats one; not written

# One selected entry: its components under the target, the node, its path inside the
# snapshot, and why it is refused (None: it is not).
Item = tuple[Parts, Node, bytes, str | None]


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
    refused: list[dict[str, str]] = field(default_factory=list)  # unsafe names, not written
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
        faithful: bool | None = None,
    ):
        """``faithful``: recreate setuid/setgid bits, device nodes, fifos and
        ``security.*``/``trusted.*`` xattrs as the snapshot holds them; None (the
        default): only when the target is ``/``."""
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
        self.faithful = faithful
        self.policy = Policy(bool(faithful))
        self.result = RestoreResult(entries=[] if list_entries else None)
        self._lock = threading.Lock()
        self._is_root = os.geteuid() == 0
        self._target = b""
        self._system_target = False  # the target is / (a system restore)
        self._root_fd: int | None = None
        self._writer_dirs = WriterDirs(None)  # the writers' directories, per restore

    def restore(self, snapshot: Snapshot, target: str, path: str = "/") -> RestoreResult:
        node = self.pool.find_node(bytes.fromhex(snapshot.tree), path)
        if node is None:
            raise PathNotInSnapshot(path=path, snapshot=snapshot.id[:12])
        self._target = target_bytes = os.fsencode(os.path.abspath(target))
        prepare_target(target_bytes, create=not self.dry_run)
        faithful = self.faithful
        self._system_target = os.path.realpath(target_bytes) == b"/"
        if faithful is None:
            faithful = self._system_target
        self.policy = Policy(faithful)
        # The path inside the snapshot of the selected node ("" for the root).
        where = b"/".join(part for part in os.fsencode(path).split(b"/") if part and part != b".")
        where = b"/" + where if where else b""
        if wants_totals(self.progress):
            # A walk of the trees of its own: the entries are never all held at once
            # (1,000,000 files took 3 GB when they were), so they are walked twice.
            total_files = total_bytes = 0
            for _p, n, _s, problem in self._selected(node, where):
                if n.type in CONTENT_TYPES and problem is None:
                    total_files += 1
                    total_bytes += n.size
            self.progress.set_total(total_files, total_bytes)
        self._root_fd = open_target(target_bytes)
        try:
            self._restore_items(self._selected(node, where))
        except OSError as error:
            name = os.fsdecode(error.filename) if error.filename else "the target"
            raise RestoreError(reason=f"{name}: {error.strerror or error}") from error
        finally:
            close_fd(self._root_fd)
            self._root_fd = None
        self._finish(snapshot)
        return self.result

    def _finish(self, snapshot: Snapshot) -> None:
        if self.result.entries is not None:  # in walk order (workers finish in any)
            pairs = sorted(zip(self.result._order, self.result.entries, strict=True), key=_first)
            self.result.entries = [entry for _number, entry in pairs]
        summary = self.policy.summary()
        if summary is not None:
            self.progress.warning(os.fsdecode(self._target), summary)
        self.progress.close()
        refused = self.result.refused
        if refused:
            raise RestoreRefused(
                count=len(refused),
                snapshot=snapshot.id[:12],
                first=f"{refused[0]['path']}: {refused[0]['reason']}",
                done="counted (dry run)" if self.dry_run else "restored",
                refused=refused,
            )

    def _selected(self, node: Node, where: bytes) -> Iterator[Item]:
        """The entries the selection keeps, and the directories leading to them, in
        walk order (the root itself is the target, not an entry), one at a time: a
        directory the selection does not keep waits (with those above it) until an
        entry inside it is kept, and is dropped if none is."""
        everything = self.selection.everything
        waiting: list[Item] = []  # directories not kept, on the way to the current entry
        for parts, item, problem in walk_checked(self.pool, node):
            inside = parts[1:] if node.name else parts
            snap_path = where + b"/" + b"/".join(inside) if inside else where
            entry = (parts, item, snap_path, problem)
            if everything:
                yield entry
                continue
            while waiting and parts[: len(waiting[-1][0])] != waiting[-1][0]:
                waiting.pop()  # walked past it: nothing inside it was kept
            if self.selection.selected(snap_path):
                yield from waiting
                waiting.clear()
                yield entry
            elif item.type == DIR:
                waiting.append(entry)

    def _restore_items(self, items: Iterable[Item]) -> None:
        self._writer_dirs = WriterDirs(self._root_fd)
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="restore") as executor:
                walk = Walk(self._root_fd, executor)
                try:
                    for number, item in enumerate(items):
                        self._place(walk, number, item)
                finally:
                    walk.close()
                _raise(walk.wait())
        finally:
            self._writer_dirs.close()
        if not self.dry_run and self._root_fd is not None:
            for parts, node in sorted(walk.directories, key=_depth, reverse=True):
                fd = open_parts(self._root_fd, parts)
                try:
                    self._set_metadata_fd(fd, node, parts)
                finally:
                    os.close(fd)

    def _place(self, walk: Walk, number: int, item: Item) -> None:
        try:
            self._place_one(walk, number, item)
        except OSError as error:
            shown = self._shown(item[0])
            raise RestoreError(reason=f"{shown}: {error.strerror or error}") from error

    def _place_one(self, walk: Walk, number: int, item: Item) -> None:
        parts, node, snap_path, problem = item
        if problem is not None:
            self._refuse(number, snap_path, node, problem)
        elif walk.is_blocked(parts):
            if node.type != DIR:
                self._count(number, snap_path, node, NOT_OVERWRITTEN)
        elif node.type == DIR:
            self._enter(walk, parts, node)
        elif node.type in CONTENT_TYPES:  # an image comes back as a regular file
            self._submit_file(walk, number, parts, node, snap_path)
        else:
            self._special(walk.parent(parts), parts, node, number, snap_path)

    def _enter(self, walk: Walk, parts: Parts, node: Node) -> None:
        state, fd = self._directory(walk.parent(parts), parts)
        if state == "blocked":
            walk.blocked.append(parts)
            return
        self.result.dirs += 1
        walk.push(parts, fd, made=state == "made")
        if state == "made" or self.overwrite in ("always", "if-changed"):
            walk.directories.append((parts, node))

    def _submit_file(
        self, walk: Walk, number: int, parts: Parts, node: Node, snap_path: bytes
    ) -> None:
        # The writer opens the directory itself (see store/restore/walk.py); None: it does
        # not exist (a dry run), nor does anything in it.
        exists = walk.parent(parts) is not None
        key = (node.device, node.inode)
        first = walk.hardlinks.get(key) if node.links > 1 else None
        args = (exists, parts, node, number, snap_path)
        if first is not None:
            walk.submit(self._job, self._link_after, *args, first)
            return
        # In a directory this restore made there is nothing to decide (one lstat less
        # a file: NEW); a name that appeared there meanwhile is still not written through
        # (O_EXCL), but replaced as an existing file is.
        fresh = walk.in_made(parts)
        future = walk.submit(
            self._job, self._file, *args, fresh, size=node.size, outcome=node.links > 1
        )
        if future is not None:
            walk.hardlinks[key] = (parts, future)

    def _job(
        self, action: Callable[..., str | None], exists: bool, parts: Parts, *args: Any
    ) -> str | None:
        """Run ``action`` on a writer, in the directory holding ``parts``."""
        try:
            fd = self._writer_dirs.fd(parts[:-1]) if exists else None
            return action(fd, parts, *args)
        except OSError as error:
            raise RestoreError(reason=f"{self._shown(parts)}: {error.strerror or error}") from error

    def _shown(self, parts: Parts) -> str:
        return os.fsdecode(os.path.join(self._target, *parts))

    # --- deciding -------------------------------------------------------------------

    def _decide(self, dir_fd: int | None, name: bytes, node: Node) -> str:
        """What to do with a file or special entry ``name`` in ``dir_fd``."""
        st = lstat_at(dir_fd, name) if dir_fd is not None else None
        if st is None:
            return NEW
        assert dir_fd is not None
        if self.overwrite == "never":
            return NOT_OVERWRITTEN
        if self.overwrite == "if-newer":
            return OVERWRITE if node.mtime_ns > st.st_mtime_ns else NOT_OVERWRITTEN
        if node.type in CONTENT_TYPES and stat.S_ISREG(st.st_mode) and st.st_size == node.size:
            if self.overwrite == "if-changed" and st.st_mtime_ns == node.mtime_ns:
                return UNCHANGED
            return UNCHANGED if self._same_content(dir_fd, name, node) else OVERWRITE
        if node.type == SYMLINK and stat.S_ISLNK(st.st_mode):
            same = os.readlink(name, dir_fd=dir_fd) == (node.target or b"")
            return UNCHANGED if same else OVERWRITE
        if node.type == FIFO and stat.S_ISFIFO(st.st_mode):
            return UNCHANGED
        if node.type in (CHARDEV, BLOCKDEV) and st.st_rdev == node.rdev:
            kind = stat.S_ISCHR if node.type == CHARDEV else stat.S_ISBLK
            return UNCHANGED if kind(st.st_mode) else OVERWRITE
        return OVERWRITE

    def _same_content(self, dir_fd: int, name: bytes, node: Node) -> bool:
        """Does the file hold the snapshot's content? Each chunk of it is hashed with
        the pool's key and compared with the blob's id; nothing is read from the pool."""
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
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
            elif action != REFUSED:
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

    def _refuse(self, number: int, snap_path: bytes, node: Node, reason: str) -> None:
        """An entry whose name is unsafe: reported, counted as refused, never written."""
        shown = snap_path.decode("utf-8", "backslashreplace") or "/"
        self.progress.warning(shown, f"refused: {reason}; not restored")
        self.result.refused.append(Refusal(shown, node.type, reason).to_json())
        self._count(number, snap_path, node, REFUSED)

    # --- doing ----------------------------------------------------------------------

    def _directory(self, parent_fd: int | None, parts: Parts) -> tuple[str, int | None]:
        """Make the directory (``made``), or find it there (``exists``: its metadata is
        set again only when entries may be replaced); ``blocked`` when something else is
        there and the overwrite mode keeps it (its content is then left out). With it,
        the directory's descriptor (None in a dry run, where it is not made)."""
        name = parts[-1]
        st = lstat_at(parent_fd, name) if parent_fd is not None else None
        if st is not None and stat.S_ISDIR(st.st_mode):
            assert parent_fd is not None
            return "exists", open_dir(parent_fd, name)
        if st is not None and self.overwrite in ("never", "if-newer"):
            self.progress.warning(
                self._shown(parts),
                f"exists and is not a directory; kept (--overwrite {self.overwrite}), "
                "so what the snapshot holds in it is not restored",
            )
            return "blocked", None
        if self.dry_run:
            return "made", None
        assert parent_fd is not None
        if st is not None:
            os.unlink(name, dir_fd=parent_fd)  # a file or a symbolic link (never followed)
        os.mkdir(name, 0o700, dir_fd=parent_fd)  # its mode is set once its content is in
        return "made", open_dir(parent_fd, name)

    def _file(
        self,
        dir_fd: int | None,
        parts: Parts,
        node: Node,
        number: int,
        snap_path: bytes,
        fresh: bool = False,
    ) -> str:
        name = parts[-1]
        why_not = self._image_refused(dir_fd, name, node)
        if why_not is not None:
            self.progress.warning(self._shown(parts), why_not)
            self.progress.advance(size=node.size, files=1)
            self._count(number, snap_path, node, NOT_RESTORABLE)
            return NOT_RESTORABLE
        action = NEW if fresh else self._decide(dir_fd, name, node)
        writes = action in (NEW, OVERWRITE)
        if writes and not self.dry_run:
            assert dir_fd is not None
            written = self._write_file(dir_fd, parts, node)
        else:
            written = node.size if writes else 0
            if action == UNCHANGED and not self.dry_run:
                assert dir_fd is not None
                self._refresh_metadata(dir_fd, parts, node)
            self.progress.advance(size=node.size, files=1)
        self._count(number, snap_path, node, action, written)
        return action

    def _image_refused(self, dir_fd: int | None, name: bytes, node: Node) -> str | None:
        """Why image ``node`` is not written as a file here, or None. Into a live
        system's tree (the target is ``/``) an image would land in ``/dev`` (a file
        system in memory) or over the very device it was read from; over a device node
        it would replace the node with gigabytes of file. A device takes an image with
        ``--target-device``."""
        if node.type != IMAGE:
            return None
        if self._system_target:
            return (
                "an image is not written into a live system's tree: restore it onto a "
                "device with --target-device DEV, or as a file under another --target"
            )
        st = lstat_at(dir_fd, name) if dir_fd is not None else None
        if st is not None and (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            return "is a device node, not replaced by the image: use --target-device DEV"
        return None

    def _link_after(
        self,
        dir_fd: int | None,
        parts: Parts,
        node: Node,
        number: int,
        snap_path: bytes,
        first: tuple[Parts, Future[str]],
    ) -> None:
        # The first name of a hard-link group must be complete before we link to it. It
        # was submitted earlier, so it is running or done: waiting cannot deadlock.
        first_parts, written = first
        first_action = written.result()
        if first_action == NOT_OVERWRITTEN:
            # The first name keeps other content: this one gets the snapshot's own.
            self._file(dir_fd, parts, node, number, snap_path)
            return
        name = parts[-1]
        action = self._decide_link(dir_fd, name, node, first_parts, first_action)
        if action in (NEW, OVERWRITE) and not self.dry_run:
            assert dir_fd is not None and self._root_fd is not None
            remove_at(dir_fd, name, self._shown(parts))
            first_dir = open_parts(self._root_fd, first_parts[:-1])
            try:
                os.link(
                    first_parts[-1],
                    name,
                    src_dir_fd=first_dir,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
            finally:
                os.close(first_dir)
        self._count(number, snap_path, node, action)

    def _decide_link(
        self, dir_fd: int | None, name: bytes, node: Node, first_parts: Parts, first_action: str
    ) -> str:
        st = lstat_at(dir_fd, name) if dir_fd is not None else None
        if st is None:
            return NEW
        if self.overwrite == "never":
            return NOT_OVERWRITTEN
        if self.overwrite == "if-newer":
            return OVERWRITE if node.mtime_ns > st.st_mtime_ns else NOT_OVERWRITTEN
        if first_action in (NEW, OVERWRITE) or self._root_fd is None:
            return OVERWRITE  # the first name is new: nothing can be linked to it yet
        # Unchanged only if already a name of the first one's inode: a copy with the
        # same content would lose the link.
        try:
            first_dir = open_parts(self._root_fd, first_parts[:-1])
        except OSError:
            return OVERWRITE
        try:
            first_st = lstat_at(first_dir, first_parts[-1])
        finally:
            os.close(first_dir)
        same = first_st is not None and os.path.samestat(st, first_st)
        return UNCHANGED if same else OVERWRITE

    def _special(
        self, dir_fd: int | None, parts: Parts, node: Node, number: int, snap_path: bytes
    ) -> None:
        if node.type == SOCKET:
            # Sockets belong to a running process; not restorable.
            self._count(number, snap_path, node, NOT_RESTORABLE)
            return
        why_not = self.policy.refuses(node)
        if why_not is not None:
            self.progress.warning(self._shown(parts), why_not)
            self._count(number, snap_path, node, NOT_RESTORABLE)
            return
        action = self._decide(dir_fd, parts[-1], node)
        if action in (NEW, OVERWRITE) and not self.dry_run:
            assert dir_fd is not None
            if not self._make_special(dir_fd, parts, node):
                action = NOT_RESTORABLE
        elif action == UNCHANGED and not self.dry_run:
            assert dir_fd is not None
            self._set_metadata_at(dir_fd, parts, node)
        self._count(number, snap_path, node, action)

    def _write_file(self, dir_fd: int, parts: Parts, node: Node) -> int:
        # A new name is written in place (O_EXCL proves nothing was there). An existing
        # file is replaced through a temporary name and rename(), so it stays whole
        # until the new content has verified. Either way, a blob that fails to verify
        # removes what was written: never wrong bytes under the real name. (In-place
        # writing saves the rename, ~8% of a many-small-files restore.) Both are
        # created in the directory's descriptor, O_NOFOLLOW: never through a link.
        name = parts[-1]
        try:
            fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
            written_name = name
        except FileExistsError:
            written_name = name + b".costor-restore"
            remove_at(dir_fd, written_name, self._shown(parts))  # left by a killed run
            fd = os.open(written_name, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            position = self._write_content(fd, node)
            # Metadata through the open descriptor: no path lookups, and the times are
            # set last so nothing after them touches the file.
            self._set_metadata_fd(fd, node, parts)
        except BaseException:
            os.close(fd)
            os.unlink(written_name, dir_fd=dir_fd)
            raise
        os.close(fd)
        if written_name != name:
            try:
                os.rename(written_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as error:
                os.unlink(written_name, dir_fd=dir_fd)
                if isinstance(error, IsADirectoryError):
                    raise RestoreError(
                        reason=f"{self._shown(parts)} exists and is a directory"
                    ) from error
                raise
        self.progress.advance(files=1)
        return position

    def _write_content(self, fd: int, node: Node) -> int:
        position = 0
        written_to = 0
        if len(node.content) >= MANY_BLOBS:  # an image, a large file: read ahead
            blobs: Iterable[bytes] = blobs_in_order(self.pool, node.content)
        else:
            blobs = (self.pool.read_blob(blob) for blob in node.content)
        for data in blobs:
            end = write_sparse(fd, data, position)
            position += len(data)
            written_to = end or written_to
            self.progress.advance(size=len(data))
        if written_to != position:
            os.ftruncate(fd, position)  # the file ends in a hole
        return position

    def _refresh_metadata(self, dir_fd: int, parts: Parts, node: Node) -> None:
        """An unchanged file's owner, mode, xattrs and times, set again through a
        descriptor opened without following links."""
        try:
            fd = os.open(parts[-1], READ_FLAGS, dir_fd=dir_fd)
        except OSError as error:
            self.progress.warning(self._shown(parts), f"metadata: {error.strerror}")
            return
        try:
            self._set_metadata_fd(fd, node, parts)
        finally:
            os.close(fd)

    def _make_special(self, dir_fd: int, parts: Parts, node: Node) -> bool:
        """False when the entry cannot be made here (a device node without root)."""
        remove_at(dir_fd, parts[-1], self._shown(parts))
        try:
            make_special_at(dir_fd, parts[-1], node)
        except PermissionError:
            if node.type not in (CHARDEV, BLOCKDEV):
                raise
            self.progress.warning(self._shown(parts), "device nodes need root; skipped")
            return False
        self._set_metadata_at(dir_fd, parts, node)
        return True

    def _set_metadata_fd(self, fd: int, node: Node, parts: Parts) -> None:
        set_metadata_fd(
            fd,
            node,
            self.policy,
            chown=self._is_root,
            shown=self._shown(parts),
            warn=self.progress.warning,
        )

    def _set_metadata_at(self, dir_fd: int, parts: Parts, node: Node) -> None:
        set_metadata_at(
            dir_fd,
            parts[-1],
            node,
            self.policy,
            chown=self._is_root,
            shown=self._shown(parts),
            warn=self.progress.warning,
        )


def _raise(first_error: BaseException | None) -> None:
    """Raise the walk's first failure (every job has run), if any."""
    if first_error is None:
        return
    if isinstance(first_error, DataCorruption | RestoreError):
        raise first_error
    raise RestoreError(reason=str(first_error)) from first_error


def _depth(directory: tuple[Parts, Node]) -> int:
    return len(directory[0])


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


__all__ = ["DEFAULT_OVERWRITE", "OVERWRITE_MODES", "RestoreResult", "Restorer", "Selection"]
