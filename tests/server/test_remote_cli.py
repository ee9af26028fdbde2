"""`costor --server https://127.0.0.1:PORT VERB` against a real `costor serve` with TLS:
a test CA made here signs the site's certificate (127.0.0.1 and localhost). The remote
CLI prints what the local one prints (the same bytes for --json, the same archive),
pins the certificate at first use, refuses a changed one (exit 6, naming the line to
delete), verifies against --server-ca instead, fails as the site's error says (a wrong
token: NotAuthenticated's exit code and message), shows an end user's token only its
client, and queues, follows and cancels jobs. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import ENV, free_port, stop_serve
from support.fixtures import CliResult, Site
from support.inventory import local_tables, site_table, write_tables
from support.tlsca import Authority

from costor.cli.main import main, verb_of
from costor.errors import SERVER_CERTIFICATE_CHANGED_EXIT, NotAuthenticated

USERS = """
[policies.nightly]
schedule = "0 2 * * *"

[groups.admins]
roles = ["admin"]

[groups.alpha-owners]
roles = ["end-user"]
clients = ["alpha"]

[users.alice]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.carol]
groups = ["alpha-owners"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""


# --- the served site --------------------------------------------------------------------


class Served:
    """The site served over TLS, its local CLI, and `costor --server` against it."""

    def __init__(self, site: Site, port: int, authority: Authority, fingerprint: str) -> None:
        self.site = site
        self.port = port
        self.url = f"https://127.0.0.1:{port}"
        self.authority = authority
        self.fingerprint = fingerprint
        self.tokens: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = self.site.process("serve", "--tick", "0.2", env=ENV)
        context = ssl.create_default_context(cafile=str(self.authority.path))
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", verify=context, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"costor serve exited: {self.process.communicate()[1]!r}")
            assert time.monotonic() < deadline, "costor serve did not answer /healthz"
            time.sleep(0.1)

    def stop(self) -> None:
        assert self.process is not None
        stop_serve(self.process)
        self.process = None

    def local(self, *args: str) -> CliResult:
        """``costor ARGS`` on the site itself (in this process)."""
        return self.site.cli(*args)

    def remote(
        self,
        *args: str,
        token: str | None = "admin",
        known: Path,
        top: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        stdout_bytes: bool = False,
    ) -> RemoteResult:
        """``costor --server URL ARGS`` as its own process, away from the site's
        inventory (its working directory and -c name none), with the token ``token``
        and the known-servers file ``known``."""
        full_env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("COSTOR_TOKEN", "COSTOR_SERVER", "COSTOR_SERVER_CA", "COSTOR_INVENTORY")
        }
        full_env["COSTOR_KNOWN_SERVERS"] = str(known)
        if token is not None:
            full_env["COSTOR_TOKEN"] = self.tokens.get(token, token)
        full_env.update(env or {})
        completed = subprocess.run(
            [sys.executable, "-m", "costor", "--server", self.url, *top, *args],
            capture_output=True,
            env=full_env,
            cwd=known.parent.parent,
            timeout=300,
            check=False,
        )
        return RemoteResult(completed.returncode, completed.stdout, completed.stderr.decode())


@dataclass
class RemoteResult:
    code: int
    out: bytes
    stderr: str

    @property
    def stdout(self) -> str:
        return self.out.decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("remote")
    sources = {}
    for name in ("alpha", "beta"):
        source = root / f"src-{name}"
        (source / "docs" / "deep").mkdir(parents=True)
        (source / "docs" / "readme.txt").write_text(f"hello {name}\n" * 50)
        (source / "docs" / "deep" / "data.bin").write_bytes(os.urandom(100_000))
        (source / "docs" / "link").symlink_to("readme.txt")
        (source / "top.txt").write_text("top\n")
        sources[name] = [source]
    authority = Authority.make(root)
    fingerprint = authority.issue(root / "site.crt", root / "site.key")
    port = free_port()
    tables = local_tables(sources)
    tables[0] = site_table(
        "hq", f'listen = "127.0.0.1:{port}"', 'tls = { cert = "site.crt", key = "site.key" }'
    )
    tables = [
        t.replace("\n", '\npolicy = "nightly"\n', 1) if t.startswith("[clients.") else t
        for t in tables
    ]
    inventory = write_tables(root, *tables, USERS)
    site = Site(root, inventory, root / "pool")
    served = Served(site, port, authority, fingerprint)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        for name in ("alpha", "beta", "alpha"):
            result = site.cli("backup", name)
            assert result.code == 0, result.stderr
        for name, args in {
            "admin": ("--user", "alice", "--scope", "admin"),
            "carol": ("--user", "carol", "--scope", "read"),
        }.items():
            result = site.cli("token", "create", *args)
            assert result.code == 0, result.stderr
            served.tokens[name] = result.stdout.strip()
        served.start()
        try:
            yield served
        finally:
            if served.process is not None:
                served.stop()


@pytest.fixture
def known(tmp_path: Path) -> Path:
    """A known-servers file of this test's own (it does not exist yet)."""
    return tmp_path / "config" / "known_servers"


def pinned(known: Path, served: Served) -> None:
    known.parent.mkdir(parents=True, exist_ok=True)
    known.write_text(f"127.0.0.1:{served.port} {served.fingerprint}\n")


def _without_ages(document: dict[str, Any]) -> dict[str, Any]:
    """The status document without what moves with the clock between two reads: each
    client's age, each serve instance's heartbeat."""
    loaded: dict[str, Any] = json.loads(json.dumps(document))
    for client in loaded["clients"]:
        client.pop("age_s")
    for instance in loaded["instances"]:
        instance.pop("heartbeat_at", None)
    return loaded


# --- the tests ---------------------------------------------------------------------------


def test_first_use_pins_the_certificate_and_says_so(served: Served, known: Path) -> None:
    result = served.remote("snapshots", "--json", known=known)
    assert result.code == 0, result.stderr
    assert f"127.0.0.1:{served.port} is a new site server here" in result.stderr
    assert served.fingerprint in result.stderr and str(known) in result.stderr
    assert known.read_text() == f"127.0.0.1:{served.port} {served.fingerprint}\n"
    assert oct(known.stat().st_mode & 0o777) == oct(0o600)
    again = served.remote("snapshots", "--json", known=known)
    assert again.code == 0 and "new site server" not in again.stderr
    assert again.out == result.out
    assert known.read_text().count("\n") == 1  # pinned once


def test_outputs_equal_the_local_cli(served: Served, known: Path, tmp_path: Path) -> None:
    pinned(known, served)
    for args in [
        ("snapshots", "--json"),
        ("snapshots",),
        ("snapshots", "--client", "beta", "--json"),
        ("ls", "alpha:latest", "--json"),
        ("ls", "alpha:latest"),
        ("ls", "alpha:latest", "/", "-l"),
        ("ls", "beta:latest", str(served.site.root / "src-beta" / "docs"), "--json"),
        ("jobs", "--json"),
        ("jobs",),
    ]:
        local = served.local(*args)
        remote = served.remote(*args, known=known)
        assert local.code == 0 and remote.code == 0, (args, local.stderr, remote.stderr)
        assert remote.stdout == local.stdout, args
        assert remote.stderr == "", (args, remote.stderr)
    local, remote = served.local("status", "--json"), served.remote("status", "--json", known=known)
    assert local.code == remote.code == 0
    assert _without_ages(json.loads(remote.out)) == _without_ages(local.json())
    status = served.remote("status", known=known)
    assert status.code == 0 and status.stdout.startswith("health: ")
    assert "alpha" in status.stdout and "beta" in status.stdout


def test_restore_archive_downloads_the_same_archive(
    served: Served, known: Path, tmp_path: Path
) -> None:
    pinned(known, served)
    site = served.site
    for name in ("out.tar", "out.tar.zst", "docs.zip"):
        path = "/" if name != "docs.zip" else str(site.root / "src-alpha" / "docs")
        local = site.cli("restore", "alpha:latest", path, "--archive", str(tmp_path / f"l-{name}"))
        assert local.code == 0, local.stderr
        remote = served.remote(
            "restore", "alpha:latest", path, "--archive", str(tmp_path / f"r-{name}"), known=known
        )
        assert remote.code == 0, remote.stderr
        assert remote.stdout == local.stdout.replace("/l-", "/r-"), name
        if name != "docs.zip":  # a zip written to a file has its sizes elsewhere: same members
            assert (tmp_path / f"r-{name}").read_bytes() == (tmp_path / f"l-{name}").read_bytes()
    # --json: the local document (the site's writer left nothing out here)
    local = site.cli(
        "restore", "beta:latest", "--archive", str(tmp_path / "l.tar.zst"), "--json"
    ).json()
    remote = served.remote(
        "restore", "beta:latest", "--archive", str(tmp_path / "r.tar.zst"), "--json", known=known
    )
    assert remote.code == 0, remote.stderr
    document = json.loads(remote.out)
    assert document == {**local, "archive": str(tmp_path / "r.tar.zst")}
    # To stdout: the same bytes as `costor restore --archive -` on the site
    process = site.process("restore", "alpha:latest", "--archive", "-", env=ENV)
    local_bytes, _err = process.communicate(timeout=300)
    assert process.returncode == 0 and len(local_bytes) > 100_000
    remote = served.remote("restore", "alpha:latest", "--archive", "-", known=known)
    assert remote.code == 0, remote.stderr
    assert remote.out == local_bytes
    # An existing file is kept without --force; nothing half-written is left behind.
    existing = tmp_path / "r-out.tar"
    refused = served.remote("restore", "alpha:latest", "--archive", str(existing), known=known)
    assert refused.code == 1 and "already exists" in refused.stderr
    forced = served.remote(
        "restore", "alpha:latest", "--archive", str(existing), "--force", known=known
    )
    assert forced.code == 0, forced.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    nowhere = served.remote(
        "restore", "alpha:latest", "--archive", str(tmp_path / "no" / "a.tar"), known=known
    )
    assert nowhere.code == 1 and "Traceback" not in nowhere.stderr
    assert f"writing the archive {tmp_path / 'no' / 'a.tar'}: No such file" in nowhere.stderr


def test_a_changed_certificate_is_refused_with_its_exit_code(
    served: Served, known: Path, tmp_path: Path
) -> None:
    pinned(known, served)
    known.write_text("# sites\n\n" + known.read_text())  # the pin on line 3
    root = served.site.root
    original = (root / "site.crt").read_bytes(), (root / "site.key").read_bytes()
    served.stop()
    other = served.authority.issue(root / "site.crt", root / "site.key")
    served.start()
    try:
        result = served.remote("snapshots", known=known)
        assert result.code == SERVER_CERTIFICATE_CHANGED_EXIT == 6
        assert result.stdout == ""
        assert f"The TLS certificate of 127.0.0.1:{served.port} has changed" in result.stderr
        assert f"line 3 of {known}" in result.stderr
        assert served.fingerprint in result.stderr and other in result.stderr
        # Verified against the CA instead: accepted, and nothing is pinned.
        with_ca = served.remote(
            "snapshots", "--json", known=known, top=("--server-ca", str(served.authority.path))
        )
        assert with_ca.code == 0, with_ca.stderr
        assert json.loads(with_ca.out) == served.local("snapshots", "--json").json()
        from_env = served.remote(
            "status", known=known, env={"COSTOR_SERVER_CA": str(served.authority.path)}
        )
        assert from_env.code == 0, from_env.stderr
        assert other not in known.read_text()
        # The line deleted, as the error says: the new certificate is pinned.
        known.write_text("# sites\n\n")
        repinned = served.remote("snapshots", known=known)
        assert repinned.code == 0 and other in repinned.stderr
        assert known.read_text().splitlines()[2] == f"127.0.0.1:{served.port} {other}"
    finally:
        served.stop()
        (root / "site.crt").write_bytes(original[0])
        (root / "site.key").write_bytes(original[1])
        served.start()


def test_a_ca_that_did_not_sign_it_is_refused(served: Served, known: Path, tmp_path: Path) -> None:
    stranger = Authority.make(tmp_path)
    result = served.remote("snapshots", known=known, top=("--server-ca", str(stranger.path)))
    assert result.code == 1 and result.stdout == ""
    assert "certificate of 127.0.0.1" in result.stderr and "not trusted" in result.stderr
    assert not known.exists()  # nothing pinned
    missing = served.remote("snapshots", known=known, top=("--server-ca", str(tmp_path / "no")))
    assert missing.code == 1 and "--server-ca" in missing.stderr


def test_errors_are_the_sites_with_their_exit_codes(served: Served, known: Path) -> None:
    pinned(known, served)
    wrong = served.tokens["admin"][:-4] + "0000"
    result = served.remote("snapshots", token=wrong, known=known)
    assert result.code == NotAuthenticated.exit_code
    assert result.stderr.startswith("costor: error: Not authenticated: ")
    assert "Traceback" not in result.stderr
    missing = served.remote("snapshots", token=None, known=known)
    assert missing.code == NotAuthenticated.exit_code
    assert "COSTOR_TOKEN" in missing.stderr and "--token-file" in missing.stderr
    # the same message and exit code as the local CLI
    local = served.local("ls", "ffffffff")
    remote = served.remote("ls", "ffffffff", known=known)
    assert (remote.code, remote.stderr) == (local.code, local.stderr)
    assert "No snapshot matches 'ffffffff'" in remote.stderr
    # verbs that need the site
    for verb in (("plan",), ("check",), ("token", "list"), ("audit",)):
        refused = served.remote(*verb, known=known)
        assert refused.code == 1, verb
        assert f"costor: error: {verb[0]} runs only on the site itself" in refused.stderr
    # plain http:// only to this machine
    far = subprocess.run(
        [sys.executable, "-m", "costor", "--server", "http://192.0.2.1:8443", "status"],
        capture_output=True,
        env={**os.environ, "COSTOR_TOKEN": served.tokens["admin"]},
        timeout=60,
        check=False,
    )
    assert far.returncode == 1 and b"plain http:// only to this machine" in far.stderr
    # the token from a file
    token_file = known.parent / "token"
    token_file.write_text(served.tokens["carol"] + "\n# carol's read token\n")
    result = served.remote(
        "snapshots", "--json", token=None, known=known, top=("--token-file", str(token_file))
    )
    assert result.code == 0, result.stderr
    assert {s["client"] for s in json.loads(result.out)} == {"alpha"}


def test_an_end_users_token_sees_only_its_client(served: Served, known: Path) -> None:
    pinned(known, served)
    mine = served.remote("snapshots", "--json", token="carol", known=known)
    assert mine.code == 0, mine.stderr
    assert json.loads(mine.out) == served.local("snapshots", "--client", "alpha", "--json").json()
    listing = served.remote("ls", "alpha:latest", "--json", token="carol", known=known)
    assert listing.code == 0 and json.loads(listing.out)
    # another client's snapshot does not exist for it (404), as locally an unknown one
    theirs = served.remote("ls", "beta:latest", token="carol", known=known)
    assert theirs.code == 1 and "No snapshot matches 'beta:latest'" in theirs.stderr
    beta_id = served.local("snapshots", "--client", "beta", "--json").json()[0]["id"]
    by_id = served.remote("restore", beta_id, "--archive", "-", token="carol", known=known)
    assert by_id.code == 1 and by_id.out == b"" and "No snapshot matches" in by_id.stderr
    # the status: its own client's health only, never another's name
    status = served.remote("status", "--json", token="carol", known=known)
    assert status.code == 0, status.stderr
    assert [c["client"] for c in json.loads(status.out)["clients"]] == ["alpha"]
    assert b"beta" not in served.remote("status", token="carol", known=known).out
    # no backups.run: 403 on its own client, 404 on another's
    own = served.remote("backup", "alpha", token="carol", known=known)
    assert own.code == 1 and "Not allowed" in own.stderr
    other = served.remote("backup", "beta", token="carol", known=known)
    assert other.code == 1 and "No client named 'beta'" in other.stderr


def test_backup_now_jobs_and_cancel_remotely(served: Served, known: Path) -> None:
    pinned(known, served)
    before = len(served.local("snapshots", "--client", "beta", "--json").json())
    waited = served.remote("backup", "beta", "--wait", known=known)
    assert waited.code == 0, waited.stderr
    assert (
        waited.stdout.startswith("snapshot ") and " of beta saved to pool main\n" in waited.stdout
    )
    assert "backup beta succeeded" in waited.stderr
    snapshots = served.local("snapshots", "--client", "beta", "--json").json()
    assert len(snapshots) == before + 1
    # its log, as on the site (followed: it has ended, so the whole log, then the end)
    job_id = waited.stderr.split("costor: job ", 1)[1].split(":", 1)[0]
    for args in (("jobs", "log", job_id), ("jobs", "log", job_id, "--json")):
        local, remote = served.local(*args), served.remote(*args, known=known)
        assert local.code == remote.code == 0, remote.stderr
        assert remote.stdout == local.stdout and local.stdout.strip(), args
    followed = served.remote("jobs", "log", job_id, "--follow", known=known)
    assert followed.code == 0 and followed.stdout == served.local("jobs", "log", job_id).stdout
    assert snapshots[-1]["id"][:12] in waited.stdout
    # queued without --wait: as `costor jobs add` prints it
    queued = served.remote("backup", "beta", "--json", known=known)
    assert queued.code == 0, queued.stderr
    job = json.loads(queued.out)
    assert set(job) == {"id", "kind", "target", "state"} and job["kind"] == "backup"
    shown = served.remote("jobs", "--json", known=known)
    assert job["id"] in [j["id"] for j in json.loads(shown.out)]
    # cancelled: a queued job never starts, a running one is stopped (either way cancelled)
    cancelled = served.remote("jobs", "cancel", str(job["id"]), known=known)
    if cancelled.code == 0:
        assert cancelled.stdout == f"job {job['id']}: backup beta cancelled\n"
    else:  # it ended first
        assert "cannot be cancelled" in cancelled.stderr
    again = served.remote("jobs", "cancel", str(job["id"]), known=known)
    assert again.code == 1 and f"Job {job['id']} cannot be cancelled" in again.stderr
    added = served.remote("jobs", "add", "check", "main", known=known)
    assert added.code == 0 and added.stdout.endswith(": check main queued\n"), added.stderr
    unknown = served.remote("jobs", "cancel", "999999", known=known)
    assert unknown.code == 1 and "No job 999999." in unknown.stderr
    run_here = served.remote("jobs", "run", "1", known=known)
    assert run_here.code == 1 and "runs only on the site itself" in run_here.stderr


def test_restore_onto_a_clients_machine_as_a_job(
    served: Served, known: Path, tmp_path: Path
) -> None:
    """A local client's machine is the site's: the job writes the directory there, as
    `costor restore --target` on the site does."""
    pinned(known, served)
    site = served.site
    docs = str(site.root / "src-alpha" / "docs")
    local = site.cli("restore", "alpha:latest", docs, "--target", str(tmp_path / "here"))
    assert local.code == 0, local.stderr
    remote = served.remote(
        "restore", "alpha:latest", docs, "--target", str(tmp_path / "there"), "--wait", known=known
    )
    assert remote.code == 0, remote.stderr
    assert remote.stdout == local.stdout.replace("/here", "/there")
    assert "restore" in remote.stderr and "succeeded" in remote.stderr
    restored = tmp_path / "there" / "docs"
    assert (restored / "readme.txt").read_text() == "hello alpha\n" * 50
    assert (restored / "deep" / "data.bin").read_bytes() == (
        Path(docs) / "deep" / "data.bin"
    ).read_bytes()
    # queued without --wait; what the site refuses is refused before anything is queued
    queued = served.remote(
        "restore", "alpha:latest", "--target", str(tmp_path / "later"), "--json", known=known
    )
    assert queued.code == 0, queued.stderr
    assert json.loads(queued.out)["kind"] == "restore"
    over_root = served.remote("restore", "alpha:latest", "--target", "/", known=known)
    assert over_root.code == 1 and "does not write over /" in over_root.stderr
    options = served.remote(
        "restore", "alpha:latest", "--target", str(tmp_path / "x"), "--dry-run", known=known
    )
    assert options.code == 1 and "with --server, restore takes no --dry-run" in options.stderr
    device = served.remote(
        "restore", "alpha:latest", "/dev/loop9", "--target-device", "/dev/loop9", known=known
    )
    assert device.code == 1 and "restore takes no --target-device" in device.stderr


def test_a_damaged_known_servers_file_is_an_error_not_a_new_pin(
    served: Served, known: Path
) -> None:
    known.parent.mkdir(parents=True)
    known.write_text("# pins\n127.0.0.1 not-a-fingerprint\n")
    result = served.remote("snapshots", known=known)
    assert result.code == 1 and result.stdout == ""
    assert f"costor: error: {known} line 2: expected `HOST:PORT FINGERPRINT`" in result.stderr
    assert known.read_text() == "# pins\n127.0.0.1 not-a-fingerprint\n"
    # a last line without its end: the pin goes on a line of its own
    known.write_text("# pins")
    assert served.remote("snapshots", known=known).code == 0
    assert known.read_text() == f"# pins\n127.0.0.1:{served.port} {served.fingerprint}\n"


# --- a server that is not a well-behaved CoStor site --------------------------------------


class RawServer:
    """A loopback HTTP/1.1 server answering each path with bytes given by the test (and
    then closing the connection): answers no CoStor site would give."""

    def __init__(self, answers: dict[str, bytes | Callable[[str], bytes]]) -> None:
        self.answers = answers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _address = self.sock.accept()
            except OSError:
                return
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                target = request.split(b" ", 2)[1].decode() if request else ""
                path, _, query = target.partition("?")
                answer = self.answers.get(path, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                connection.sendall(answer(query) if callable(answer) else answer)

    def close(self) -> None:
        self.sock.close()


def _answer(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def test_what_an_untrusted_server_answers_is_checked(tmp_path: Path) -> None:
    snapshot = {"id": "ab" * 32, "client": "alpha", "pool": "main"}
    server = RawServer(
        {
            "/api/v1/status": _answer("200 OK", b"<html>hello</html>", "text/html"),
            "/api/v1/snapshots": _answer("404 Not Found", b"<html>no</html>", "text/html"),
            "/api/v1/jobs": _answer(
                "409 Conflict",
                json.dumps(
                    {"error": "Weird", "message": "bad\x1b[31m red", "request_id": "r1"}
                ).encode(),
            ),
            "/api/v1/snapshots/abab/tree": _answer(
                "500 Internal Server Error",
                json.dumps(
                    {"error": "DamageFound", "message": "Check found 2 problem(s)."}
                ).encode(),
            ),
            "/api/v1/snapshots/abab": _answer("200 OK", json.dumps(snapshot).encode()),
            f"/api/v1/snapshots/{'ab' * 32}/archive": (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"  # then cut: no last chunk
            ),
        }
    )

    def remote(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "costor", "--server", f"http://127.0.0.1:{server.port}", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "COSTOR_TOKEN": "costor_000000000000_x"},
            cwd=tmp_path,
            timeout=120,
            check=False,
        )

    try:
        not_json = remote("status")
        assert not_json.returncode == 1 and not_json.stdout == ""
        assert "the answer to /api/v1/status is not JSON: is this a CoStor site?" in (
            not_json.stderr
        )
        html = remote("snapshots")
        assert (
            html.returncode == 1
            and "answered 404 Not Found: not a CoStor error document" in html.stderr
        )
        unknown = remote("jobs")
        assert unknown.returncode == 1
        assert "answered 409 Weird: bad?[31m red (request r1)" in unknown.stderr
        assert "\x1b" not in unknown.stderr
        known_class = remote("ls", "abab")
        assert known_class.returncode == 3  # DamageFound's exit code, as on the site
        assert known_class.stderr == "costor: error: Check found 2 problem(s).\n"
        cut = remote("restore", "abab", "--archive", "out.tar")
        assert cut.returncode == 1, cut.stderr
        assert "the download stopped after 5 bytes, before its end" in cut.stderr
        assert list(tmp_path.iterdir()) == []  # neither out.tar nor a partial file
    finally:
        server.close()


def test_snapshots_are_read_page_after_page(tmp_path: Path) -> None:
    """The API answers at most 1,000 snapshots a request: all are read, in order."""
    every = [{"id": f"{n:064x}", "time": f"2026-01-01T00:00:{n % 60:02d}"} for n in range(2345)]

    def page(query: str) -> bytes:
        asked = dict(part.split("=", 1) for part in query.split("&"))
        offset, limit = int(asked["offset"]), int(asked["limit"])
        assert limit == 1000 and asked["client"] == "alpha"
        return _answer("200 OK", json.dumps(every[offset : offset + limit]).encode())

    server = RawServer({"/api/v1/snapshots": page})
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "costor",
                "--server",
                f"http://localhost:{server.port}",
                "snapshots",
                "--client",
                "alpha",
                "--json",
            ],
            capture_output=True,
            env={**os.environ, "COSTOR_TOKEN": "costor_000000000000_x"},
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == every


def test_an_empty_server_runs_here_despite_costor_server(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    local = served.local("snapshots", "--json")
    assert local.code == 0
    monkeypatch.setenv("COSTOR_SERVER", "https://127.0.0.1:1")  # not asked: nothing listens
    capsys.readouterr()
    code = main(["--server", "", "snapshots", "-c", str(served.site.inventory), "--json"])
    assert code == 0 and capsys.readouterr().out == local.stdout
    assert verb_of(["--server", "https://x", "--token-file", "ls", "status"]) == "status"
