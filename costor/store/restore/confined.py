"""What keeps a restore inside its target, whatever a snapshot holds.

A snapshot is data a host sent, and a hostile host can send anything: names such as
``..``, names holding ``/`` or NUL, the empty name, two entries of one name in one
directory (a symbolic link ``x`` then a directory ``x``), setuid files, device nodes,
``security.*`` xattrs. Snapshots written before names were checked where they enter
may hold all of that, so the restore side never trusts a name:

* :func:`walk_checked` walks a snapshot's trees component by component and gives each
  entry the *reason it is refused*, if any (:func:`name_problem`, and a name repeated in
  its directory); a refused directory is not walked into. Writers place an entry only
  from its list of checked components, never from a joined path.
* The file-system operations here all work relative to an open directory's descriptor
  (``openat`` and friends): a directory is opened with ``O_DIRECTORY | O_NOFOLLOW``, a
  file created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, and metadata is set on a
  descriptor, or with ``follow_symlinks=False`` relative to the directory's descriptor.
  A symbolic link the restore made (or found) is never traversed.
* :class:`Policy`: outside a system restore, setuid/setgid bits are cleared, device
  nodes and fifos are not made, and ``security.*``/``trusted.*`` xattrs are left out.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from costor.errors import RestoreError, RestoreTargetNotDirectory
from costor.store.pool import Pool
from costor.store.tree import BLOCKDEV, CHARDEV, DIR, FIFO, SYMLINK, Node, decode_tree

Parts = tuple[bytes, ...]
Warn = Callable[[str, str], None]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
SYSTEM_XATTRS = ("security.", "trusted.")
REFUSED = "refused"  # the action of an entry whose name is refused


def name_problem(name: bytes) -> str | None:
    """Why ``name`` cannot be one entry of a directory, or None if it can."""
    if name in (b"", b".", b".."):
        return f"the name {_shown(name)} is not a file name"
    if b"/" in name:
        return f"the name {_shown(name)} holds a '/'"
    if b"\x00" in name:
        return f"the name {_shown(name)} holds a NUL byte"
    return None


def _shown(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def walk_checked(pool: Pool, node: Node) -> Iterator[tuple[Parts, Node, str | None]]:
    """``node``'s entries depth first, each with its path as components (``node``'s own
    name first, unless it is the snapshot's root) and why it is refused (None when it
    is not). The entries of a refused directory are not walked."""
    if node.name == b"":
        if node.type == DIR and node.subtree is not None:
            yield from _walk_tree(pool, node.subtree, ())
        return
    problem = name_problem(node.name)
    yield (node.name,), node, problem
    if problem is None and node.type == DIR and node.subtree is not None:
        yield from _walk_tree(pool, node.subtree, (node.name,))


def _walk_tree(
    pool: Pool, tree_id: bytes, parent: Parts
) -> Iterator[tuple[Parts, Node, str | None]]:
    seen: set[bytes] = set()
    # Read past the pool's tree cache: a walk reads each tree once, and the cache's 4,096
    # decoded trees of a 1,000,000-file snapshot held ~400,000 nodes (~250 MB).
    for item in decode_tree(pool.read_blob(tree_id)):
        problem = name_problem(item.name)
        if problem is None and item.name in seen:
            problem = f"a second entry named {_shown(item.name)} in one directory"
        seen.add(item.name)
        parts = (*parent, item.name)
        yield parts, item, problem
        if problem is None and item.type == DIR and item.subtree is not None:
            yield from _walk_tree(pool, item.subtree, parts)


def shown_path(parts: Parts) -> bytes:
    """Components joined for display (and, once checked, as a relative path)."""
    return b"/".join(parts)


# --- what a restore outside / leaves out --------------------------------------------


class Policy:
    """``faithful``: recreate everything as the snapshot holds it (a system restore).
    Otherwise setuid/setgid bits are cleared, device nodes and fifos are not made, and
    ``security.*``/``trusted.*`` xattrs are left out; what was cleared is counted."""

    def __init__(self, faithful: bool) -> None:
        self.faithful = faithful
        self.bits_cleared = 0
        self.xattrs_left_out = 0
        self._lock = threading.Lock()

    def mode(self, node: Node) -> int:
        mode = stat.S_IMODE(node.mode)
        if not self.faithful and mode & PRIVILEGE_BITS:
            with self._lock:
                self.bits_cleared += 1
            mode &= ~PRIVILEGE_BITS
        return mode

    def xattrs(self, node: Node) -> list[tuple[str, bytes]]:
        if self.faithful:
            return list(node.xattrs.items())
        kept = [(k, v) for k, v in node.xattrs.items() if not k.startswith(SYSTEM_XATTRS)]
        if len(kept) != len(node.xattrs):
            with self._lock:
                self.xattrs_left_out += len(node.xattrs) - len(kept)
        return kept

    def refuses(self, node: Node) -> str | None:
        """Why ``node`` is not made here (None: it is)."""
        if self.faithful or node.type not in (FIFO, CHARDEV, BLOCKDEV):
            return None
        kind = "fifo" if node.type == FIFO else "device node"
        return f"a {kind} is made only by a system restore (--faithful); skipped"

    def summary(self) -> str | None:
        """One line on what was cleared, or None."""
        said = []
        if self.bits_cleared:
            said.append(f"setuid/setgid bits cleared on {self.bits_cleared} entr(ies)")
        if self.xattrs_left_out:
            said.append(f"{self.xattrs_left_out} security.*/trusted.* xattr(s) left out")
        if not said:
            return None
        return "; ".join(said) + " (--faithful restores them as the snapshot holds them)"


# --- file-system operations relative to a directory's descriptor --------------------


def open_dir(parent_fd: int, name: bytes) -> int:
    """The directory ``name`` in ``parent_fd``, never through a symbolic link."""
    return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def open_parts(root_fd: int, parts: Parts) -> int:
    """The directory at ``parts`` under ``root_fd``, one component at a time (each
    opened with ``O_NOFOLLOW``); a new descriptor the caller closes."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            inner = open_dir(fd, part)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    """The entry itself (a link is not followed), or None if nothing is there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(dir_fd: int, name: bytes, shown: str) -> None:
    """Remove what is at ``name`` (not a directory: that is an error)."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        raise RestoreError(reason=f"{shown} exists and is a directory")
    os.unlink(name, dir_fd=dir_fd)


def make_special_at(dir_fd: int, name: bytes, node: Node) -> None:
    """A symbolic link, fifo or device node at ``name`` (which must be free)."""
    if node.type == SYMLINK:
        os.symlink(node.target or b"", name, dir_fd=dir_fd)
    elif node.type == FIFO:
        os.mkfifo(name, 0o600, dir_fd=dir_fd)
    else:
        kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
        os.mknod(name, 0o600 | kind, node.rdev, dir_fd=dir_fd)


def set_metadata_fd(
    fd: int, node: Node, policy: Policy, *, chown: bool, shown: str, warn: Warn
) -> None:
    """Owner (``chown``: as root), mode, xattrs, then times, on an open descriptor."""
    if chown:
        try:
            os.fchown(fd, node.uid, node.gid)
        except OSError as error:
            warn(shown, f"chown: {error.strerror}")
    os.fchmod(fd, policy.mode(node))
    for attribute, value in policy.xattrs(node):
        try:
            os.setxattr(fd, attribute, value)
        except OSError as error:
            _xattr_failed(error, attribute, shown, warn)
    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))


def set_metadata_at(
    dir_fd: int, name: bytes, node: Node, policy: Policy, *, chown: bool, shown: str, warn: Warn
) -> None:
    """The same for an entry that cannot be opened (a symbolic link, a fifo, a device
    node): relative to its directory's descriptor, never following a link."""
    if chown:
        try:
            os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as error:
            warn(shown, f"chown: {error.strerror}")
    if node.type != SYMLINK:
        try:
            os.chmod(name, policy.mode(node), dir_fd=dir_fd, follow_symlinks=False)
        except (NotImplementedError, ValueError, OSError) as error:
            warn(shown, f"chmod: {getattr(error, 'strerror', None) or error}")
    # setxattr has no dir_fd: the directory's descriptor as a /proc path, the last
    # component not followed.
    where = b"/proc/self/fd/%d/" % dir_fd + name
    for attribute, value in policy.xattrs(node):
        try:
            os.setxattr(where, attribute, value, follow_symlinks=False)
        except OSError as error:
            _xattr_failed(error, attribute, shown, warn)
    os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _xattr_failed(error: OSError, attribute: str, shown: str, warn: Warn) -> None:
    if error.errno not in (errno.ENOTSUP, errno.EPERM):
        warn(shown, f"xattr {attribute}: {error.strerror}")


# --- the target, and writing content --------------------------------------------


def prepare_target(target: bytes, *, create: bool) -> None:
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


def close_fd(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def open_target(target: bytes) -> int | None:
    """The target's descriptor (the user named it: a link to it is followed), or None
    in a dry run where it does not exist."""
    try:
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


_ZEROS = bytes(8 * 1024 * 1024)

# Zero runs of at least this size become holes. 64 KiB: large enough that the block
# comparisons cost nothing next to decryption, small enough to keep real sparse files
# (VM images, databases) sparse; file systems allocate in 4 KiB blocks anyway.
HOLE_BLOCK = 64 * 1024


def write_sparse(fd: int, data: bytes, position: int) -> int:
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
    # Blocks on the file's offsets (not the chunk's): a hole is then whole file-system
    # blocks, where one that straddles them would leave a block allocated at each end.
    first = HOLE_BLOCK - position % HOLE_BLOCK  # < len(data): the chunk is longer
    for start in (0, *range(first, len(data), HOLE_BLOCK)):
        stop = min(len(data), first if start == 0 else start + HOLE_BLOCK)
        # bytes slices compare with memcmp; memoryview comparison goes element by
        # element and was 50x slower on zero runs.
        block = data[start:stop]
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


@dataclass
class Refusal:
    """An entry of the snapshot that was not restored because of its name."""

    path: str  # inside the snapshot, for display
    type: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "type": self.type, "reason": self.reason}
