"""write_archive: tar, tar.zst, zip and stdout round trips against a real local pool."""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

import pytest
import zstandard

from costor.errors import DataCorruption, PathNotInSnapshot, RestoreRefused, UsageError
from costor.store.backends import LocalBackend
from costor.store.backup.walk import Archiver
from costor.store.pool import Pool
from costor.store.progress import Progress
from costor.store.restore import archive as archive_module
from costor.store.restore.archive import ArchiveResult, write_archive
from costor.store.restore.selection import Selection
from costor.store.snapshot import Snapshot

RAW_NAME = b"caf\xe9.txt"  # Latin-1, not valid UTF-8
BIG_SIZE = 5 * 1024 * 1024
BASE_MTIME_NS = 1_600_000_000_123_456_789
# Every file name (hard-link names counted) and the content bytes they hold.
FILES = {"empty", "small.txt", "big.bin", "script.sh", "hard1", "hard2", "sub/nested/deep.txt"}
DIRS = {"sub", "sub/nested"}


@dataclass
class Source:
    root: Path  # the backed-up directory ("src")
    pool_dir: Path
    pool: Pool
    snapshot: Snapshot
    has_xattr: bool
    mtimes: dict[bytes, int]  # relative path -> mtime_ns set on it

    @property
    def raw_root(self) -> bytes:
        return os.fsencode(self.root)

    def member(self, relative: str) -> str:
        """The archive name of a path when the archive is made of the whole src dir."""
        return f"src/{relative}" if relative else "src"


def _build_tree(src: Path) -> tuple[bool, dict[bytes, int]]:
    src.mkdir()
    (src / "empty").write_bytes(b"")
    (src / "small.txt").write_bytes(b"hello, archive\n")
    os.chmod(src / "small.txt", 0o640)
    (src / "big.bin").write_bytes(random.Random(7).randbytes(BIG_SIZE))
    with open(os.path.join(os.fsencode(src), RAW_NAME), "wb") as handle:
        handle.write(b"a name that is not UTF-8\n")
    (src / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "script.sh", 0o755)
    os.symlink("small.txt", src / "link")
    (src / "hard1").write_bytes(b"one inode, two names\n")
    os.link(src / "hard1", src / "hard2")
    os.mkfifo(src / "fifo")
    (src / "sub" / "nested").mkdir(parents=True)
    (src / "sub" / "nested" / "deep.txt").write_bytes(b"deep\n")
    os.chmod(src / "sub", 0o750)
    try:
        os.setxattr(src / "small.txt", "user.costor", b"1")
        has_xattr = True
    except OSError as error:
        if error.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        has_xattr = False
    # Distinct mtimes with nanoseconds; directories last, deepest first.
    raw = os.fsencode(src)
    paths: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(raw):
        for name in sorted(filenames) + sorted(dirnames):
            paths.append(os.path.relpath(os.path.join(dirpath, name), raw))
    paths.sort(key=lambda p: (os.path.isdir(os.path.join(raw, p)), -p.count(b"/"), p))
    for index, relative in enumerate(paths):
        mtime = BASE_MTIME_NS + index * 1_000_000_007
        os.utime(os.path.join(raw, relative), ns=(mtime, mtime), follow_symlinks=False)
    # Read back at the end: the two hard-link names share one mtime, the last one set.
    mtimes = {relative: os.lstat(os.path.join(raw, relative)).st_mtime_ns for relative in paths}
    mtimes[b""] = BASE_MTIME_NS - 86_400 * 10**9
    os.utime(raw, ns=(mtimes[b""], mtimes[b""]))
    return has_xattr, mtimes


def _make_source(base: Path) -> Source:
    src = base / "src"
    has_xattr, mtimes = _build_tree(src)
    pool_dir = base / "pool"
    pool = Pool.init(LocalBackend(pool_dir), passphrase="pw", pack_size=4 * 1024 * 1024)
    snapshot = Archiver(pool, client="c", paths=[str(src)]).run()
    return Source(src, pool_dir, pool, snapshot, has_xattr, mtimes)


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Source:
    return _make_source(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A pool of its own with one byte flipped in the middle of its biggest (data) pack."""
    made = _make_source(tmp_path_factory.mktemp("damaged"))
    packs = [p for p in (made.pool_dir / "packs").rglob("*") if p.is_file()]
    biggest = max(packs, key=lambda p: p.stat().st_size)
    assert biggest.stat().st_size > 1024 * 1024  # a data pack, not the tree pack
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.chmod(0o600)
    biggest.write_bytes(bytes(data))
    return made


# --- helpers ----------------------------------------------------------------------------


def _relative_paths(root: bytes) -> set[bytes]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def assert_same_tree(snap: Source, copy: bytes, *, fifo: bool, shared_hardlinks: bool) -> None:
    """``copy`` holds what ``snap.root`` held: same names, types, bytes, modes, symlink
    targets and mtimes (to the second; symlinks' own mtimes are not restored)."""
    original = snap.raw_root
    expected = _relative_paths(original)
    if not fifo:
        expected.discard(b"fifo")
    assert _relative_paths(copy) == expected
    for relative in sorted(expected):
        src_stat = os.lstat(os.path.join(original, relative))
        copy_path = os.path.join(copy, relative)
        copy_stat = os.lstat(copy_path)
        assert stat.S_IFMT(copy_stat.st_mode) == stat.S_IFMT(src_stat.st_mode), relative
        if stat.S_ISLNK(src_stat.st_mode):
            assert os.readlink(copy_path) == os.readlink(os.path.join(original, relative))
            continue
        assert stat.S_IMODE(copy_stat.st_mode) == stat.S_IMODE(src_stat.st_mode), relative
        assert copy_stat.st_mtime_ns // 10**9 == snap.mtimes[relative] // 10**9, relative
        if stat.S_ISREG(src_stat.st_mode):
            with open(copy_path, "rb") as copied, open(os.path.join(original, relative), "rb") as f:
                assert copied.read() == f.read(), relative
    same_inode = (
        os.stat(os.path.join(copy, b"hard1")).st_ino == os.stat(os.path.join(copy, b"hard2")).st_ino
    )
    assert same_inode is shared_hardlinks


def _content_bytes(snap: Source, *, hardlinks: bool) -> int:
    total = 0
    for name in FILES | {os.fsdecode(RAW_NAME)}:
        if hardlinks and name == "hard2":
            continue
        total += os.path.getsize(os.path.join(snap.raw_root, os.fsencode(name)))
    return total


def _check_tar_members(snap: Source, tar: tarfile.TarFile) -> None:
    members = {m.name: m for m in tar.getmembers()}
    raw_member = snap.member(os.fsdecode(RAW_NAME))
    assert raw_member in members and "\udce9" in raw_member
    small = members[snap.member("small.txt")]
    assert small.mode == 0o640 and small.size == len(b"hello, archive\n")
    assert small.uid == os.getuid() and small.uname
    mtime_ns = snap.mtimes[b"small.txt"]
    assert small.pax_headers["mtime"] == f"{mtime_ns // 10**9}.{mtime_ns % 10**9:09d}"
    if snap.has_xattr:
        assert small.pax_headers["SCHILY.xattr.user.costor"] == "1"
    hard2 = members[snap.member("hard2")]
    assert hard2.islnk() and hard2.linkname == snap.member("hard1")
    assert members[snap.member("hard1")].isreg()
    link = members[snap.member("link")]
    assert link.issym() and link.linkname == "small.txt"
    assert members[snap.member("fifo")].isfifo()
    assert members[snap.member("sub")].isdir() and members[snap.member("sub")].mode == 0o750


def _confined(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar`` (read once: streams work), each checked before it is
    extracted not to write outside the target: a relative name without ``..``, no path
    through a symlink member, hard links only to such names and never to a symlink.
    Symlink targets themselves are content (a snapshot's links may point anywhere)."""
    symlinks: set[PurePosixPath] = set()

    def inside(name: str) -> PurePosixPath:
        path = PurePosixPath(name)
        assert name and not path.is_absolute() and ".." not in path.parts, name
        assert not symlinks.intersection(path.parents), f"{name} goes through a symlink"
        return path

    for member in tar:
        path = inside(member.name)
        if member.islnk():
            assert inside(member.linkname) not in symlinks, f"{member.name}: link to a symlink"
        elif member.issym():
            symlinks.add(path)
        elif not (member.isreg() or member.isdir() or member.isfifo()):
            raise AssertionError(f"{member.name}: unexpected member type {member.type!r}")
        yield member


def _extract_tar(tar: tarfile.TarFile, target: Path) -> None:
    """Extract everything as it is (modes, owners, symlinks: what the ``fully_trusted``
    filter does) after checking by hand that nothing escapes ``target``. By hand because
    ``extractall(filter=...)`` only exists from Python 3.11.4 and Debian 12 has 3.11.2;
    where it exists, it is given so that Python 3.12+ does not warn (nor 3.14 filter)."""
    options: dict[str, Any] = {}
    if hasattr(tarfile, "fully_trusted_filter"):
        options["filter"] = "fully_trusted"
    tar.extractall(target, members=_confined(tar), **options)


def _zip_mtime(info: zipfile.ZipInfo) -> int | None:
    extra = info.extra
    while len(extra) >= 4:
        kind, length = struct.unpack("<HH", extra[:4])
        if kind == 0x5455:
            flags, mtime = struct.unpack("<Bi", extra[4:9])
            assert flags & 1
            return int(mtime)
        extra = extra[4 + length :]
    return None


def _extract_zip(archive: zipfile.ZipFile, target: bytes) -> None:
    """What Info-ZIP's unzip does, in Python: raw names, modes, symlinks, UT mtimes."""
    directories = []
    for info in archive.infolist():
        name = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        path = os.path.join(target, name.rstrip(b"/"))
        mode = info.external_attr >> 16
        mtime = _zip_mtime(info)
        assert mtime is not None, info.filename
        if stat.S_ISDIR(mode):
            os.makedirs(path, exist_ok=True)
            directories.append((path, mode, mtime))
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if stat.S_ISLNK(mode):
            os.symlink(archive.read(info), path)
            continue
        assert stat.S_ISREG(mode), info.filename
        with open(path, "wb") as handle:
            handle.write(archive.read(info))
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, (mtime, mtime))
    for path, mode, mtime in reversed(directories):
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, (mtime, mtime))


class Recorder(Progress):
    def __init__(self) -> None:
        self.totals: tuple[int, int] | None = None
        self.files = self.size = 0
        self.warnings: list[tuple[str, str]] = []
        self.closed = False

    def set_total(self, files: int, size: int) -> None:
        self.totals = (files, size)

    def advance(self, files: int = 0, size: int = 0) -> None:
        self.files += files
        self.size += size

    def warning(self, path: str, message: str) -> None:
        self.warnings.append((path, message))

    def close(self) -> None:
        self.closed = True


class PipeLike(io.RawIOBase):
    """An output that can neither tell nor seek, like a pipe."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        self.data += chunk
        return len(chunk)

    def tell(self) -> int:
        raise OSError(errno.ESPIPE, "Illegal seek")

    def seek(self, offset: int, whence: int = 0) -> int:
        raise OSError(errno.ESPIPE, "Illegal seek")


# --- round trips --------------------------------------------------------------------------


def test_tar_round_trip(snap: Source, tmp_path: Path) -> None:
    out = tmp_path / "snap.tar"
    progress = Recorder()
    result = write_archive(snap.pool, snap.snapshot, str(snap.root), str(out), progress=progress)

    assert out.is_file() and not (tmp_path / "snap.tar.partial").exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert result == ArchiveResult(
        files=len(FILES) + 1,
        dirs=len(DIRS) + 1,
        bytes_written=_content_bytes(snap, hardlinks=True),
        skipped=0,
        archive_bytes=out.stat().st_size,
    )
    assert progress.totals == (result.files, result.bytes_written)
    assert (progress.files, progress.size) == progress.totals and progress.closed
    with tarfile.open(out, encoding="utf-8", errors="surrogateescape") as tar:
        assert tar.pax_headers == {}  # no global header, only per-member ones
        _check_tar_members(snap, tar)
        target = tmp_path / "out"
        _extract_tar(tar, target)
    assert_same_tree(snap, os.fsencode(target / "src"), fifo=True, shared_hardlinks=True)


def test_tar_zst_round_trip(snap: Source, tmp_path: Path) -> None:
    out = tmp_path / "snap.tar.zst"
    result = write_archive(snap.pool, snap.snapshot, str(snap.root), str(out))

    assert result.archive_bytes == out.stat().st_size
    raw = out.read_bytes()
    assert raw[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    assert len(plain) % 512 == 0 and plain.endswith(bytes(1024))  # the tar end marker
    target = tmp_path / "out"
    with (
        open(out, "rb") as handle,
        zstandard.ZstdDecompressor().stream_reader(handle) as reader,
        tarfile.open(fileobj=reader, mode="r|", errors="surrogateescape") as tar,
    ):
        _extract_tar(tar, target)
    assert_same_tree(snap, os.fsencode(target / "src"), fifo=True, shared_hardlinks=True)
    with tarfile.open(fileobj=io.BytesIO(plain), errors="surrogateescape") as tar:
        _check_tar_members(snap, tar)


def test_zip_round_trip(snap: Source, tmp_path: Path) -> None:
    out = tmp_path / "snap.zip"
    progress = Recorder()
    result = write_archive(snap.pool, snap.snapshot, str(snap.root), str(out), progress=progress)

    assert result.skipped == 1  # the fifo
    assert progress.warnings == [
        (snap.member("fifo"), "a fifo cannot be stored in a zip archive; skipped")
    ]
    assert result.files == len(FILES) + 1 and result.dirs == len(DIRS) + 1
    assert result.bytes_written == _content_bytes(snap, hardlinks=False)
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None  # every CRC checks
        infos = {info.filename: info for info in archive.infolist()}
        assert "src/sub/" in infos and infos["src/sub/"].is_dir()
        big = infos["src/big.bin"]
        assert big.compress_type == zipfile.ZIP_DEFLATED and big.file_size == BIG_SIZE
        raw_names = [i for i in infos.values() if not i.flag_bits & 0x800 and "caf" in i.filename]
        assert [i.filename.encode("cp437") for i in raw_names] == [b"src/" + RAW_NAME]
        link = infos["src/link"]
        assert stat.S_ISLNK(link.external_attr >> 16) and archive.read(link) == b"small.txt"
        # DOS time is local time with 2 s steps; the UT field carries the second.
        mtime = snap.mtimes[b"small.txt"] // 10**9
        assert _zip_mtime(infos["src/small.txt"]) == mtime
        assert abs(time.mktime(infos["src/small.txt"].date_time + (0, 0, -1)) - mtime) <= 2
        target = tmp_path / "out"
        _extract_zip(archive, os.fsencode(target))
    assert_same_tree(snap, os.fsencode(target / "src"), fifo=False, shared_hardlinks=False)


def test_zip_to_unseekable_stream(snap: Source) -> None:
    output = PipeLike()
    result = write_archive(
        snap.pool, snap.snapshot, str(snap.root / "sub"), cast(BinaryIO, output), format="zip"
    )
    assert result.archive_bytes == len(output.data)
    with zipfile.ZipFile(io.BytesIO(bytes(output.data))) as archive:
        assert archive.namelist() == ["sub/", "sub/nested/", "sub/nested/deep.txt"]
        info = archive.getinfo("sub/nested/deep.txt")
        assert info.flag_bits & 0x08  # data descriptor: written without seeking
        assert archive.read(info) == b"deep\n"


def test_tar_to_binary_stream(snap: Source) -> None:
    buffer = io.BytesIO()
    result = write_archive(snap.pool, snap.snapshot, str(snap.root), buffer)
    assert result.archive_bytes == len(buffer.getvalue()) > BIG_SIZE
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, errors="surrogateescape") as tar:
        big = tar.extractfile(snap.member("big.bin"))
        assert big is not None
        assert big.read() == (snap.root / "big.bin").read_bytes()


def test_stdout(snap: Source) -> None:
    script = (
        "import sys\n"
        "from costor.store.restore.archive import write_archive\n"
        "from costor.store.backends import LocalBackend\n"
        "from costor.store.pool import Pool\n"
        "pool = Pool.open(LocalBackend(sys.argv[1]), 'pw')\n"
        "pool.load_index()\n"
        "snapshot = pool.find_snapshot(sys.argv[2])\n"
        "result = write_archive(pool, snapshot, sys.argv[3], '-')\n"
        "print(result.files, result.bytes_written, file=sys.stderr)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(snap.pool_dir), snap.snapshot.id, str(snap.root)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert completed.stderr.split() == [
        str(len(FILES) + 1).encode(),
        str(_content_bytes(snap, hardlinks=True)).encode(),
    ]
    with tarfile.open(
        fileobj=io.BytesIO(completed.stdout), mode="r|", errors="surrogateescape"
    ) as tar:
        contents = {
            member.name: handle.read()
            for member in tar
            if member.isreg() and (handle := tar.extractfile(member)) is not None
        }
    assert contents[snap.member("big.bin")] == (snap.root / "big.bin").read_bytes()
    assert contents[snap.member(os.fsdecode(RAW_NAME))] == b"a name that is not UTF-8\n"


def test_read_ahead_of_one_blob_keeps_order(
    snap: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "READ_AHEAD_BLOBS", 1)
    monkeypatch.setattr(archive_module, "READ_AHEAD_ENTRIES", 1)
    out = tmp_path / "snap.tar"
    write_archive(snap.pool, snap.snapshot, str(snap.root), str(out))
    with tarfile.open(out, errors="surrogateescape") as tar:
        _extract_tar(tar, tmp_path / "out")
    assert_same_tree(snap, os.fsencode(tmp_path / "out" / "src"), fifo=True, shared_hardlinks=True)


def _hostile_tar(*members: tuple[str, bytes, str]) -> io.BytesIO:
    """A tar of (name, type, link target) members, regular files holding b"x"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, linkname in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            info.size = 1 if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(b"x") if kind == tarfile.REGTYPE else None)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(
    "members",
    [
        [("../escaped", tarfile.REGTYPE, "")],
        [("ok/../../escaped", tarfile.REGTYPE, "")],
        [("/tmp/escaped", tarfile.REGTYPE, "")],
        [("out", tarfile.SYMTYPE, ".."), ("out/escaped", tarfile.REGTYPE, "")],
        [("hard", tarfile.LNKTYPE, "../escaped")],
        [("link", tarfile.SYMTYPE, "../escaped"), ("hard", tarfile.LNKTYPE, "link")],
        [("dev", tarfile.CHRTYPE, "")],
    ],
)
def test_extraction_check_refuses_what_would_escape(
    tmp_path: Path, members: list[tuple[str, bytes, str]]
) -> None:
    """The round trips extract through ``_extract_tar``: its check is real."""
    target = tmp_path / "a" / "b"
    target.mkdir(parents=True)
    (tmp_path / "a" / "escaped").write_bytes(b"outside")
    with (
        tarfile.open(fileobj=_hostile_tar(*members), mode="r|") as tar,
        pytest.raises(AssertionError),
    ):
        _extract_tar(tar, target)
    assert (tmp_path / "a" / "escaped").read_bytes() == b"outside"
    allowed = {target.parent, target, target.parent / "escaped", target / "out", target / "link"}
    assert set(tmp_path.rglob("*")) <= allowed


# --- selection and formats ------------------------------------------------------------


def _names(buffer: io.BytesIO) -> list[str]:
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, errors="surrogateescape") as tar:
        return tar.getnames()


def test_sub_path_is_archived_under_its_own_name(snap: Source) -> None:
    buffer = io.BytesIO()
    result = write_archive(snap.pool, snap.snapshot, str(snap.root / "sub"), buffer)
    assert _names(buffer) == ["sub", "sub/nested", "sub/nested/deep.txt"]
    assert (result.files, result.dirs, result.bytes_written) == (1, 2, len(b"deep\n"))

    buffer = io.BytesIO()
    write_archive(snap.pool, snap.snapshot, str(snap.root / "small.txt"), buffer)
    assert _names(buffer) == ["small.txt"]


def test_hard_link_whose_first_name_is_outside_the_selection(snap: Source, tmp_path: Path) -> None:
    # Only one name of the pair is selected: it must carry the content itself.
    buffer = io.BytesIO()
    write_archive(snap.pool, snap.snapshot, str(snap.root / "hard2"), buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as tar:
        (member,) = tar.getmembers()
        assert member.isreg() and member.name == "hard2"
        handle = tar.extractfile(member)
        assert handle is not None and handle.read() == b"one inode, two names\n"


def test_root_keeps_the_absolute_structure(snap: Source) -> None:
    buffer = io.BytesIO()
    write_archive(snap.pool, snap.snapshot, "/", buffer)
    names = _names(buffer)
    prefix = str(snap.root).lstrip("/")
    assert names[0] == prefix.split("/")[0]
    assert f"{prefix}/sub/nested/deep.txt" in names
    assert all(prefix.startswith(name) or name.startswith(prefix) for name in names)


def test_missing_path(snap: Source) -> None:
    with pytest.raises(PathNotInSnapshot):
        write_archive(snap.pool, snap.snapshot, str(snap.root / "nope"), io.BytesIO())


def test_format_from_name_and_override(snap: Source, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        write_archive(snap.pool, snap.snapshot, str(snap.root / "sub"), str(tmp_path / "x.rar"))
    with pytest.raises(UsageError):
        write_archive(snap.pool, snap.snapshot, "/", io.BytesIO(), format="7z")
    assert list(tmp_path.iterdir()) == []

    out = tmp_path / "archive.bin"
    write_archive(snap.pool, snap.snapshot, str(snap.root / "sub"), str(out), format="zip")
    assert zipfile.is_zipfile(out)
    upper = tmp_path / "ARCHIVE.TAR.ZST"
    write_archive(snap.pool, snap.snapshot, str(snap.root / "sub"), str(upper))
    assert upper.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"


# --- interoperability with the usual tools ----------------------------------------------


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
def test_gnu_tar_reads_it(snap: Source, tmp_path: Path) -> None:
    out = tmp_path / "snap.tar"
    write_archive(snap.pool, snap.snapshot, str(snap.root), str(out))
    target = tmp_path / "out"
    target.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=user.*", "-xf", str(out), "-C", str(target)],
        check=True,
        capture_output=True,
    )
    copy = os.fsencode(target / "src")
    assert_same_tree(snap, copy, fifo=True, shared_hardlinks=True)
    assert os.stat(os.path.join(copy, b"small.txt")).st_mtime_ns == snap.mtimes[b"small.txt"]
    if snap.has_xattr:
        assert os.getxattr(os.path.join(copy, b"small.txt"), "user.costor") == b"1"


@pytest.mark.skipif(shutil.which("unzip") is None, reason="needs Info-ZIP unzip")
def test_unzip_reads_it(snap: Source, tmp_path: Path) -> None:
    out = tmp_path / "snap.zip"
    write_archive(snap.pool, snap.snapshot, str(snap.root), str(out))
    target = tmp_path / "out"
    subprocess.run(["unzip", "-q", str(out), "-d", str(target)], check=True, capture_output=True)
    copy = os.fsencode(target / "src")
    assert os.path.islink(os.path.join(copy, b"link"))
    with open(os.path.join(copy, RAW_NAME), "rb") as handle:
        assert handle.read() == b"a name that is not UTF-8\n"
    assert os.stat(os.path.join(copy, b"script.sh")).st_mtime_ns // 10**9 == (
        snap.mtimes[b"script.sh"] // 10**9
    )


# --- damage -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["snap.tar", "snap.tar.zst", "snap.zip"])
def test_damaged_blob_fails_and_leaves_no_file(damaged: Source, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    with pytest.raises(DataCorruption):
        write_archive(damaged.pool, damaged.snapshot, str(damaged.root), str(out))
    assert list(tmp_path.iterdir()) == []


def test_damaged_blob_on_a_stream_never_looks_complete(damaged: Source) -> None:
    buffer = io.BytesIO()
    with pytest.raises(DataCorruption):
        write_archive(damaged.pool, damaged.snapshot, str(damaged.root), buffer, format="zip")
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(buffer.getvalue()))

    buffer = io.BytesIO()
    with pytest.raises(DataCorruption):
        write_archive(damaged.pool, damaged.snapshot, str(damaged.root), buffer)
    with (
        pytest.raises(tarfile.ReadError, match="unexpected end of data"),
        tarfile.open(fileobj=io.BytesIO(buffer.getvalue()), mode="r|") as tar,
    ):
        for member in tar:
            handle = tar.extractfile(member)
            if handle is not None:
                handle.read()


@pytest.mark.parametrize("format", ["tar", "tar.zst"])
def test_failure_on_a_stream_stops_inside_the_failing_file(
    snap: Source, monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    # The whole selection fits in tarfile's buffer, so this fails if that buffer is
    # dropped (empty output) or finished (complete-looking archive) instead of flushed.
    tree = bytes.fromhex(snap.snapshot.tree)
    deep = snap.pool.find_node(tree, str(snap.root / "sub" / "nested" / "deep.txt"))
    assert deep is not None and len(deep.content) == 1
    read_blob = snap.pool.read_blob

    def failing_read_blob(blob_id: bytes) -> bytes:
        if blob_id == deep.content[0]:
            raise DataCorruption(pack="test", reason="injected")
        return read_blob(blob_id)

    monkeypatch.setattr(snap.pool, "read_blob", failing_read_blob)
    buffer = io.BytesIO()
    with pytest.raises(DataCorruption, match="injected"):
        write_archive(snap.pool, snap.snapshot, str(snap.root / "sub"), buffer, format=format)
    data = buffer.getvalue()
    if format == "tar.zst":
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        data = decompressor.decompress(data)
        assert not decompressor.eof  # the frame was never ended
    seen = []
    with (
        pytest.raises(tarfile.ReadError, match="unexpected end of data"),
        tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar,
    ):
        for member in tar:
            seen.append(member.name)
            handle = tar.extractfile(member)
            if handle is not None:
                handle.read()
    assert seen == ["sub", "sub/nested", "sub/nested/deep.txt"]


# --- a backslash in a name: a separator to zip readers on Windows ----------------------

# Names a Linux host may hold; `\` is an ordinary character there (systemd's unit names
# escape with it: dev-disk-by\x2duuid-….swap).
ESCAPING = "a\\..\\..\\evil"  # on Windows, a zip member of this name would leave its folder


def _backslash_source(base: Path, *, clashes: bool) -> tuple[Path, Pool, Snapshot]:
    src = base / "src"
    (src / "dir\\with\\backslashes").mkdir(parents=True)
    (src / ESCAPING).write_bytes(b"kept\n")
    (src / "plain.txt").write_bytes(b"plain\n")
    (src / "dev-disk-by\\x2duuid-1.swap").write_bytes(b"[Swap]\n")
    (src / "dir\\with\\backslashes" / "inner\\file").write_bytes(b"inner\n")
    (src / "dir\\with\\backslashes" / "ok.txt").write_bytes(b"ok\n")
    if clashes:
        (src / "clash\\name").write_bytes(b"renamed would clash\n")
        (src / "clash_name").write_bytes(b"the real clash_name\n")
        (src / "p\\_q").write_bytes(b"first to become p__q\n")
        (src / "p_\\q").write_bytes(b"second to become p__q\n")
        (src / "d\\e").mkdir()
        (src / "d\\e" / "inside").write_bytes(b"left out with its directory\n")
        (src / "d_e").write_bytes(b"the real d_e\n")
    pool = Pool.init(LocalBackend(base / "pool"), passphrase="pw", pack_size=4 * 1024 * 1024)
    return src, pool, Archiver(pool, client="c", paths=[str(src)]).run()


@pytest.fixture(scope="module")
def backslashes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pool, Snapshot]:
    return _backslash_source(tmp_path_factory.mktemp("backslashes"), clashes=False)


@pytest.fixture(scope="module")
def clashing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Pool, Snapshot]:
    return _backslash_source(tmp_path_factory.mktemp("clashing"), clashes=True)


RENAMED = {
    "src/a_.._.._evil": b"kept\n",
    "src/dev-disk-by_x2duuid-1.swap": b"[Swap]\n",
    "src/dir_with_backslashes/inner_file": b"inner\n",
    "src/dir_with_backslashes/ok.txt": b"ok\n",
    "src/plain.txt": b"plain\n",
}


def _zip_contents(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zipped:
        return {info.filename: zipped.read(info) for info in zipped.infolist() if not info.is_dir()}


def test_zip_member_names_hold_no_backslash(
    backslashes: tuple[Path, Pool, Snapshot],
) -> None:
    src, pool, snapshot = backslashes
    buffer = io.BytesIO()
    progress = Recorder()
    result = write_archive(pool, snapshot, str(src), buffer, format="zip", progress=progress)

    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zipped:
        names = zipped.namelist()
    assert not any("\\" in name for name in names), names
    assert "src/dir_with_backslashes/" in names
    # Every file is there, its content kept, under its new name.
    assert _zip_contents(buffer.getvalue()) == RENAMED
    assert result.files == 5 and not result.refused
    # Each name that changed is reported once, with its path in the snapshot; what is
    # inside a renamed directory is under the new name without a report of its own.
    expected = [
        ("src/" + ESCAPING, "src/a_.._.._evil"),
        ("src/dev-disk-by\\x2duuid-1.swap", "src/dev-disk-by_x2duuid-1.swap"),
        ("src/dir\\with\\backslashes", "src/dir_with_backslashes"),
        ("src/dir\\with\\backslashes/inner\\file", "src/dir_with_backslashes/inner_file"),
    ]
    assert [(r["path"], r["archived_as"]) for r in result.renamed] == expected
    warned = [(path, message) for path, message in progress.warnings if "Windows" in message]
    assert [path for path, _message in warned] == [path for path, _name in expected]
    assert "archived as 'src/a_.._.._evil'" in warned[0][1]


def test_tar_keeps_a_backslash(backslashes: tuple[Path, Pool, Snapshot]) -> None:
    # A POSIX format, meant to keep names as the snapshot has them: `\` is no separator.
    src, pool, snapshot = backslashes
    buffer = io.BytesIO()
    progress = Recorder()
    result = write_archive(pool, snapshot, str(src), buffer, format="tar", progress=progress)
    names = _names(buffer)
    assert "src/" + ESCAPING in names
    assert "src/dir\\with\\backslashes/inner\\file" in names
    assert not result.renamed and not progress.warnings


def test_zip_dry_run_lists_the_new_names(backslashes: tuple[Path, Pool, Snapshot]) -> None:
    src, pool, snapshot = backslashes
    planned = archive_module.plan_archive(pool, snapshot, str(src), "x.zip", list_entries=True)
    assert planned.entries is not None
    listed = {entry["path"]: entry.get("archived_as") for entry in planned.entries}
    assert listed["src/" + ESCAPING] == "src/a_.._.._evil"
    assert listed["src/dir\\with\\backslashes/ok.txt"] is None  # its own name kept
    assert listed["src/plain.txt"] is None
    assert len(planned.renamed) == 4
    as_tar = archive_module.plan_archive(pool, snapshot, str(src), "x.tar", list_entries=True)
    assert as_tar.entries is not None and not as_tar.renamed
    assert not any("archived_as" in entry for entry in as_tar.entries)


def test_zip_of_a_path_with_a_backslash_and_a_selection(
    backslashes: tuple[Path, Pool, Snapshot],
) -> None:
    src, pool, snapshot = backslashes
    buffer = io.BytesIO()
    inside = str(src / "dir\\with\\backslashes")
    result = write_archive(pool, snapshot, inside, buffer, format="zip")
    assert _zip_contents(buffer.getvalue()) == {
        "dir_with_backslashes/inner_file": b"inner\n",
        "dir_with_backslashes/ok.txt": b"ok\n",
    }
    assert [r["archived_as"] for r in result.renamed] == [
        "dir_with_backslashes",
        "dir_with_backslashes/inner_file",
    ]
    # --include matches the names in the snapshot, not the archived ones.
    buffer = io.BytesIO()
    selection = Selection(["inner\\file"], [])
    write_archive(pool, snapshot, str(src), buffer, format="zip", selection=selection)
    assert _zip_contents(buffer.getvalue()) == {"src/dir_with_backslashes/inner_file": b"inner\n"}
    # The whole snapshot from its root: the directories leading to src keep their names.
    buffer = io.BytesIO()
    write_archive(pool, snapshot, "/", buffer, format="zip")
    prefix = str(src).lstrip("/")
    assert f"{prefix}/a_.._.._evil" in _zip_contents(buffer.getvalue())


def test_a_new_name_that_is_taken_is_refused(
    clashing: tuple[Path, Pool, Snapshot], tmp_path: Path
) -> None:
    # The name already in the directory keeps its entry; the renamed one (a directory
    # with what is in it) is refused, the rest archived, and the run fails (exit 1).
    src, pool, snapshot = clashing
    out = tmp_path / "out.zip"
    with pytest.raises(RestoreRefused) as raised:
        write_archive(pool, snapshot, str(src), str(out))
    refused = raised.value.fields["refused"]
    assert [entry["path"] for entry in refused] == ["src/clash\\name", "src/d\\e", "src/p_\\q"]
    assert "'clash_name' is taken in its directory" in refused[0]["reason"]
    contents = _zip_contents(out.read_bytes())
    assert contents == {
        **RENAMED,
        "src/clash_name": b"the real clash_name\n",
        "src/d_e": b"the real d_e\n",
        "src/p__q": b"first to become p__q\n",
    }
    with pytest.raises(RestoreRefused):
        archive_module.plan_archive(pool, snapshot, str(src), "x.zip")
    # A tar has no such clash.
    buffer = io.BytesIO()
    write_archive(pool, snapshot, str(src), buffer)
    assert "src/d\\e/inside" in _names(buffer)
