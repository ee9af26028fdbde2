"""Restore a snapshot (or a path in it) as one archive: ``.tar``, ``.tar.zst``, ``.zip``,
or a tar stream on stdout (``-``).

The archives are written with the standard library's ``tarfile`` and ``zipfile``: both
can stream (tar in ``w|`` mode never seeks; ``ZipFile.open(info, "w")`` writes one entry
incrementally and falls back to data descriptors on an unseekable output), PAX tar covers
everything a tree node holds (nanosecond mtimes, long and non-UTF-8 names, big ids and
sizes, xattrs as ``SCHILY.xattr.*``), and neither adds a dependency; ``.tar.zst`` reuses
``zstandard``, which the pool already needs for its blobs.

Nothing is held whole in memory: file content goes from the pool to the archive blob by
blob, and a small thread pool reads (fetches, decrypts, decompresses) a few blobs ahead,
in order, so that work overlaps with compression and writing. A damaged blob raises
:class:`~costor.errors.DataCorruption`; an archive written to a path is built under
``<path>.partial`` and renamed only when complete, so a failed run leaves no file behind.
On a stream (stdout) the output stops where the failure happened and is never finished:
a tar ends inside the damaged file's data (readers report an unexpected end of data), a
tar.zst also inside an unfinished zstd frame, and a zip has no central directory.

What each format keeps:

* tar (PAX): directories, files, symlinks, hard links (``LNKTYPE``, for names of one
  inode), fifos, character and block devices (major/minor), mode, uid/gid, user/group
  names, mtime to the nanosecond, xattrs. Sockets are skipped (tar has no type for them).
* zip: directories, files, symlinks (Info-ZIP style: ``S_IFLNK`` mode, target as data),
  mode, mtime (DOS time in local time, plus the extended-timestamp field to the second in
  UTC), uid/gid (Info-ZIP ``ux`` field). Hard-linked names each get a full copy; user and
  group names and xattrs are not kept; fifos, devices and sockets are skipped. Names that
  are not valid UTF-8 are stored as their raw bytes without the UTF-8 flag, as Info-ZIP
  does on POSIX.

An archive holds every file's content whatever its original permissions, so a file
destination is created mode 0600. An existing file is never replaced unless ``force``
is given (the finished archive is linked into place, which fails if the name was taken
meanwhile). ``selection`` (``--include``/``--exclude``) keeps some entries and the
directories leading to them, as a directory restore does; :func:`plan_archive` counts
(and lists) what an archive would hold without writing one.

Member names are made only of checked names (``archive_entries.py``): never ``..``,
never absolute. An entry whose name could leave its directory, or repeats a name of its
directory, is refused as in a directory restore: reported, left out, and once the rest
is written (and a file archive given its name) the run fails with
:class:`~costor.errors.RestoreRefused`. A zip member name never holds a ``\\`` either,
which zip readers on Windows take for a directory separator: each becomes ``_``, with a
warning, and the result lists the entries so renamed (``renamed``); a tar keeps it
(``archive_entries.ZipNames`` says why).
"""

from __future__ import annotations

import os
import stat
import struct
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, BinaryIO, cast

import zstandard

from costor.errors import (
    ArchiveExists,
    PathNotInSnapshot,
    RestoreError,
    RestoreRefused,
    UsageError,
)
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.restore.archive_entries import (
    ContentReader,
    Entry,
    ReadAhead,
    archive_entries,
    size_mismatch,
    sparse_layout,
)
from costor.store.restore.confined import REFUSED, Refusal
from costor.store.restore.selection import Selection
from costor.store.snapshot import Snapshot
from costor.store.tree import (
    BLOCKDEV,
    CHARDEV,
    CONTENT_TYPES,
    DIR,
    FIFO,
    IMAGE,
    SYMLINK,
    Node,
)

FORMATS = ("tar", "tar.zst", "zip")
READ_WORKERS = 4  # threads reading blobs ahead of the writer
READ_AHEAD_BLOBS = 8  # blobs (about 1 MiB each, 8 MiB at most) read ahead, in order
READ_AHEAD_ENTRIES = 256  # tree entries walked ahead while looking for blobs to read
FILE_BUFFER = 1024 * 1024  # buffer of an archive file being written
# tarfile copies content in pieces of this size and writes its stream in blocks of the
# same size: equal sizes keep its bytes concatenation from going quadratic.
TAR_BLOCK = 256 * 1024
ZSTD_LEVEL = 3
ZIP_LEVEL = 6
# Deflate can grow incompressible data a little: switch to ZIP64 well before 2 GiB.
ZIP64_FROM = 2 * 1024**3 - 128 * 1024**2
_DOS_EPOCH = (1980, 1, 1, 0, 0, 0)
_DOS_END = (2107, 12, 31, 23, 59, 58)


@dataclass
class ArchiveResult:
    files: int = 0  # file entries, hard-link names included
    dirs: int = 0
    bytes_written: int = 0  # file content put into the archive (before compression)
    skipped: int = 0  # entries the format cannot hold
    archive_bytes: int = 0  # size of the archive itself
    entries: list[dict[str, object]] | None = None  # plan_archive(list_entries=True)
    refused: list[dict[str, str]] = field(default_factory=list)  # unsafe names, left out
    # Entries whose name a zip cannot keep, archived under another: path, archived_as.
    renamed: list[dict[str, str]] = field(default_factory=list)

    def raise_refused(self, snapshot: Snapshot, done: str) -> None:
        """Entries were refused (see ``confined.py``): the run fails, once the rest is
        done."""
        if self.refused:
            first = self.refused[0]
            raise RestoreRefused(
                count=len(self.refused),
                snapshot=snapshot.id[:12],
                first=f"{first['path']}: {first['reason']}",
                done=done,
                refused=self.refused,
            )

    def refuse(self, entry: Entry, progress: Progress | None) -> None:
        shown = _entry_path(entry)
        assert entry.problem is not None
        if progress is not None:
            progress.warning(shown, f"refused: {entry.problem}; not archived")
        self.refused.append(Refusal(shown, entry.node.type, entry.problem).to_json())

    def rename(self, entry: Entry, progress: Progress | None) -> None:
        """``entry`` is archived under another name (see ``archive_entries.ZipNames``)."""
        shown, archived_as = _entry_path(entry), _shown(entry.name)
        if progress is not None:
            progress.warning(
                shown,
                f"the name holds a '\\', which zip readers on Windows take for a directory "
                f"separator; archived as {archived_as!r} (a tar keeps the name)",
            )
        self.renamed.append({"path": shown, "archived_as": archived_as})


def write_archive(
    pool: Pool,
    snapshot: Snapshot,
    path: str,
    destination: str | BinaryIO,
    *,
    format: str | None = None,
    progress: Progress | None = None,
    force: bool = False,
    selection: Selection | None = None,
) -> ArchiveResult:
    """Write ``path`` of ``snapshot`` as an archive to ``destination``: a file name (format
    from its extension unless ``format`` is given; an existing file is replaced only with
    ``force``), ``-`` for a tar stream on stdout, or an open binary stream (tar unless
    ``format`` is given).

    As in a directory restore, ``/`` archives the whole snapshot with its absolute paths
    (without the leading ``/``); any other path is archived under its own name.
    """
    chosen = resolve_format(destination, format)
    node = pool.find_node(bytes.fromhex(snapshot.tree), path)
    if node is None:
        raise PathNotInSnapshot(path=path, snapshot=snapshot.id[:12])
    writer = _ArchiveWriter(pool, node, chosen, progress, _selecting(selection, path))
    stream: IO[bytes]
    if isinstance(destination, str):
        if destination != "-":
            if not force and os.path.lexists(destination):
                raise ArchiveExists(path=destination)
            result = _write_to_file(writer, destination, force=force)
            result.raise_refused(snapshot, "archived")
            return result
        stream = sys.stdout.buffer
    else:
        stream = destination
    if _is_terminal(stream):
        raise UsageError(message="refusing to write an archive to a terminal; redirect stdout")
    try:
        result = writer.write(stream)
        stream.flush()
    except OSError as error:
        raise RestoreError(reason=f"writing the archive: {error.strerror or error}") from error
    result.raise_refused(snapshot, "archived")
    return result


def plan_archive(
    pool: Pool,
    snapshot: Snapshot,
    path: str,
    destination: str | BinaryIO,
    *,
    format: str | None = None,
    selection: Selection | None = None,
    list_entries: bool = False,
) -> ArchiveResult:
    """What :func:`write_archive` would put in the archive (a dry run): the counts, and
    with ``list_entries`` each entry; nothing is read from the pool but trees."""
    chosen = resolve_format(destination, format)
    node = pool.find_node(bytes.fromhex(snapshot.tree), path)
    if node is None:
        raise PathNotInSnapshot(path=path, snapshot=snapshot.id[:12])
    result = ArchiveResult(entries=[] if list_entries else None)
    kinds = (
        (DIR, *CONTENT_TYPES, SYMLINK)
        if chosen == "zip"
        else (DIR, *CONTENT_TYPES, SYMLINK, FIFO, CHARDEV, BLOCKDEV)
    )
    for entry in archive_entries(
        pool,
        node,
        hardlinks=chosen != "zip",
        select=_selecting(selection, path),
        zip_names=chosen == "zip",
    ):
        _plan_entry(result, entry, kinds)
    result.raise_refused(snapshot, "counted (dry run)")
    return result


def _plan_entry(result: ArchiveResult, entry: Entry, kinds: tuple[str, ...]) -> None:
    kind = entry.node.type
    if entry.problem is not None:
        result.refuse(entry, None)
        action = REFUSED
    elif kind not in kinds:
        result.skipped += 1
        action = "not-archivable"
    else:
        action = "archive"
        if kind == DIR:
            result.dirs += 1
        elif kind in CONTENT_TYPES:  # an image is archived as a regular file
            result.files += 1
            result.bytes_written += entry.node.size if entry.reads_content else 0
    renamed = entry.renamed and action == "archive"
    if renamed:
        result.rename(entry, None)
    if result.entries is not None:
        listed: dict[str, object] = {
            "path": _entry_path(entry),
            "type": kind,
            "size": entry.node.size,
            "action": action,
        }
        if renamed:
            listed["archived_as"] = _shown(entry.name)
        result.entries.append(listed)


def _entry_path(entry: Entry) -> str:
    """The entry's path in the snapshot, as text (undecodable bytes escaped)."""
    return _shown(entry.snapshot_path)


def _shown(name: bytes) -> str:
    return os.fsdecode(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _selecting(selection: Selection | None, path: str) -> tuple[Selection, bytes] | None:
    """The selection, and the path inside the snapshot of the directory holding the
    archived node (entry names are relative to it), or None to keep everything."""
    if selection is None or selection.everything:
        return None
    parts = [part for part in os.fsencode(path).split(b"/") if part and part != b"."]
    return selection, b"/" + b"/".join(parts[:-1]) if len(parts) > 1 else b""


def resolve_format(destination: str | BinaryIO, format: str | None) -> str:
    """The archive format: ``format`` if given, else from the file name's extension;
    a stream (``-``) is a tar."""
    if format is not None:
        chosen = format.lower().lstrip(".")
        if chosen not in FORMATS:
            raise UsageError(
                message=f"unknown archive format {format!r}; choose one of {', '.join(FORMATS)}"
            )
        return chosen
    if not isinstance(destination, str) or destination == "-":
        return "tar"
    name = destination.lower()
    for candidate in ("tar.zst", "tar", "zip"):
        if name.endswith("." + candidate):
            return candidate
    raise UsageError(
        message=(
            f"cannot tell the archive format of {destination!r}: "
            "name it .tar, .tar.zst or .zip, or name the format (--format tar|tar.zst|zip)"
        )
    )


def _is_terminal(stream: IO[bytes]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _write_to_file(writer: _ArchiveWriter, destination: str, *, force: bool) -> ArchiveResult:
    partial = destination + ".partial"
    try:
        try:
            os.unlink(partial)  # left by a killed run
        except FileNotFoundError:
            pass
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise RestoreError(reason=f"cannot create {partial}: {error.strerror}") from error
    try:
        with open(fd, "wb", buffering=FILE_BUFFER) as output:
            result = writer.write(output)
            output.flush()
            os.fsync(output.fileno())
        if force:
            os.replace(partial, destination)
        else:
            _link_into_place(partial, destination)
    except BaseException as error:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise RestoreError(
                reason=f"writing {destination}: {error.strerror or error}"
            ) from error
        raise
    return result


def _link_into_place(partial: str, destination: str) -> None:
    """Give the finished archive its name unless that name is taken (by something made
    since the start): a hard link fails rather than replace. Where links are not
    supported, a last look, then rename."""
    try:
        os.link(partial, destination)
    except FileExistsError:
        raise ArchiveExists(path=destination) from None
    except OSError:
        if os.path.lexists(destination):
            raise ArchiveExists(path=destination) from None
        os.replace(partial, destination)
        return
    os.unlink(partial)


# --- the writers ----------------------------------------------------------------------


class _Sink:
    """The output as tarfile, zipfile and zstd see it. Counts the archive's size and,
    once aborted, drops every write: the cleanup of a failed run (zipfile finishing an
    entry, or writing its central directory when collected) can then never make a
    truncated archive look complete. Positions are relative to where the output stood,
    so a zip written into the middle of a stream is still self-contained."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.aborted = False
        self.size = 0
        self._position = 0
        try:
            self._start: int | None = raw.tell()
        except (AttributeError, OSError, ValueError):
            self._start = None  # a pipe: zipfile then writes data descriptors

    def write(self, data: bytes | bytearray | memoryview) -> int:
        length = len(data)
        if not self.aborted:
            self.raw.write(data)
        self._position += length
        self.size = max(self.size, self._position)
        return length

    def tell(self) -> int:
        if self._start is None:
            raise OSError("the archive output cannot tell its position")
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._start is None or whence != os.SEEK_SET:
            raise OSError("the archive output cannot seek")
        if not self.aborted:
            self.raw.seek(self._start + offset)
        self._position = offset
        return offset

    def flush(self) -> None:
        if not self.aborted:
            self.raw.flush()

    def abort(self) -> None:
        self.aborted = True


class _ArchiveWriter:
    def __init__(
        self,
        pool: Pool,
        node: Node,
        format: str,
        progress: Progress | None,
        select: tuple[Selection, bytes] | None = None,
    ) -> None:
        self.pool = pool
        self.node = node
        self.format = format
        self.select = select
        self.count_totals = progress is not None  # costs a second walk of the trees
        self.progress = progress or Progress()
        self.result = ArchiveResult()
        self._hardlinks = format != "zip"
        self._zip_names = format == "zip"

    def _entries(self) -> Iterator[Entry]:
        entries = archive_entries(
            self.pool,
            self.node,
            hardlinks=self._hardlinks,
            select=self.select,
            zip_names=self._zip_names,
        )
        return entries if self.format == "zip" else self._sparse_images(entries)

    def _sparse_images(self, entries: Iterator[Entry]) -> Iterator[Entry]:
        """A tar holds an image with long zero runs as a sparse member (its holes are
        not in the archive: a mostly empty disk image stays small, and GNU tar
        extracting it, as onto a host over SSH, writes a sparse file)."""
        for entry in entries:
            if entry.node.type == IMAGE and entry.reads_content:
                entry.sparse = sparse_layout(self.pool, entry.node)
            yield entry

    def write(self, output: IO[bytes]) -> ArchiveResult:
        if self.count_totals:
            total_files = total_bytes = 0
            for entry in self._entries():
                if entry.node.type in CONTENT_TYPES and entry.problem is None:
                    total_files += 1
                    total_bytes += entry.node.size if entry.reads_content else 0
            self.progress.set_total(total_files, total_bytes)
        sink = _Sink(output)
        executor = ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="archive-read")
        blobs = ReadAhead(
            self.pool,
            self._entries(),
            executor,
            blobs_ahead=READ_AHEAD_BLOBS,
            entries_ahead=READ_AHEAD_ENTRIES,
        )
        try:
            if self.format == "zip":
                self._write_zip(sink, blobs)
            elif self.format == "tar.zst":
                compressor = zstandard.ZstdCompressor(
                    level=ZSTD_LEVEL, threads=-1, write_checksum=True
                )
                compressed = compressor.stream_writer(cast(IO[bytes], sink), closefd=False)
                try:
                    self._write_tar(compressed, blobs)
                except BaseException:
                    # Push out what the partial tar holds, without ending the frame.
                    _quietly(lambda: compressed.flush(zstandard.FLUSH_BLOCK))
                    raise
                compressed.close()  # ends the frame; closefd=False leaves the sink open
            else:
                self._write_tar(sink, blobs)
        except BaseException:
            sink.abort()
            blobs.cancel()
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        self.result.archive_bytes = sink.size
        self.progress.close()
        return self.result

    # --- tar -------------------------------------------------------------------------

    def _write_tar(self, output: object, blobs: ReadAhead) -> None:
        tar = tarfile.open(  # noqa: SIM115 (closed only on success, see below)
            fileobj=cast(IO[bytes], output),
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            bufsize=TAR_BLOCK,
        )
        tar.copybufsize = TAR_BLOCK  # type: ignore[attr-defined]  # TarFile(copybufsize=)
        try:
            self._add_tar_entries(tar, blobs)
        except BaseException:
            # Flush the buffered stream but not TarFile.close(), which would add the end
            # marker: the output then stops inside the file that failed, where every
            # reader notices, rather than perhaps between two members, where lenient
            # readers (Python's tarfile among them) would take it for a whole archive.
            _quietly(tar.fileobj.close)
            raise
        tar.close()

    def _add_tar_entries(self, tar: tarfile.TarFile, blobs: ReadAhead) -> None:
        for entry in blobs:
            if entry.problem is not None:
                self.result.refuse(entry, self.progress)
                continue
            info = self._tarinfo(entry)
            if info is None:
                continue
            if entry.reads_content:
                reader = ContentReader(entry, blobs, self.progress)
                tar.addfile(info, cast(IO[bytes], reader))
                reader.finish()
                self.result.bytes_written += entry.node.size
            else:
                tar.addfile(info)
            # TarFile remembers every member for reading back; a writer never needs
            # them, and a snapshot can hold millions of files.
            tar.members.clear()  # type: ignore[attr-defined]
            self._count(entry)

    def _tarinfo(self, entry: Entry) -> tarfile.TarInfo | None:
        node = entry.node
        info = tarfile.TarInfo(os.fsdecode(entry.name))
        info.mode = node.mode & 0o7777
        info.uid, info.gid = node.uid, node.gid
        info.uname, info.gname = node.user, node.group
        pax: dict[str, str] = {}
        seconds, nanoseconds = divmod(node.mtime_ns, 1_000_000_000)
        info.mtime = seconds
        if nanoseconds:
            pax["mtime"] = _pax_time(node.mtime_ns)
        if node.type == DIR:
            info.type = tarfile.DIRTYPE
        elif node.type in CONTENT_TYPES:  # an image: a regular file member
            if entry.link_to is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = os.fsdecode(entry.link_to)
            elif entry.sparse is not None:
                # GNU sparse format 1.0, as GNU tar writes it (tar(5), "GNU.sparse.*"):
                # the member has a stand-in name and holds the map and the data only.
                info.type = tarfile.REGTYPE
                info.size = entry.sparse.member_size
                head, _slash, tail = info.name.rpartition("/")
                info.name = f"{head}/GNUSparseFile.0/{tail}" if head else f"GNUSparseFile.0/{tail}"
                pax.update(
                    {
                        "GNU.sparse.major": "1",
                        "GNU.sparse.minor": "0",
                        "GNU.sparse.name": os.fsdecode(entry.name),
                        "GNU.sparse.realsize": str(node.size),
                    }
                )
            else:
                info.type = tarfile.REGTYPE
                info.size = node.size
        elif node.type == SYMLINK:
            info.type = tarfile.SYMTYPE
            info.linkname = os.fsdecode(node.target or b"")
        elif node.type == FIFO:
            info.type = tarfile.FIFOTYPE
        elif node.type in (CHARDEV, BLOCKDEV):
            info.type = tarfile.CHRTYPE if node.type == CHARDEV else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
        else:
            self._skip(entry, f"a {node.type} cannot be stored in a tar archive")
            return None
        for attribute, value in sorted(node.xattrs.items()):
            try:
                attribute.encode("utf-8")
            except UnicodeEncodeError:
                self.progress.warning(
                    os.fsdecode(entry.name), f"xattr name {attribute!r} is not UTF-8; not archived"
                )
                continue
            pax[f"SCHILY.xattr.{attribute}"] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = pax
        return info

    # --- zip -------------------------------------------------------------------------

    def _write_zip(self, sink: _Sink, blobs: ReadAhead) -> None:
        archive = zipfile.ZipFile(
            cast(IO[bytes], sink),
            "w",
            compression=zipfile.ZIP_DEFLATED,
            compresslevel=ZIP_LEVEL,
            allowZip64=True,
        )
        entry_output: IO[bytes] | None = None
        try:
            for entry in blobs:
                node = entry.node
                if entry.problem is not None:
                    self.result.refuse(entry, self.progress)
                    continue
                if node.type not in (DIR, *CONTENT_TYPES, SYMLINK):
                    self._skip(entry, f"a {node.type} cannot be stored in a zip archive")
                    continue
                if entry.renamed:
                    self.result.rename(entry, self.progress)
                name = os.fsdecode(entry.name) + ("/" if node.type == DIR else "")
                info = _RawNameZipInfo(name, _dos_time(node.mtime_ns))
                info.extra = _zip_extra(node)
                permissions = node.mode & 0o7777
                if node.type == DIR:
                    info.external_attr = ((stat.S_IFDIR | permissions) << 16) | 0x10  # MS-DOS dir
                    info.CRC = info.compress_size = 0
                    archive.mkdir(info)
                elif node.type == SYMLINK:
                    info.external_attr = (stat.S_IFLNK | (permissions or 0o777)) << 16
                    archive.writestr(info, node.target or b"", compress_type=zipfile.ZIP_STORED)
                else:
                    info.external_attr = (stat.S_IFREG | permissions) << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.file_size = node.size  # lets zipfile plan ZIP64 too
                    # No `with`: on an error the entry must not be finished (see below).
                    entry_output = archive.open(info, "w", force_zip64=node.size > ZIP64_FROM)
                    written = 0
                    for blob in node.content:
                        data = blobs.read(blob)
                        entry_output.write(data)
                        written += len(data)
                        self.progress.advance(size=len(data))
                    if written != node.size:
                        raise size_mismatch(entry, "does not end at")
                    entry_output.close()
                    entry_output = None
                    self.result.bytes_written += written
                self._count(entry)
        except BaseException:
            # Finish the entry and the zip into the aborted sink, so that neither this
            # nor ZipFile.__del__ writes a data descriptor or central directory that
            # would make the truncated archive look whole.
            sink.abort()
            if entry_output is not None:
                _quietly(entry_output.close)
            _quietly(archive.close)
            raise
        archive.close()

    # --- shared ----------------------------------------------------------------------

    def _count(self, entry: Entry) -> None:
        if entry.node.type == DIR:
            self.result.dirs += 1
        elif entry.node.type in CONTENT_TYPES:
            self.result.files += 1
            self.progress.advance(files=1)

    def _skip(self, entry: Entry, why: str) -> None:
        self.result.skipped += 1
        self.progress.warning(os.fsdecode(entry.snapshot_path), f"{why}; skipped")


def _quietly(action: Callable[[], object]) -> None:
    """Clean-up on a path that is already failing: its own errors would only hide the
    first one."""
    try:
        action()
    except Exception:
        pass


def _pax_time(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{seconds}.{fraction:09d}"


class _RawNameZipInfo(zipfile.ZipInfo):
    """A ZipInfo whose name, if not valid UTF-8, is written as its raw bytes without the
    UTF-8 flag (zipfile itself would fail on the surrogate escapes)."""

    __slots__ = ()

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802 (zipfile's name)
        try:
            return super()._encodeFilenameFlags()  # type: ignore[misc]
        except UnicodeEncodeError:
            return os.fsencode(self.filename), self.flag_bits


def _dos_time(mtime_ns: int) -> tuple[int, int, int, int, int, int]:
    try:
        fields = time.localtime(mtime_ns // 1_000_000_000)[:6]
    except (OverflowError, OSError, ValueError):
        return _DOS_EPOCH
    return min(max(fields, _DOS_EPOCH), _DOS_END)


def _zip_extra(node: Node) -> bytes:
    """Info-ZIP's extended timestamp (UT: mtime, UTC seconds) and Unix ids (ux)."""
    extra = b""
    seconds = node.mtime_ns // 1_000_000_000
    if -(2**31) <= seconds < 2**31:
        extra += struct.pack("<HHBi", 0x5455, 5, 1, seconds)
    if 0 <= node.uid < 2**32 and 0 <= node.gid < 2**32:
        extra += struct.pack("<HHBBIBI", 0x7875, 11, 1, 4, node.uid, 4, node.gid)
    return extra


__all__ = ["FORMATS", "ArchiveResult", "plan_archive", "resolve_format", "write_archive"]
