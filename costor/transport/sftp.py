"""Walking a host over SFTP, for hosts without python3 (the use case around it, with
what SFTP cannot give and what that costs, is :mod:`costor.ops.backup.sftp_pull`).

The walk produces the same entries as the helper (:class:`costor.protocol.Entry`) for
the same consumer (:class:`costor.transport.source.Consumer`); hooks run as plain SSH
commands.
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import stat
import time
from typing import TYPE_CHECKING, Any

from costor import protocol
from costor.errors import HostProtocolError, HostTimedOut, RemoteError
from costor.protocol import Entry, ExcludeMatcher

if TYPE_CHECKING:
    from costor.transport.source import Consumer
    from costor.transport.ssh import Remote

READ_SIZE = 4 * 1024 * 1024
ENTRY_OVERHEAD = 64  # bytes per listed entry counted as transferred (attrs + framing)


def run_hook(
    remote: Remote,
    phase: str,
    command: str,
    *,
    sudo: bool,
    timeout: float | None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runs one hook as a plain SSH command (under ``sudo -n`` if asked): its result as
    the helper reports one."""
    connection = remote.connection
    assert connection is not None
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
    full = f"sudo -n sh -c {shlex.quote(exports + command)}" if sudo else exports + command
    started = time.monotonic()

    async def run() -> Any:
        return await connection.run(full, timeout=timeout)

    try:
        result = remote.run(run())
        rc, out, err = result.exit_status, result.stdout, result.stderr
    except Exception as error:  # a timeout or a dropped connection
        rc, out, err = -1, "", f"{type(error).__name__}: {error}"
    return {
        "phase": phase,
        "command": command,
        "rc": rc if rc is not None else -1,
        "stdout": str(out or "")[-4096:],
        "stderr": str(err or "")[-4096:],
        "duration_s": round(time.monotonic() - started, 3),
    }


class SftpWalker:
    """Walks ``paths`` on the host over SFTP and feeds ``ingest`` the entries and the
    content it asks for; ``send`` reads one file whole (for what the walk left to
    fetch). ``transferred`` counts the bytes that came over. Every name and entry is
    checked (:mod:`costor.protocol`: :class:`HostProtocolError`), and every SFTP call
    (each read of a file) may wait ``io_timeout`` seconds (:class:`HostTimedOut`)."""

    def __init__(
        self,
        remote: Remote,
        sftp: Any,
        ingest: Consumer,
        paths: list[str],
        matcher: ExcludeMatcher,
        io_timeout: float = 600.0,
    ) -> None:
        self.remote = remote
        self.io_timeout = io_timeout
        self.check = protocol.WalkCheck()
        self.sftp = sftp
        self.ingest = ingest
        self.paths = paths
        self.matcher = matcher
        self.transferred = 0
        self.parent = {item.path: item for item in ingest.parent_files()}

    def call(self, coroutine: Any, *, whole: bool = False) -> Any:
        """Run one SFTP call (``whole``: a coroutine that bounds its own reads)."""
        try:
            if whole:
                return self.remote.run(coroutine)
            return self.remote.run(asyncio.wait_for(coroutine, self.io_timeout))
        except TimeoutError:
            raise HostTimedOut(
                host=self.ingest.client, seconds=f"{self.io_timeout:g}", doing="over SFTP"
            ) from None
        except OSError:
            raise
        except Exception as error:
            if type(error).__module__.startswith("asyncssh"):
                raise RemoteError(host=self.remote.target.display, reason=str(error)) from None
            raise

    def _entry(self, entry: Entry) -> str:
        """``entry`` given to the consumer once checked (the one check of every host's
        entries: :func:`costor.protocol.check_entry`, :class:`costor.protocol.WalkCheck`)."""
        try:
            self.check.entry(protocol.check_entry(entry))
        except protocol.Refused as refused:
            raise HostProtocolError(host=self.ingest.client, what=str(refused)) from None
        return self.ingest.entry(entry)

    def walk(self) -> None:
        spec: dict[str, Any] = {}
        for path in self.paths:
            parts = [p for p in path.split("/") if p]
            level = spec
            for part in parts[:-1]:
                level = level.setdefault(part, {})
                if level is True:
                    break
            else:
                if parts:
                    level[parts[-1]] = True
        self._entry(Entry("/", protocol.DIR, 0o755))
        if list(self.paths) == ["/"]:
            self.walk_dir("/")
        else:
            self.walk_virtual("/", spec)

    def walk_virtual(self, path: str, spec: dict[str, Any]) -> None:
        for name in sorted(spec, key=lambda n: n.encode("utf-8", "surrogateescape")):
            child = posixpath.join(path, name)
            attrs = self.lstat(child)
            if attrs is None:
                continue
            sub = spec[name]
            if sub is True:
                if not self.matcher.excluded(child, name):
                    self.add(child, attrs, "")
            elif stat.S_ISDIR(attrs.permissions or 0):
                self.emit(child, attrs, "", "")
                self.walk_virtual(child, sub)
            else:
                self.error(child, "is not a directory")

    def walk_dir(self, path: str) -> None:
        async def listing() -> Any:
            return await self.sftp.readdir(path)

        try:
            names = self.call(listing())
        except RemoteError:
            raise
        except Exception as error:
            self.error(path, f"cannot list directory: {error}")
            return
        names = [n for n in names if n.filename not in (".", "..", b".", b"..")]
        for entry in sorted(names, key=lambda n: _raw(n.filename)):
            name = _text(entry.filename)
            try:
                protocol.check_name(name, path)
            except protocol.Refused as refused:
                raise HostProtocolError(host=self.ingest.client, what=str(refused)) from None
            self.transferred += ENTRY_OVERHEAD + len(_raw(entry.filename))
            child = posixpath.join(path, name)
            if self.matcher.excluded(child, name):
                continue
            self.add(child, entry.attrs, _text(entry.longname or ""))

    def add(self, path: str, attrs: Any, longname: str) -> None:
        mode = attrs.permissions or 0
        if stat.S_ISDIR(mode):
            self.emit(path, attrs, "", longname)
            self.walk_dir(path)
            return
        if not stat.S_ISREG(mode):
            self.emit(path, attrs, "", longname)
            return
        known = self.parent.get(path)
        if (
            known is not None
            and known.size == attrs.size
            and known.mtime_ns // 10**9 == attrs.mtime
        ):
            self.emit(path, attrs, protocol.SAME, longname)
            return
        if self.emit(path, attrs, protocol.DATA_FOLLOWS, longname) == protocol.DATA_FOLLOWS:
            self.send(path, attrs)

    def emit(self, path: str, attrs: Any, state: str, longname: str) -> str:
        mode = attrs.permissions or 0
        user, group = _owners(longname)
        target = None
        if stat.S_ISLNK(mode):

            async def link() -> Any:
                return await self.sftp.readlink(path)

            try:
                target = _text(self.call(link()))
            except RemoteError:
                raise
            except Exception as error:
                target, state = "", f"{protocol.WARNING_PREFIX}cannot read link: {error}"
        kind = _kind(mode)
        entry = Entry(
            path,
            kind,
            mode=stat.S_IMODE(mode),
            uid=attrs.uid or 0,
            gid=attrs.gid or 0,
            user=user,
            group=group,
            size=attrs.size or 0 if kind == protocol.FILE else 0,
            mtime_ns=int(attrs.mtime or 0) * 10**9,
            links=attrs.nlink or 1,
            target=target,
            state=state,
        )
        return self._entry(entry)

    def send(self, path: str, before: Any = None) -> None:
        """Read ``path`` whole into its sink. ``before``: its attributes as the walk
        listed them (else the open file's, by fstat); with those after the read
        (fstat, asked with the read that should find the end: no round trip more),
        a file that changed meanwhile is reported as the helper reports one."""
        sink = self.ingest.content(path)
        whole = protocol.ContentDigest(self.ingest.key, large=sink.digest.large)
        size = 0
        after: Any = None

        async def read_all() -> None:
            nonlocal size, before, after
            wait = self.io_timeout
            async with await asyncio.wait_for(self.sftp.open(path, "rb"), wait) as handle:
                if before is None:
                    before = await asyncio.wait_for(handle.stat(), wait)
                expected = before.size or 0
                while True:
                    if size >= expected:
                        data, after = await asyncio.wait_for(
                            asyncio.gather(handle.read(READ_SIZE), handle.stat()), wait
                        )
                    else:
                        data = await asyncio.wait_for(handle.read(READ_SIZE), wait)
                    if not data:
                        break
                    size += len(data)
                    whole.update(data)
                    self.transferred += len(data)
                    sink.write(data)

        try:
            self.call(read_all(), whole=True)
        except RemoteError:
            raise
        except Exception as error:
            sink.finish({"error": f"cannot read: {error}"})
            return
        facts = [
            int(before.size or 0),
            int(before.mtime or 0) * 10**9,
            size,
            int(after.size or 0),
            int(after.mtime or 0) * 10**9,
        ]
        if not (facts[0] == size == facts[3] and facts[1] == facts[4]):
            try:
                protocol.check_changed_while_read(f"an SFTP file {path[:200]!r}", facts)
            except protocol.Refused as refused:
                raise HostProtocolError(host=self.ingest.client, what=str(refused)) from None
            self.ingest.changed_while_read(path, facts)
        sink.finish(whole.end(size))

    def lstat(self, path: str) -> Any:
        async def get() -> Any:
            return await self.sftp.lstat(path)

        try:
            return self.call(get())
        except RemoteError:
            raise
        except Exception as error:
            self.error(path, f"cannot stat: {error}")
            return None

    def error(self, path: str, message: str) -> None:
        self._entry(protocol.error_entry(path, message))


def _raw(name: Any) -> bytes:
    return name if isinstance(name, bytes) else str(name).encode("utf-8", "surrogateescape")


def _text(name: Any) -> str:
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else str(name)


def _owners(longname: str) -> tuple[str, str]:
    """User and group from an ``ls -l``-style long name (OpenSSH's SFTP listing)."""
    fields = longname.split()
    return (fields[2], fields[3]) if len(fields) >= 4 else ("", "")


def _kind(mode: int) -> str:
    for test, letter in (
        (stat.S_ISREG, protocol.FILE),
        (stat.S_ISDIR, protocol.DIR),
        (stat.S_ISLNK, protocol.SYMLINK),
        (stat.S_ISFIFO, protocol.FIFO),
        (stat.S_ISCHR, protocol.CHARDEV),
        (stat.S_ISBLK, protocol.BLOCKDEV),
    ):
        if test(mode):
            return letter
    return protocol.SOCKET
