"""A real OpenSSH server for the tests (real parts, not mocks): Debian's ``/usr/sbin/sshd`` on a
free loopback port, with its own host key and ``authorized_keys``.

Users: ``root``; ``costortest`` (an ordinary user, created if missing: the tests run as
root, as CI does); ``nopython`` (whose sessions get ``PATH=/nonexistent``, so that
``python3`` is not found: the SFTP fallback). A test that needs root-only data read by
``costortest`` uses ``sudo`` with the sudoers line of docs/ssh.md.

Files a remote user must read cannot live under pytest's ``tmp_path`` (its parent is
mode 0700): :func:`remote_dir` makes a world-readable directory in /tmp.

:func:`running_sshd` starts one: the session's ``sshd`` fixture, and any test that needs
its own server (a hostile host whose key forces a command: :meth:`Sshd.force_command`).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.fixtures import Site
from support.inventory import BASE_TABLES, ssh_client, write_tables

SSHD = "/usr/sbin/sshd"
USERS = ("root", "costortest", "nopython")
USERS_LOCK = "/tmp/costor-test-users.lock"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_user(name: str) -> None:
    if name == "root":
        return
    # One process at a time (parallel test workers start their sshd at once): useradd and
    # usermod fail while another holds /etc/passwd's lock.
    with open(USERS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["id", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
        # A new account's password field is "!" (locked), which sshd refuses without PAM;
        # "*" allows key logins and no password.
        subprocess.run(["usermod", "-p", "*", name], check=True)


@dataclass
class Sshd:
    root: Path
    port: int
    client_key: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.root / "host_key"

    def config(self) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {self.host_key}",
                f"AuthorizedKeysFile {self.root}/authorized_keys",
                f"PidFile {self.root}/sshd.pid",
                "UsePAM no",
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "MaxStartups 100",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                "Match User nopython",
                "    SetEnv PATH=/nonexistent",
                "",
            ]
        )

    def start(self) -> None:
        (self.root / "sshd_config").write_text(self.config())
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115  (kept open for sshd)
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
            self.process = None

    def new_host_key(self) -> None:
        """The host is "reinstalled": a new host key, sshd restarted."""
        self.stop()
        self.host_key.unlink()
        Path(str(self.host_key) + ".pub").unlink()
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True
        )
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "sshd.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def force_command(self, command: str) -> None:
        """The client key runs ``command`` (without a pty) whatever the client asks: a
        host that does what the test says. Read by sshd at each login."""
        key = Path(str(self.client_key) + ".pub").read_text().strip()
        (self.root / "authorized_keys").write_text(f'command="{command}",no-pty {key}\n')

    def kill_sessions(self, user: str) -> None:
        """Drop every SSH session of ``user`` on this server (a network cut, seen from
        CoStor): its helpers are killed. Other servers' sessions (another test worker's
        sshd) are left alone."""
        assert self.process is not None
        uid = pwd.getpwnam(user).pw_uid
        for pid in _descendants(self.process.pid):
            try:
                owner = os.stat(f"/proc/{pid}").st_uid
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                if owner == uid and b"stdin.buffer.readline" in command:
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                continue  # ended meanwhile


def _descendants(root: int) -> set[int]:
    """The processes under ``root`` (children, their children …), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)"
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


# The start of a forced command that wraps the shipped helper (tests/transport's hostile
# and busy hosts): it reads the loader line and the compressed helper the server sends,
# runs the helper's code (not as __main__) into ``helper``, and reads the test's chosen
# behaviour from the file ``mode`` beside the script. The test's code follows it.
WRAPPED_HELPER = r"""
import os, sys, zlib

MODE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mode")).read().strip()
stdin = sys.stdin.buffer
line = stdin.readline()
size = int(line.split(b"read(")[1].split(b")")[0])
source = b""
while len(source) < size:
    source += stdin.read(size - len(source))
helper = {"__name__": "wrapped"}
exec(compile(zlib.decompress(source), "helper.py", "exec"), helper)
"""


@contextmanager
def running_sshd(
    prefix: str = "costor-sshd-", *, prepare: Callable[[Sshd], None] | None = None
) -> Iterator[Sshd]:
    """An sshd on a free loopback port, in a new world-readable directory of /tmp named
    ``prefix…``: new host and client keys, the client key authorized. ``prepare`` runs
    before the start (write files beside it, :meth:`Sshd.force_command`). Stopped and
    removed on leaving. Skips the test where sshd is missing or not run as root."""
    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is not installed (scripts/test.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("the SSH tests run sshd (and create users): they need root")
    Path("/run/sshd").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        root.chmod(0o755)
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)],
                check=True,
            )
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        (root / "authorized_keys").chmod(0o644)
        server = Sshd(root, free_port(), root / "client_key")
        if prepare is not None:
            prepare(server)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    with running_sshd("costor-sshd-", prepare=lambda _server: _ensure_users()) as server:
        yield server


def _ensure_users() -> None:
    for user in USERS:
        ensure_user(user)


@pytest.fixture
def remote_dir() -> Iterator[Path]:
    """A directory every test user can read (and ``costortest`` can write)."""
    path = Path(tempfile.mkdtemp(prefix="costor-remote-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- sites pulled from it -------------------------------------------------------------


def ssh_site(root: Path, sshd: Sshd, clients: dict[str, dict[str, Any]]) -> Site:
    """An inventory in ``root`` (the base site and pool) with clients pulled over SSH from
    ``sshd``: ``{name: {"paths": [...], "user", "host", "port", "ssh_extra", "extra"}}``
    (see :func:`support.inventory.ssh_client`; ``extra``: more lines of the client)."""
    tables = [*BASE_TABLES]
    for name, options in clients.items():
        extra = [str(options["extra"])] if options.get("extra") else []
        tables.append(
            ssh_client(
                name,
                sshd,
                options["paths"],
                *extra,
                user=options.get("user", "root"),
                host=options.get("host", "127.0.0.1"),
                port=options.get("port"),
                ssh_extra=options.get("ssh_extra", ""),
            )
        )
    return Site(root, write_tables(root, *tables), root / "pool")


def make_tree(root: Path) -> Path:
    """A small tree a remote user can read: text, binary (5 MiB), empty, a symbolic and a
    hard link, a 0640 file."""
    src = root / "src"
    (src / "etc" / "deep").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n" * 50)
    (src / "etc" / "deep" / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 3))
    (src / "etc" / "empty").write_bytes(b"")
    (src / "link").symlink_to("etc/hosts")
    os.link(src / "etc" / "hosts", src / "hardlink")
    os.chmod(src / "etc" / "hosts", 0o640)
    for path in [src, *src.rglob("*")]:
        if not path.is_symlink() and path.is_dir():
            path.chmod(0o755)
    return src
