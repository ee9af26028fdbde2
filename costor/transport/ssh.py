"""SSH to the hosts being backed up: connections with pinned host keys, the helper
process, SFTP. All SSH goes through asyncssh (one SSH stack for exec, SFTP and
forwarding); this is the only module that imports it.

CoStor's code is synchronous and threaded; asyncssh is asyncio. A :class:`Remote` runs
one event loop in its own thread for one host and offers blocking calls on it
(``run``), so callers stay simple. Many hosts at once: one ``Remote`` each.

Host keys are pinned: a connection is made only to a host presenting the key recorded
in the state (or pinned in the inventory); :func:`fetch_host_key` is the one way to
learn a key (``costor apply`` on first contact, ``costor hostkey accept``).

Ciphers: AES-GCM first (hardware AES; measured 534 MB/s over loopback against 384 MB/s
for chacha20-poly1305 with asyncssh on this project's 2-core test machine), then the
defaults.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes.util
import functools
import glob
import os
import queue
import shlex
import socket
import sys
import sysconfig
import threading
import zlib
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

from costor.errors import (
    HostKeyChanged,
    HostProtocolError,
    HostTimedOut,
    HostUnreachable,
    RemoteError,
)
from costor.protocol import FRAME_HEADER, HEARTBEAT, MAX_FRAME, Refused, check_heartbeat

T = TypeVar("T")


def _library_file(name: str) -> str | None:
    """``lib<name>.so.N`` as found in the loader's usual directories (and
    LD_LIBRARY_PATH), by its file name alone; None if there is none."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    directories = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for prefix in ("/usr/local/lib", "/usr/lib", "/lib"):
        directories += [f"{prefix}/{multiarch}"] if multiarch else []
        directories.append(prefix)
    directories += ["/usr/lib64", "/lib64"]
    for directory in directories:
        found = glob.glob(os.path.join(glob.escape(directory), f"lib{glob.escape(name)}.so.*"))
        if found:
            return os.path.basename(min(found, key=len))  # the soname, not the full version
    return None


@contextmanager
def _libraries_found_by_file_name() -> Iterator[None]:
    """While asyncssh is imported, on Linux: its optional libraries (liboqs for
    sntrup761, libnettle for UMAC) are looked up by file name in the usual directories.
    ``ctypes.util.find_library`` runs ldconfig and, for a library that is absent (liboqs,
    usually), gcc and ld as well: measured, ``import asyncssh`` took 215 ms (median of 8)
    with it and 134 ms with this, on the 2-core test machine, paid by every ``costor
    backup`` of a host. A library not found so is left out, as asyncssh does when it is
    missing (ML-KEM key exchange comes from cryptography, not liboqs)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    original = ctypes.util.find_library
    ctypes.util.find_library = _library_file
    try:
        yield
    finally:
        ctypes.util.find_library = original


with _libraries_found_by_file_name():
    import asyncssh

ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]
CONNECT_TIMEOUT = 15.0
IO_TIMEOUT = 600.0  # the default of a client's ssh.io_timeout_s (costor/config/model.py)
# The command that runs the helper: it executes the first line it reads, which loads the
# rest. No quote, comma, colon or equals sign needs escaping in a sudoers or
# authorized_keys line (docs/ssh.md), and nothing is written on the host.
BOOTSTRAP = "exec(__import__('sys').stdin.buffer.readline())"


@dataclass(frozen=True)
class Target:
    """How to reach one host."""

    client: str
    host: str
    port: int = 22
    user: str | None = None
    private_key: str | None = None  # key material (OpenSSH/PEM); None: the agent/defaults
    jump: str | None = None  # [user@]host[:port], its key trusted from ~/.ssh/known_hosts
    sudo: bool = False
    python: str = "python3"

    @property
    def display(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"{who}{self.host}{port}"


@dataclass(frozen=True)
class HostKey:
    openssh: str  # "ssh-ed25519 AAAA…"
    fingerprint: str  # "SHA256:…"

    @classmethod
    def parse(cls, text: str) -> HostKey:
        key = asyncssh.import_public_key(text.strip())
        return cls(key.export_public_key().decode().strip(), key.get_fingerprint("sha256"))


@functools.cache  # read once a process: a daemon's jobs send what it was started with
def helper_source() -> bytes:
    return resources.files("costor.transport").joinpath("helper.py").read_bytes()


@functools.cache
def compressed_helper() -> bytes:
    return zlib.compress(helper_source(), 9)  # ~2.5 ms: once, not on every pull's start


def _acknowledge_at_once(connection: asyncssh.SSHClientConnection) -> None:
    """ACK every segment from the server at once (TCP_QUICKACK), not after the 40 ms of
    delayed ACK. Why: sshd leaves Nagle's algorithm on until a session starts, and after
    authentication it sends small messages the client has no reason to answer (its host
    keys, debug notes on the key's options); the confirmation of the first channel then
    waits behind them for the client's delayed ACK. The helper's start took ~46 ms so on
    loopback, ~3 ms with this. Linux clears the flag as it goes, so it is set again on
    every read (one setsockopt a read). Elsewhere, or through a jump host (no socket of
    our own), nothing changes."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    sock = connection.get_extra_info("socket")
    if quickack is None or sock is None:
        return
    received = connection.data_received

    def data_received(data: bytes, datatype: Any = None) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass  # the connection is closing: its reads end anyway
        received(data, datatype)

    try:
        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
    except OSError:
        return
    connection.data_received = data_received  # type: ignore[method-assign]


class Remote:
    """One host: an event loop thread, and blocking calls run on it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"ssh-{target.client}", daemon=True
        )
        self.thread.start()
        self.connection: asyncssh.SSHClientConnection | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        async def shut() -> None:
            if self.connection is not None:
                self.connection.close()
                await self.connection.wait_closed()

        try:
            self.run(shut(), timeout=10)
        except Exception:  # closing is best effort: the host may be gone
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connecting --------------------------------------------------------------------

    def fetch_host_key(self) -> HostKey:
        """The key the host presents, trusting nothing (first contact)."""
        return self.run(self._fetch_host_key())

    async def _fetch_host_key(self) -> HostKey:
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    self.target.host, self.target.port, tunnel=self.target.jump or ()
                ),
                CONNECT_TIMEOUT,
            )
        except (TimeoutError, OSError, asyncssh.Error) as error:
            raise HostUnreachable(host=self.target.display, reason=_reason(error)) from None
        if key is None:
            raise HostUnreachable(host=self.target.display, reason="no host key presented")
        return HostKey(key.export_public_key().decode().strip(), key.get_fingerprint("sha256"))

    def connect(self, host_key: HostKey, *, compress: bool = False) -> None:
        """Connect, trusting only ``host_key``; a different key is :class:`HostKeyChanged`.
        ``compress``: SSH's zlib compression (for SFTP; the helper compresses itself).
        A connection already open is closed first."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        self.connection = self.run(self._connect(host_key, compress))

    async def _connect(self, host_key: HostKey, compress: bool) -> asyncssh.SSHClientConnection:
        target = self.target
        trusted = asyncssh.import_public_key(host_key.openssh)
        options: dict[str, Any] = {
            "port": target.port,
            "known_hosts": ([trusted], [], []),
            "encryption_algs": ENCRYPTION_ALGS,
            "compression_algs": ["zlib@openssh.com", "zlib", "none"] if compress else ["none"],
            "keepalive_interval": 15,
            "keepalive_count_max": 4,
            "connect_timeout": CONNECT_TIMEOUT,
        }
        if target.user:
            options["username"] = target.user
        if target.private_key is not None:
            options["client_keys"] = [asyncssh.import_private_key(target.private_key)]
        if target.jump:
            options["tunnel"] = target.jump
        try:
            connection = await asyncssh.connect(target.host, **options)
        except asyncssh.HostKeyNotVerifiable:
            try:
                presented = await self._fetch_host_key()
            except HostUnreachable:
                presented = HostKey("?", "an unknown key")
            raise HostKeyChanged(
                host=target.display,
                client=target.client,
                recorded=host_key.fingerprint,
                presented=presented.fingerprint,
            ) from None
        except asyncssh.PermissionDenied as error:
            raise RemoteError(
                host=target.display, reason=f"authentication failed ({error.reason})"
            ) from None
        except (TimeoutError, OSError, asyncssh.Error) as error:
            raise HostUnreachable(host=target.display, reason=_reason(error)) from None
        _acknowledge_at_once(connection)
        return connection

    # --- the helper ----------------------------------------------------------------------

    def start_helper(self, io_timeout: float = IO_TIMEOUT) -> HelperProcess:
        """Start the helper. A host without python3 is told by the first exchange failing
        (``costor.ops.backup.pull`` then falls back to SFTP). ``io_timeout``: how long
        any read from it or write to it may wait (:class:`HostTimedOut`)."""
        helper = self.run(self._start_helper())
        helper.io_timeout = io_timeout
        return helper

    async def _start_helper(self) -> HelperProcess:
        assert self.connection is not None
        target = self.target
        command = f"{shlex.quote(target.python)} -c {shlex.quote(BOOTSTRAP)}"
        if target.sudo:
            command = f"sudo -n {command}"
        process = await self.connection.create_process(command, encoding=None)
        source = compressed_helper()
        loader = f"import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read({len(source)})))\n"
        helper = HelperProcess(self, process)
        try:
            process.stdin.write(loader.encode() + source)
            await process.stdin.drain()
        except (OSError, asyncssh.Error):
            pass  # the process is gone: its exit status says why, below
        helper.bytes_sent += len(loader) + len(source)
        return helper

    def sftp(self, io_timeout: float = IO_TIMEOUT) -> Any:
        """An SFTP client (the fallback without python3); its calls go through ``run``.
        A host whose SFTP server does not start within ``io_timeout`` is :class:`HostTimedOut`."""
        connection = self.connection
        assert connection is not None

        async def start() -> Any:
            try:
                return await asyncio.wait_for(connection.start_sftp_client(), io_timeout)
            except TimeoutError:
                raise HostTimedOut(
                    host=self.target.client, seconds=f"{io_timeout:g}", doing="starting SFTP"
                ) from None

        return self.run(start())

    def extract_tar(self, directory: str, io_timeout: float = IO_TIMEOUT) -> TarExtract:
        """A ``tar -x`` on the host into ``directory`` (made if missing), fed what is
        written to the returned stream: how a restore reaches a host (the archive is the
        engine's own, so no second restore protocol). The host's GNU tar refuses member
        names with ``..`` or a leading ``/`` and defers symbolic links that point outside
        until the end, and ``--no-overwrite-dir`` keeps the modes of directories that
        exist; with ``ssh.sudo`` it runs as root and keeps the owners."""
        connection = self.connection
        assert connection is not None
        quoted = shlex.quote(directory)
        script = f"mkdir -p -- {quoted} && exec tar -x -f - --no-overwrite-dir -C {quoted}"
        command = f"sh -c {shlex.quote(script)}"
        if self.target.sudo:
            command = f"sudo -n {command}"

        async def start() -> Any:
            return await connection.create_process(command, encoding=None)

        return TarExtract(self, self.run(start()), io_timeout)

    def exit_status(self, process: Any) -> tuple[int | None, str]:
        async def wait() -> tuple[int | None, str]:
            await process.wait_closed()
            stderr = await process.stderr.read()
            return process.exit_status, stderr.decode("utf-8", "replace")

        return self.run(wait(), timeout=30)


class TarExtract:
    """The writable end of :meth:`Remote.extract_tar` (a binary stream for the archive
    writer): each write waits until the host took it, at most ``io_timeout`` seconds;
    :meth:`close` ends the input and raises :class:`RemoteError` with tar's message when
    tar failed (a full disk, a directory it may not write)."""

    def __init__(self, remote: Remote, process: Any, io_timeout: float) -> None:
        self.remote, self.process, self.io_timeout = remote, process, io_timeout
        self.bytes_sent = 0
        self.closed = False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        async def send() -> None:
            self.process.stdin.write(bytes(data))
            await self.process.stdin.drain()

        try:
            self.remote.run(send(), timeout=self.io_timeout)
        except TimeoutError:
            raise HostTimedOut(
                host=self.remote.target.client,
                seconds=f"{self.io_timeout:g}",
                doing="writing the restore",
            ) from None
        except (OSError, asyncssh.Error):
            self._fail()  # tar is gone: its exit status and message say why
        self.bytes_sent += len(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        async def end() -> None:
            self.process.stdin.write_eof()

        try:
            self.remote.run(end(), timeout=30)
        except (OSError, asyncssh.Error):
            pass  # already gone: the status below says why
        status, message = self.remote.exit_status(self.process)
        if status != 0:
            raise RemoteError(
                host=self.remote.target.display,
                reason=f"tar on the host failed (exit {status}): {message.strip()[-500:]}",
            )

    def _fail(self) -> None:
        self.closed = True
        status, message = self.remote.exit_status(self.process)
        raise RemoteError(
            host=self.remote.target.display,
            reason=f"tar on the host stopped (exit {status}): {message.strip()[-500:]}",
        )


class HelperProcess:
    """The helper on the host: frames in and out, every byte counted.

    A reader task on the host's event loop reads frames as they arrive into a queue, so
    the receiving thread takes them without a round trip through the loop each (that
    hand-off cost ~0.1 ms per frame, most of an incremental pull of small files). It
    reads what the channel holds (up to :attr:`READ_SIZE`) and cuts every whole frame
    out of it at once: one read and one hand-off for many small frames, where reading
    each header and payload on its own cost two reads and a hand-off per frame (a first
    pull of 20,000 small files is ~45,000 frames).

    What the host can make the server hold is bounded: a frame's length is checked
    before its payload is read (:data:`costor.protocol.MAX_FRAME`), and the frames read
    ahead hold at most :attr:`QUEUED_BYTES` (or one read's frames). A read that waits longer
    than ``io_timeout`` seconds for the host fails the backup (:class:`HostTimedOut`)."""

    QUEUED_FRAMES = 256  # batches of frames read ahead, bounded: a slow consumer holds
    QUEUED_BYTES = 64 * 1024 * 1024  # the helper back; and by their size
    READ_SIZE = 256 * 1024  # asked of the channel at a time (it answers with what it has)

    def __init__(self, remote: Remote, process: Any) -> None:
        self.remote = remote
        self.process = process
        self.bytes_sent = 0
        self.bytes_received = 0
        self.io_timeout = IO_TIMEOUT
        self.frames: queue.Queue[list[tuple[bytes, bytes]] | BaseException] = queue.Queue(
            self.QUEUED_FRAMES
        )
        self._ready: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.reader: asyncio.Future[None] | None = None
        self._queued = 0  # bytes of the frames in the queue
        self._room = threading.Condition()
        self._closed = False

    def start_reading(self) -> None:
        self.reader = asyncio.run_coroutine_threadsafe(self._read_frames(), self.remote.loop)  # type: ignore[assignment]

    async def _read_frames(self) -> None:
        unread = bytearray()  # read from the channel, not yet cut into frames
        while not self._closed:
            try:
                item: list[tuple[bytes, bytes]] | BaseException = await self._recv_frames(unread)
            except BaseException as error:  # handed to the consumer, which raises it
                item = error
            if not self._reserve(item, wait=False):
                await asyncio.to_thread(self._reserve, item, wait=True)
            if isinstance(item, BaseException):
                return

    async def _recv_frames(self, unread: bytearray) -> list[tuple[bytes, bytes]]:
        """The whole frames ``unread`` holds once it holds at least one, reading from
        the channel as needed (the bytes of a frame not whole yet stay in ``unread``).
        A frame's length is checked as soon as its header is there, before its payload
        is waited for (:data:`costor.protocol.MAX_FRAME`): at most one frame and one
        read are ever held unqueued."""
        while True:
            frames: list[tuple[bytes, bytes]] = []
            offset, size = 0, len(unread)
            while size - offset >= 5:
                kind, length = FRAME_HEADER.unpack_from(unread, offset)
                if length > MAX_FRAME:
                    if frames:
                        break  # the frames before it first; it is refused next time
                    raise HostProtocolError(
                        host=self.remote.target.client,
                        what=f"a frame of {length} bytes (at most {MAX_FRAME})",
                    )
                end = offset + 5 + length
                if end > size:
                    break
                frames.append((kind, bytes(unread[offset + 5 : end])))
                offset = end
            if offset:
                del unread[:offset]
                self.bytes_received += offset
            if frames:
                return frames
            try:
                data = await self.process.stdout.read(self.READ_SIZE)
            except (OSError, asyncssh.Error) as error:
                raise self._lost(error) from None
            if not data:
                raise self._lost(asyncio.IncompleteReadError(bytes(unread), None))
            unread += data

    def _reserve(self, item: list[tuple[bytes, bytes]] | BaseException, *, wait: bool) -> bool:
        """Queue ``item`` when its bytes fit (or nothing is queued); ``wait``: until then
        (or until the helper is closed)."""
        size = 0 if isinstance(item, BaseException) else _payload_bytes(item)
        with self._room:
            while self._queued and self._queued + size > self.QUEUED_BYTES:
                if not wait or self._closed:
                    return self._closed
                self._room.wait(1.0)
            try:
                self.frames.put_nowait(item)
            except queue.Full:
                if not wait:
                    return False
            else:
                self._queued += size
                return True
        while not self._closed:  # the queue is full of small frames: wait for a place
            try:
                self.frames.put(item, timeout=1.0)
            except queue.Full:
                continue
            with self._room:
                self._queued += size
            return True
        return True

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.remote.run(self._send(kind, payload))

    async def _send(self, kind: bytes, payload: bytes) -> None:
        try:
            self.process.stdin.write(FRAME_HEADER.pack(kind, len(payload)) + payload)
            await asyncio.wait_for(self.process.stdin.drain(), self.io_timeout)
        except TimeoutError:
            raise self._timed_out(
                self.io_timeout, "it stopped reading what the server sends"
            ) from None
        except (OSError, asyncssh.Error, BrokenPipeError) as error:
            raise self._lost(error) from None
        self.bytes_sent += 5 + len(payload)

    def recv(self, *, extra: float = 0, doing: str = "") -> tuple[bytes, bytes]:
        """The next frame, waiting at most ``io_timeout`` (plus ``extra``: a hook's own
        timeout while hooks run) seconds for it. Heartbeats are taken and dropped here,
        wherever they come (:data:`costor.protocol.HEARTBEAT`): each one shows the host
        alive and busy, and the wait for the next frame starts again."""
        timeout = self.io_timeout + extra
        while True:
            kind, payload = self._next(timeout, doing)
            if kind != HEARTBEAT:
                return kind, payload
            try:
                check_heartbeat(payload)
            except Refused as refused:
                raise HostProtocolError(host=self.remote.target.client, what=str(refused)) from None

    def _next(self, timeout: float, doing: str) -> tuple[bytes, bytes]:
        if self._ready:
            return self._ready.popleft()
        if self.reader is None:
            return self.remote.run(self._recv(timeout, doing))
        try:
            item = self.frames.get(timeout=timeout)
        except queue.Empty:
            raise self._timed_out(timeout, doing) from None
        if isinstance(item, BaseException):
            self.frames.put(item)  # every later recv fails the same way
            raise item
        with self._room:
            self._queued -= _payload_bytes(item)
            self._room.notify()
        self._ready.extend(item)
        return self._ready.popleft()

    async def _recv(self, timeout: float | None = None, doing: str = "") -> tuple[bytes, bytes]:
        # The reader task waits without a timeout: the consumer's wait is what counts
        # (the host may rightly be idle while the server works).
        try:
            header = await asyncio.wait_for(self.process.stdout.readexactly(5), timeout)
            kind, length = FRAME_HEADER.unpack(header)
            if length > MAX_FRAME:
                raise HostProtocolError(
                    host=self.remote.target.client,
                    what=f"a frame of {length} bytes (at most {MAX_FRAME})",
                )
            payload = await asyncio.wait_for(
                self.process.stdout.readexactly(length) if length else _nothing(), timeout
            )
        except TimeoutError:
            raise self._timed_out(timeout or 0, doing or "at its start") from None
        except (asyncio.IncompleteReadError, OSError, asyncssh.Error) as error:
            raise self._lost(error) from None
        self.bytes_received += 5 + length
        return kind, payload

    def _timed_out(self, seconds: float, doing: str) -> HostTimedOut:
        return HostTimedOut(
            host=self.remote.target.client, seconds=f"{seconds:g}", doing=doing or "waiting"
        )

    def _lost(self, error: BaseException) -> RemoteError:
        return RemoteError(
            host=self.remote.target.display,
            reason=f"the connection to the helper was lost ({_reason(error)})",
        )

    def stop_reading(self) -> None:
        """No one takes frames any more (the backup ended, or failed): the reader stops
        waiting for room in the queue."""
        with self._room:
            self._closed = True
            self._room.notify_all()

    def close(self) -> tuple[int | None, str]:
        self.stop_reading()
        try:
            self.remote.run(self._close(), timeout=30)
        except Exception:
            pass
        try:
            return self.remote.exit_status(self.process)
        except Exception:
            return None, ""

    async def _close(self) -> None:
        self.process.stdin.write_eof()


async def _nothing() -> bytes:
    return b""


def _payload_bytes(frames: list[tuple[bytes, bytes]]) -> int:
    return sum(len(payload) for _kind, payload in frames)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, asyncio.IncompleteReadError):
        return "the connection was closed"
    text = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
    return str(text) or type(error).__name__
