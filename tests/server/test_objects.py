"""The Backup API against a real `costor serve` on loopback: a pool's stored objects,
put (verified against their names on arrival), has, get (ranges), list and delete, as
each token scope may; names that could leave the pool refused; `costor pool copy` to
and from the server's pools over http, and the copy checked."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest
from serving import ENV, free_port, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_pool, local_tables, site_table, write_tables
from test_serve import self_signed

from costor.errors import (
    BackendError,
    BackendThrottled,
    BackendTransient,
    ObjectNotFound,
    ObjectTruncated,
    StorageFull,
    UsageError,
)
from costor.store.backends.http import HttpBackend, parse_fingerprint
from costor.store.backends.registry import open_location, parse_location

# Tests that write put their objects into "scratch"; "main" holds a backup and stays
# as it made it (the copy test copies it); "mirror" is emptied for that copy.
POOL = "/api/v1/pools/scratch/objects/"
MAIN = "/api/v1/pools/main/objects/"

USERS = """
[groups.admins]
roles = ["admin"]

[groups.viewers]
roles = ["viewer"]

[roles.replicator]
permissions = ["objects.append"]

[groups.peers]
roles = ["replicator"]

[users.alice]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.bob]
groups = ["viewers"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.peer]
groups = ["peers"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""


def pack_name(data: bytes) -> str:
    digest = blake3.blake3(data).hexdigest()
    return f"packs/{digest[:2]}/{digest[2:4]}/{digest}"


class Served:
    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site, self.base_url, self.process = site, base_url, process
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.tokens: dict[str, str] = {}
        self.pool_dir = site.root / "scratch"
        self.main_dir = site.pool_path
        self.mirror_dir = site.root / "mirror"

    def ask(
        self, method: str, url: str, token: str | None = "admin", **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {self.tokens[token]}"
        return self.http.request(method, url, headers=headers, **kwargs)

    def listing(self, token: str = "admin", prefix: str = "", url: str = POOL) -> list[Any]:
        answer = self.ask("GET", url, token, params={"prefix": prefix})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in answer.text.splitlines()]

    def token(self, *args: str) -> str:
        result = self.site.cli("token", "create", *args)
        assert result.code == 0, result.stderr
        return result.stdout.strip()

    def memory_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
        raise AssertionError(key)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("objects")
    source = root / "src"
    (source / "docs").mkdir(parents=True)
    (source / "docs" / "readme.txt").write_text("hello\n" * 500)
    (source / "data.bin").write_bytes(os.urandom(300_000))
    tables = local_tables({"alpha": [source]})
    pools = [local_pool(name, path=name) for name in ("mirror", "scratch")]
    inventory = write_tables(root, *tables, *pools, USERS)
    site = Site(root, inventory, root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        applied = site.cli("apply", "--auto-approve")
        assert applied.code == 0, applied.stderr
        backup = site.cli("backup", "alpha")
        assert backup.code == 0, backup.stderr
        # The mirror's storage emptied: a place for a copy of "main" to arrive in.
        shutil.rmtree(root / "mirror")
        (root / "mirror").mkdir()
        process, base_url = start_serve(site)
        served = Served(site, base_url, process)
        try:
            served.tokens["admin"] = served.token("--user", "alice", "--scope", "admin")
            served.tokens["read"] = served.token("--user", "alice", "--scope", "read")
            served.tokens["append"] = served.token("--user", "peer", "--scope", "append")
            served.tokens["viewer"] = served.token("--user", "bob", "--scope", "read")
            served.tokens["alpha"] = served.token(
                "--user", "alice", "--scope", "read", "--clients", "alpha"
            )
            yield served
        finally:
            served.http.close()
            stop_serve(process)


def test_put_has_get_range_and_list_round_trip(served: Served) -> None:
    data = os.urandom(100_000)
    name = pack_name(data)
    put = served.ask("PUT", POOL + name, content=data)
    assert put.status_code == 201, put.text
    assert put.json() == {"name": name, "size": len(data), "stored": True}
    assert (served.pool_dir / name).read_bytes() == data
    has = served.ask("HEAD", POOL + name)
    assert has.status_code == 200 and int(has.headers["content-length"]) == len(data)
    got = served.ask("GET", POOL + name)
    assert got.status_code == 200 and got.content == data
    ranged = served.ask("GET", POOL + name, headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206 and ranged.content == data[1000:2000]
    assert ranged.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = served.ask("GET", POOL + name, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    past = served.ask("GET", POOL + name, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    lines = served.listing(prefix=name[:8])
    assert {"name": name, "size": len(data)} in lines
    assert lines[-1] == {"end": True, "count": len(lines) - 1}
    assert all(line["name"].startswith(name[:8]) for line in lines[:-1])
    # The whole of "main" as the backup stored it: every object of its kinds, sized.
    everything = {line["name"]: line["size"] for line in served.listing(url=MAIN)[:-1]}
    on_disk = {
        str(p.relative_to(served.main_dir)): p.stat().st_size
        for p in served.main_dir.rglob("*")
        if p.is_file() and p.relative_to(served.main_dir).parts[0] != "locks"
    }
    assert everything == on_disk and "costor-pool.json" in everything
    assert any(n.startswith("snapshots/") for n in everything)
    missing = served.ask("HEAD", POOL + pack_name(b"never stored"))
    assert missing.status_code == 404
    absent = served.ask("GET", POOL + pack_name(b"never stored"))
    assert absent.status_code == 404 and absent.json()["error"] == "ObjectNotFound"


def test_bytes_that_do_not_hash_to_the_name_are_refused_and_not_stored(served: Served) -> None:
    name = pack_name(b"what the name promises")
    refused = served.ask("PUT", POOL + name, content=b"something else")
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == "ObjectRefused"
    assert "nothing was stored" in refused.json()["message"]
    assert served.ask("HEAD", POOL + name).status_code == 404
    assert not (served.pool_dir / name).exists()
    segment = "index/" + blake3.blake3(b"a segment").hexdigest()
    assert served.ask("PUT", POOL + segment, content=b"a segmenT").status_code == 422
    assert not (served.pool_dir / segment).exists()
    # A pack under the wrong directories is no pack name.
    digest = blake3.blake3(b"x").hexdigest()
    wrong_dirs = served.ask("PUT", POOL + f"packs/00/00/{digest}", content=b"x")
    assert wrong_dirs.status_code == 400 and wrong_dirs.json()["error"] == "ObjectNameRefused"


def test_puts_are_idempotent_and_key_slots_are_written_once(served: Served) -> None:
    data = b"the same pack twice"
    name = pack_name(data)
    for _ in range(2):
        again = served.ask("PUT", POOL + name, content=data)
        assert again.status_code == 201 and again.json()["size"] == len(data)
    assert (served.pool_dir / name).read_bytes() == data
    slot = "keys/" + "ab" * 16
    first = served.ask("PUT", POOL + slot, content=b'{"slot": 1}')
    assert first.status_code == 201 and first.json()["stored"] is True
    same = served.ask("PUT", POOL + slot, content=b'{"slot": 1}')
    assert same.status_code == 200 and same.json()["stored"] is False
    other = served.ask("PUT", POOL + slot, content=b'{"slot": 2}')
    assert other.status_code == 409 and other.json()["error"] == "ObjectExists"
    assert (served.pool_dir / slot).read_bytes() == b'{"slot": 1}'
    identity = (served.pool_dir / "costor-pool.json").read_bytes()
    assert served.ask("PUT", POOL + "costor-pool.json", content=identity).status_code == 200
    replaced = served.ask("PUT", POOL + "costor-pool.json", content=b'{"format": "x"}')
    assert replaced.status_code == 409
    assert (served.pool_dir / "costor-pool.json").read_bytes() == identity


def test_an_append_token_adds_and_lists_but_never_reads_or_deletes(served: Served) -> None:
    data = os.urandom(5000)
    name = pack_name(data)
    assert served.ask("PUT", POOL + name, "append", content=data).status_code == 201
    assert served.ask("HEAD", POOL + name, "append").status_code == 200
    assert served.ask("HEAD", POOL + pack_name(b"no"), "append").status_code == 404
    assert {"name": name, "size": 5000} in served.listing("append", prefix="packs/")
    read = served.ask("GET", POOL + name, "append")
    assert read.status_code == 403 and read.json()["error"] == "PermissionDenied"
    ranged = served.ask("GET", POOL + name, "append", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 403
    deleted = served.ask("DELETE", POOL + name, "append")
    assert deleted.status_code == 403
    assert (served.pool_dir / name).read_bytes() == data
    # The Admin API: nothing at all. Every operation the served document lists (so a
    # route added later is covered too), with the site's real objects and valid bodies.
    snapshot = served.site.cli("snapshots", "--json").json()[0]["id"]
    values = {
        "client": "alpha",
        "pool": "main",
        "snapshot": snapshot,
        "job_id": "1",
        "session_id": "0" * 32,
        "token_id": "0" * 12,
    }
    bodies: dict[str, Any] = {
        "/api/v1/maintenance": {"on": True},
        "/api/v1/snapshots/{snapshot}/restore": {"target": "/tmp/costor-never"},
        "/api/v1/tokens": {"scope": "append"},
    }
    document = served.ask("GET", "/api/v1/openapi.json", None).json()
    asked = 0
    for path, operations in document["paths"].items():
        # Not the Admin API: the Backup API itself, health, logging in and out, and
        # "who am I" (which any credential may ask). Login sessions are refused.
        if "/objects/" in path or not path.startswith("/api/v1/"):
            continue
        if path in ("/api/v1/login", "/api/v1/logout", "/api/v1/session"):
            continue
        for method in operations:
            url = path.format(**values)
            kwargs: dict[str, Any] = {"params": {"path": "/x"}}
            if path in bodies and method in ("put", "post"):
                kwargs["json"] = bodies[path]
            answer = served.ask(method.upper(), url, "append", **kwargs)
            assert answer.status_code in (403, 404), (method, url, answer.status_code, answer.text)
            asked += 1
    assert asked >= 25, asked
    assert served.site.cli("maintenance", "--json").json()["sites"][0]["maintenance"] is False


def test_a_read_token_gets_and_lists_but_does_not_put(served: Served) -> None:
    data = b"read me back"
    name = pack_name(data)
    assert served.ask("PUT", POOL + name, content=data).status_code == 201
    assert served.ask("GET", POOL + name, "read").content == data
    assert served.ask("HEAD", POOL + name, "read").status_code == 200
    assert {"name": name, "size": len(data)} in served.listing("read", prefix="packs/")
    other = b"not from a read token"
    put = served.ask("PUT", POOL + pack_name(other), "read", content=other)
    assert put.status_code == 403
    assert not (served.pool_dir / pack_name(other)).exists()
    assert served.ask("DELETE", POOL + name, "read").status_code == 403
    # A user without objects.read (viewer), or a token limited to some clients: a pool
    # holds every client's data, so neither reads one.
    for token in ("viewer", "alpha"):
        assert served.ask("GET", POOL + name, token).status_code == 403
        assert served.ask("GET", POOL, token).status_code == 403


def test_no_token_is_401_and_an_unknown_pool_404(served: Served) -> None:
    name = pack_name(b"x")
    for method in ("HEAD", "GET", "PUT", "DELETE"):
        answer = served.ask(method, POOL + name, None, content=b"x" if method == "PUT" else None)
        assert answer.status_code == 401, method
        assert answer.headers["www-authenticate"] == "Bearer"
    assert served.ask("GET", POOL, None).status_code == 401
    nowhere = served.ask("GET", "/api/v1/pools/nowhere/objects/" + name)
    assert nowhere.status_code == 404 and nowhere.json()["error"] == "UnknownResource"
    assert not (served.pool_dir / name).exists()


def raw_request(served: Served, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """A request sent as written (an HTTP client would normalise ``..`` away)."""
    host, port = served.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Authorization: Bearer {served.tokens['admin']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer


@pytest.mark.parametrize(
    "name",
    [
        "../escape",
        "../../escape",
        "%2e%2e/escape",
        "%2E%2E%2Fescape",
        "packs/../../escape",
        "/escape",
        "%2Fescape",
        "keys/..%2f..%2fescape",
        "escape",
        "locks/" + "0" * 32,
        "keys/short",
        "index/" + "A" * 64,
    ],
)
def test_names_that_are_not_pool_objects_are_refused(served: Served, name: str) -> None:
    for method in ("PUT", "GET", "HEAD", "DELETE"):
        status, answer = raw_request(served, method, POOL + name, b"payload")
        assert status in (400, 404), (method, name, answer[:300])
        if method != "HEAD" and status == 400:
            assert b"ObjectNameRefused" in answer
    written = [p for p in served.site.root.rglob("escape")]
    assert written == []
    assert not any(p.name == "escape" for p in Path("/tmp").glob("*"))


def test_listing_prefixes_that_could_leave_the_pool_are_refused(served: Served) -> None:
    for prefix in ("../", "/etc", "packs/../..", "a//b", "..\\x"):
        answer = served.ask("GET", POOL, params={"prefix": prefix})
        assert answer.status_code == 400, prefix
        assert answer.json()["error"] == "ObjectNameRefused"


def test_delete_is_for_admin_and_audited(served: Served) -> None:
    data = b"to be deleted"
    name = pack_name(data)
    assert served.ask("PUT", POOL + name, content=data).status_code == 201
    deleted = served.ask("DELETE", POOL + name)
    assert deleted.status_code == 204
    assert served.ask("HEAD", POOL + name).status_code == 404
    assert served.ask("DELETE", POOL + name).status_code == 204  # a missing one: fine
    records = served.site.cli("audit", "--json").json()
    mine = [r for r in records if r["action"] == "object.delete"]
    assert mine and mine[-1]["target"] == "pool:scratch" and mine[-1]["outcome"] == "ok"
    assert mine[-1]["actor"].startswith("token:")


def test_a_large_put_is_streamed_and_verified(served: Served) -> None:
    """96 MiB, over SPILL_AT: spilled to a temporary file as it arrives, hashed on the
    way, and handed to the backend as a read-only map. The server's own (anonymous)
    memory does not grow by the object's size."""
    data = os.urandom(96 * 1024 * 1024)
    name = pack_name(data)
    before = served.memory_kib("RssAnon")
    samples: list[int] = []

    def chunks() -> Iterator[bytes]:
        """1 MiB at a time; the server's anonymous memory noted every 16 MiB sent (a
        body kept in memory would show as it grew: it is freed once answered)."""
        view = memoryview(data)
        for start in range(0, len(data), 1024 * 1024):
            if start % (16 * 1024 * 1024) == 0:
                samples.append(served.memory_kib("RssAnon"))
            yield bytes(view[start : start + 1024 * 1024])

    put = served.ask("PUT", POOL + name, content=chunks())
    assert put.status_code == 201, put.text
    samples.append(served.memory_kib("RssAnon"))
    print(f"RssAnon before {before} KiB, every 16 MiB sent {samples} KiB")
    assert len(samples) == 7 and (max(samples) - before) / 1024 < 32, (before, samples)
    assert (served.pool_dir / name).stat().st_size == len(data)
    assert blake3.blake3((served.pool_dir / name).read_bytes()).hexdigest() == name[-64:]
    assert list((served.site.root / ".costor" / "uploads").glob("*")) == []
    # The same size with one byte changed: refused once it has all arrived.
    damaged = bytearray(data)
    damaged[-1] ^= 1
    other = pack_name(bytes(damaged[:-1]) + b"\0")
    refused = served.ask("PUT", POOL + other, content=bytes(damaged))
    assert refused.status_code == 422
    assert not (served.pool_dir / other).exists()


def copy(served: Served, token: str, source: str, destination: str) -> dict[str, Any]:
    """``costor pool copy`` between bare locations, in a process of its own, as an
    operator would run it (the token in the environment)."""
    result = subprocess.run(
        [sys.executable, "-m", "costor", "pool", "copy", source, destination, "--json"],
        env={**os.environ, "COSTOR_TOKEN": served.tokens[token]},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=served.site.root,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def objects(root: Path) -> dict[str, bytes]:
    """A pool's objects as copies have them (no leases, audit anchors or records of
    this place's own)."""
    skip = ("anchors", "locks", "condemned", "damaged")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


def test_pool_copy_to_and_from_the_server_then_check(served: Served, tmp_path: Path) -> None:
    """Down from the server's pool (read token), up into its empty mirror pool with an
    append token (a peer site's: it adds and never reads back; the server verifies
    each object on arrival instead), back down again, and the last copy checked by a
    site of its own (`costor check --read-data`)."""
    main = f"{served.base_url}/api/v1/pools/main"
    mirror = f"{served.base_url}/api/v1/pools/mirror"
    down = tmp_path / "down"
    first = copy(served, "read", main, str(down))
    assert first["copied"] > 0 and first["source"] == main
    assert objects(down) == objects(served.main_dir)
    up = copy(served, "append", str(down), mirror)
    assert up["copied"] == first["copied"] and up["destination"] == mirror
    assert objects(served.mirror_dir) == objects(down)
    assert copy(served, "append", str(down), mirror)["copied"] == 0  # incremental
    # A different pool's copy into it is refused (its identity file is write-once).
    other = tmp_path / "other"
    shutil.copytree(down, other)
    identity = json.loads((other / "costor-pool.json").read_text())
    identity["uuid"] = "0" * 32 if identity["uuid"] != "0" * 32 else "1" * 32
    (other / "costor-pool.json").write_text(json.dumps(identity))
    refused = subprocess.run(
        [sys.executable, "-m", "costor", "pool", "copy", str(other), mirror],
        env={**os.environ, "COSTOR_TOKEN": served.tokens["append"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "409" in refused.stderr, refused.stderr
    assert objects(served.mirror_dir) == objects(down)
    back = tmp_path / "back"
    copy(served, "read", mirror, str(back))
    assert objects(back) == objects(down)
    # The copy is a pool: a site of its own adopts it and checks every byte.
    (tmp_path / "site").mkdir()
    inventory = write_tables(
        tmp_path / "site",
        *local_tables({"alpha": [served.site.root / "src"]}),
        costor=None,
    )
    text = inventory.read_text().replace('path = "pool"', f"path = {json.dumps(str(back))}")
    inventory.write_text(text)
    site = Site(tmp_path / "site", inventory, back)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        adopted = site.cli("apply", "--auto-approve")
        assert adopted.code == 0, adopted.stderr
        checked = site.cli("check", "--read-data")
        assert checked.code == 0, checked.stdout + checked.stderr
        listed = site.cli("snapshots", "--json")
        assert [s["client"] for s in listed.json()] == ["alpha"]


# --- the client backend (costor/store/backends/http.py) --------------------------------


def test_https_with_a_pinned_fingerprint_or_a_ca(tmp_path: Path) -> None:
    """A TLS `costor serve` with a certificate made by the test: pinned by its SHA-256
    fingerprint (checked before anything is sent: a wrong pin never uses the token), or
    verified against it as a CA file; neither: refused, not retried."""
    cert, _key = self_signed(tmp_path)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    fingerprint = hashlib.sha256(der).hexdigest()
    port = free_port()
    tables = local_tables({})
    tables[0] = site_table(
        "hq", f'listen = "127.0.0.1:{port}"', 'tls = { cert = "site.crt", key = "site.key" }'
    )
    site = Site(tmp_path, write_tables(tmp_path, *tables, USERS), tmp_path / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        tokens = [site.cli("token", "create", "--user", "alice", "--scope", "admin") for _ in "ab"]
        assert all(t.code == 0 for t in tokens), tokens
        process = site.process("serve", "--tick", "0.2", env=ENV)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False)
                    break
                except httpx.TransportError:
                    assert process.poll() is None and time.monotonic() < deadline
                    time.sleep(0.1)
            url = f"https://127.0.0.1:{port}/api/v1/pools/main"
            used, unused = (t.stdout.strip() for t in tokens)
            shown = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
            pinned = open_location(
                url, environ={"COSTOR_TOKEN": used, "COSTOR_SERVER_FINGERPRINT": f"sha256:{shown}"}
            )
            data = b"over TLS, pinned"
            pinned.put(pack_name(data), data)
            assert pinned.get(pack_name(data)) == data
            by_ca = HttpBackend(url, token=used, ca_file=str(cert))
            assert by_ca.get_range(pack_name(data), 5, 3) == data[5:8]
            wrong = HttpBackend(url, token=unused, fingerprint="sha256:" + "ab" * 32)
            with pytest.raises(BackendError, match="not the pinned") as caught:
                wrong.exists(pack_name(data))
            assert not isinstance(caught.value, BackendTransient)
            untrusted = HttpBackend(url, token=unused)  # the system's CAs only
            with pytest.raises(BackendError, match="not trusted") as refused:
                untrusted.exists(pack_name(data))
            assert not isinstance(refused.value, BackendTransient)
            listed = site.cli("token", "list", "--json").json()
            never_sent = [t for t in listed if unused.startswith(f"costor_{t['id']}_")]
            assert never_sent[0]["last_used_at"] is None
        finally:
            stop_serve(process)


@pytest.mark.parametrize(
    "location",
    [
        "http://10.0.0.1:8443/api/v1/pools/main",  # plain HTTP off loopback
        "https://site:8443/pools/main",
        "https://user:pw@site:8443/api/v1/pools/main",
        "https://site:8443/api/v1/pools/main?x=1",
        "https://site:8443/api/v1/pools/../x",
        "https://site:8443/api/v1/pools/..",
    ],
)
def test_bad_locations_are_usage_errors(location: str) -> None:
    with pytest.raises(UsageError):
        parse_location(location, environ={})


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """A server that answers what the test sets: (status, headers, body)."""

    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"")

    def _reply(self) -> None:
        status, headers, body = self.answer
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_DELETE = _reply  # noqa: N815

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[tuple[type[_Misbehaving], HttpBackend]]:
    handler = type("Handler", (_Misbehaving,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api/v1/pools/main"
    backend = HttpBackend(url, token="costor_x", read_timeout=5)
    try:
        yield handler, backend
    finally:
        backend.close()
        server.shutdown()
        server.server_close()


def _error(kind: str, message: str) -> bytes:
    return json.dumps({"error": kind, "message": message}).encode()


def test_the_client_trusts_no_answer(
    misbehaving: tuple[type[_Misbehaving], HttpBackend],
) -> None:
    handler, backend = misbehaving
    name = pack_name(b"x")
    handler.answer = (429, {"Retry-After": "7"}, _error("TooManyRequests", "slow down"))
    with pytest.raises(BackendThrottled) as throttled:
        backend.get(name)
    assert throttled.value.retry_after == 7
    handler.answer = (503, {"Retry-After": "3"}, _error("AuditUnavailable", "busy"))
    with pytest.raises(BackendTransient) as unavailable:
        backend.get(name)
    assert unavailable.value.retry_after == 3
    assert not isinstance(unavailable.value, BackendThrottled)
    handler.answer = (503, {}, _error("BackendError", "the disk is gone"))
    with pytest.raises(BackendTransient, match="the disk is gone"):
        backend.put(name, b"x")
    handler.answer = (502, {}, b"bad gateway")
    with pytest.raises(BackendTransient):
        backend.exists(name)
    handler.answer = (404, {}, _error("ObjectNotFound", "no"))
    with pytest.raises(ObjectNotFound):
        backend.get(name)
    assert not backend.exists(name)
    backend.delete(name)  # a missing object: not an error
    handler.answer = (403, {}, _error("PermissionDenied", "objects.read is not granted"))
    with pytest.raises(BackendError, match="objects.read is not granted") as denied:
        backend.get(name)
    assert not isinstance(denied.value, BackendTransient | ObjectNotFound)
    handler.answer = (422, {}, _error("ObjectRefused", "does not hash to its name"))
    with pytest.raises(BackendError, match="does not hash"):
        backend.put(name, b"y")
    handler.answer = (507, {}, _error("StorageFull", "full"))
    with pytest.raises(StorageFull):
        backend.put(name, b"x")
    # A range shorter than asked for, or none at all: damage, never fewer bytes.
    handler.answer = (206, {"Content-Range": "bytes 0-1/2"}, b"ab")
    with pytest.raises(ObjectTruncated):
        backend.get_range(name, 0, 5)
    handler.answer = (416, {}, b"")
    with pytest.raises(ObjectTruncated):
        backend.get_range(name, 10, 5)
    # A whole object cut short of its Content-Length: transient (read it again).
    handler.answer = (200, {"Content-Length": "100"}, b"only this")
    with pytest.raises(BackendTransient):
        backend.get(name)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"name": "index/a", "size": 1}\n', BackendTransient),  # no end line: cut short
        (b'{"name": "../x", "size": 1}\n{"end": true, "count": 1}\n', BackendError),
        (b'{"name": "index/a", "size": -1}\n{"end": true, "count": 1}\n', BackendError),
        (b'{"name": "keys/a", "size": 1}\n{"end": true, "count": 1}\n', BackendError),  # not asked
        (b"not json\n", BackendError),
        (b'{"end": true, "count": 0}\n{"name": "index/a", "size": 1}\n', BackendError),
    ],
)
def test_a_listing_from_the_server_is_checked(
    misbehaving: tuple[type[_Misbehaving], HttpBackend], body: bytes, expected: type[Exception]
) -> None:
    handler, backend = misbehaving
    handler.answer = (200, {"Content-Type": "application/x-ndjson"}, body)
    with pytest.raises(expected):
        list(backend.list("index/"))


def test_an_unreachable_server_is_transient() -> None:
    backend = HttpBackend(f"http://127.0.0.1:{free_port()}/api/v1/pools/main", token="t")
    for operation in (
        lambda: backend.get(pack_name(b"x")),
        lambda: backend.put(pack_name(b"x"), b"x"),
        lambda: list(backend.list("")),
    ):
        with pytest.raises(BackendTransient):
            operation()


def test_a_body_larger_than_any_pool_object_is_refused_at_once(served: Served) -> None:
    """A Content-Length over the limit is 413 before a byte of the body is read."""
    host, port = served.base_url.removeprefix("http://").split(":")
    name = pack_name(b"huge")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"PUT {POOL}{name} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Authorization: Bearer {served.tokens['admin']}\r\n"
            f"Content-Length: {600 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"only the start")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"ObjectTooLarge" in answer
    assert not (served.pool_dir / name).exists()


def test_fingerprints_are_read_as_openssl_and_the_known_servers_file_write_them() -> None:
    colons = ":".join(["AB"] * 32)
    for text in (f"sha256:{colons}", "sha256:" + "ab" * 32, colons, " " + "AB" * 32 + " "):
        assert parse_fingerprint(text) == "ab" * 32
    for bad in ("sha1:" + colons, colons[:-3], "sha256:" + "zz" * 32, ""):
        with pytest.raises(ValueError, match="not a certificate fingerprint"):
            parse_fingerprint(bad)
