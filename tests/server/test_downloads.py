"""Downloads from a real `costor serve` (docs/server.md, "Downloads"), on SQLite and (the
suite's PostgreSQL pass) PostgreSQL: archives equal to `costor restore --archive`, byte
ranges, memory that does not follow the size, versions of a file, visibility, and a
client that leaves mid-download.

One served site for the module: clients alpha (its `docs/changing.txt` changed before
each of three backups), beta, and big (one 200 MiB file of random bytes).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables

USERS = """
[groups.admins]
roles = ["admin"]

[users.alice]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""
BIG = 200 * 1024 * 1024
STEP = 40 * 1024 * 1024
FORMATS = ("tar", "tar.zst", "zip")


class Served:
    def __init__(self, site: Site, base_url: str, pid: int, sources: dict[str, Path]) -> None:
        self.site = site
        self.pid = pid
        self.sources = sources
        self.http = httpx.Client(base_url=base_url, timeout=120)
        self.tokens: dict[str, str] = {}
        self.snapshots: dict[str, list[str]] = {}  # client -> ids, oldest first

    def get(self, url: str, token: str = "admin", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}", **kwargs.pop("headers", {})}
        return self.http.get(url, headers=headers, **kwargs)

    def headers(self, token: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[token]}"}

    def token(self, *args: str) -> str:
        result = self.site.cli("token", "create", *args)
        assert result.code == 0, result.stderr
        return result.stdout.strip()

    def reset_peak(self) -> None:
        """VmHWM starts again from VmRSS (proc(5): clear_refs, 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the serve process, in KiB."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("downloads")
    sources: dict[str, Path] = {}
    for name in ("alpha", "beta", "big"):
        source = sources[name] = root / f"src-{name}"
        (source / "docs" / "deep").mkdir(parents=True)
    for name in ("alpha", "beta"):
        source = sources[name]
        (source / "docs" / "readme.txt").write_text(f"hello {name}\n" * 50)
        (source / "docs" / "deep" / "data.bin").write_bytes(os.urandom(3_000_000))
        (source / "docs" / "back\\slash.txt").write_text("a zip renames me\n")
        os.symlink("readme.txt", source / "docs" / "link")
        (source / "top.txt").write_text("top\n")
    with open(sources["big"] / "docs" / "big.bin", "wb") as big:
        for _ in range(BIG // (8 * 1024 * 1024)):
            big.write(os.urandom(8 * 1024 * 1024))
    inventory = write_tables(
        root,
        *local_tables({name: [path] for name, path in sources.items()}),
        USERS,
    )
    site = Site(root, inventory, root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        changing = sources["alpha"] / "docs" / "changing.txt"
        for version, client in enumerate(("alpha", "beta", "alpha", "big", "alpha")):
            changing.write_text(f"version {version}\n" * (version + 1))
            result = site.cli("backup", client)
            assert result.code == 0, result.stderr
        process, base_url = start_serve(site)
        served = Served(site, base_url, process.pid, sources)
        try:
            served.tokens["admin"] = served.token("--user", "alice", "--scope", "admin")
            served.tokens["alpha"] = served.token(
                "--user", "alice", "--scope", "read", "--clients", "alpha"
            )
            for name in sources:
                listed = served.get("/api/v1/snapshots", params={"client": name})
                served.snapshots[name] = [s["id"] for s in listed.json()]
            yield served
        finally:
            served.http.close()
            stop_serve(process)


def cli_archive(served: Served, snapshot: str, path: str, fmt: str, file: Path | None) -> bytes:
    """`costor restore SNAPSHOT PATH --archive FILE|- --format F`: the file's bytes, or
    what it wrote into a pipe."""
    target = str(file) if file is not None else "-"
    result = served.site.process(
        "restore", snapshot, path, "--archive", target, "--format", fmt, env=ENV
    )
    out, err = result.communicate(timeout=300)
    assert result.returncode == 0, err.decode()
    return file.read_bytes() if file is not None else out


def members(data: bytes, fmt: str) -> dict[str, bytes]:
    """Name -> content (a file's bytes, a link's target, b"" for a directory)."""
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()}
    if fmt == "tar.zst":
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    found = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive:
            extracted = archive.extractfile(member) if member.isfile() else None
            found[member.name] = extracted.read() if extracted else member.linkname.encode()
    return found


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_directory_downloads_as_costor_restore_archives_it(
    served: Served, fmt: str, tmp_path: Path
) -> None:
    snapshot = served.snapshots["alpha"][-1]
    path = str(served.sources["alpha"] / "docs")
    response = served.get(
        f"/api/v1/snapshots/{snapshot}/archive", params={"path": path, "format": fmt}
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Disposition"].startswith(
        f'attachment; filename="alpha-{snapshot[:12]}-docs.{fmt}"'
    )
    # The same writer into a stream: the same bytes as the CLI writing into a pipe.
    assert response.content == cli_archive(served, snapshot, path, fmt, None)
    into_file = cli_archive(served, snapshot, path, fmt, tmp_path / f"docs.{fmt}")
    if fmt == "zip":
        # A zip written to a file has its sizes in the local headers; into a stream
        # (a pipe, an HTTP response) they follow each entry: other bytes, same members.
        assert members(response.content, fmt) == members(into_file, fmt)
        assert "docs/back_slash.txt" in members(response.content, fmt)
    else:
        assert response.content == into_file
    assert members(response.content, fmt)["docs/changing.txt"] == b"version 4\n" * 5


def test_a_file_in_ranges(served: Served) -> None:
    snapshot = served.snapshots["alpha"][-1]
    path = str(served.sources["alpha"] / "docs" / "deep" / "data.bin")
    content = (served.sources["alpha"] / "docs" / "deep" / "data.bin").read_bytes()
    url = f"/api/v1/snapshots/{snapshot}/file"
    whole = served.get(url, params={"path": path})
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["Content-Length"] == str(len(content))
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Content-Disposition"].startswith('attachment; filename="data.bin"')
    etag = whole.headers["ETag"]
    size = len(content)
    for asked, start, stop in [
        ("bytes=0-99", 0, 100),
        ("bytes=1234567-2345678", 1234567, 2345679),
        ("bytes=-500", size - 500, size),
        ("bytes=2999000-", 2999000, size),
        ("bytes=2999990-99999999", 2999990, size),
    ]:
        part = served.get(url, params={"path": path}, headers={"Range": asked})
        assert part.status_code == 206, (asked, part.text)
        assert part.content == content[start:stop], asked
        assert part.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
        assert part.headers["Content-Length"] == str(stop - start)
        assert part.headers["ETag"] == etag
    for unsatisfiable in (f"bytes={size}-", "bytes=-0"):
        refused = served.get(url, params={"path": path}, headers={"Range": unsatisfiable})
        assert refused.status_code == 416, unsatisfiable
        assert refused.headers["Content-Range"] == f"bytes */{size}"
        assert refused.json()["error"] == "RangeNotSatisfiable"
    # Several ranges, or a malformed one: the whole file (a server may ignore Range).
    several = served.get(url, params={"path": path}, headers={"Range": "bytes=0-1,5-9"})
    assert several.status_code == 200 and several.content == content
    # Not a regular file, not there, or climbing out: refused before a byte is sent.
    for wrong, status, error in [
        (str(served.sources["alpha"] / "docs"), 400, "NotARegularFile"),
        (str(served.sources["alpha"] / "docs" / "link"), 400, "NotARegularFile"),
        (str(served.sources["alpha"] / "nothing"), 404, "PathNotInSnapshot"),
        (str(served.sources["alpha"] / "docs" / ".." / "top.txt"), 400, "UsageError"),
    ]:
        answer = served.get(url, params={"path": wrong})
        assert (answer.status_code, answer.json()["error"]) == (status, error), wrong
    # Every content read is in the audit log, as the token that asked.
    records = served.site.run_process("audit", "--action", "download", "--json", env=ENV)
    assert records.code == 0, records.stderr
    downloads = json.loads(records.stdout)
    assert any(r["outcome"] == "ok" and r["actor"].startswith("token:") for r in downloads)


def test_a_large_download_does_not_grow_the_servers_memory(served: Served) -> None:
    """Measured, not timed: the serve process's resident memory (VmRSS) before, after
    every 40 MiB that went out, and its peak (VmHWM, reset before) at the end, twice. Memory that
    followed the download's size would rise through the transfer; what grows here is
    caches and buffers of fixed size, full once 80 MiB went out."""
    snapshot = served.snapshots["big"][-1]
    docs = served.sources["big"] / "docs"
    routes = [
        ("file", f"/api/v1/snapshots/{snapshot}/file", {"path": str(docs / "big.bin")}, 32, 16),
        (
            "tar.zst",
            f"/api/v1/snapshots/{snapshot}/archive",
            {"path": str(docs), "format": "tar.zst"},
            # costor restore --archive - --format tar.zst of the same directory peaks
            # about 180 MiB above `costor ls` (zstd's workers, the read windows, blobs
            # read ahead); here 130-250 MiB were measured (2 cores).
            320,
            48,
        ),
    ]
    for kind, url, params, bound_mib, level_mib in routes:
        for round in (1, 2):
            served.reset_peak()
            before = served.memory_kib()
            samples, received, mark = [], 0, STEP
            with served.http.stream("GET", url, params=params, headers=served.headers()) as got:
                assert got.status_code == 200
                for chunk in got.iter_bytes():
                    received += len(chunk)
                    if received >= mark:
                        samples.append(served.memory_kib()["VmRSS"])
                        mark += STEP
            assert received >= BIG
            peak = served.memory_kib()["VmHWM"]
            print(
                f"{kind} #{round}: VmRSS before {before['VmRSS']} KiB; every 40 MiB "
                f"{samples} KiB; VmHWM {peak} KiB (+{(peak - before['VmRSS']) / 1024:.0f} MiB)"
            )
            assert (peak - before["VmRSS"]) / 1024 < bound_mib, (kind, before, peak)
            # Once the buffers are full (by 80 MiB sent: the archive writer's read
            # windows hold 64 MiB), the resident memory stays level to the end, while
            # 120 MiB more go out (the allocator's arenas move it by a few MiB).
            assert (max(samples[2:]) - samples[1]) / 1024 < level_mib, (kind, samples)


def test_versions_of_a_file_changed_across_three_backups(served: Served) -> None:
    path = str(served.sources["alpha"] / "docs" / "changing.txt")
    response = served.get("/api/v1/clients/alpha/versions", params={"path": path})
    assert response.status_code == 200, response.text
    document = response.json()
    versions = document["versions"]
    assert [v["size"] for v in versions] == [len(b"version 4\n") * 5, 30, 10]  # newest first
    alpha = served.snapshots["alpha"]
    assert [[s["id"] for s in v["snapshots"]] for v in versions] == [[a] for a in reversed(alpha)]
    # A file that never changed is one version, in every snapshot.
    same = served.get(
        "/api/v1/clients/alpha/versions",
        params={"path": str(served.sources["alpha"] / "docs" / "readme.txt")},
    ).json()["versions"]
    assert len(same) == 1 and len(same[0]["snapshots"]) == 3


def test_a_token_limited_to_a_client_gets_404_for_another(served: Served) -> None:
    beta = served.snapshots["beta"][-1]
    alpha = served.snapshots["alpha"][-1]
    for url, params in [
        (f"/api/v1/snapshots/{beta}/file", {"path": str(served.sources["beta"] / "top.txt")}),
        (f"/api/v1/snapshots/{beta}/archive", {"path": "/"}),
        ("/api/v1/snapshots/beta:latest/file", {"path": str(served.sources["beta"] / "top.txt")}),
        ("/api/v1/clients/beta/versions", {"path": str(served.sources["beta"] / "top.txt")}),
    ]:
        answer = served.get(url, token="alpha", params=params)
        assert answer.status_code == 404, url
        assert served.get(url, params=params).status_code == 200, url
    own = served.get(
        f"/api/v1/snapshots/{alpha}/file",
        token="alpha",
        params={"path": str(served.sources["alpha"] / "top.txt")},
    )
    assert own.status_code == 200 and own.content == b"top\n"
    assert served.get("/api/v1/clients/nobody/versions", params={"path": "/x"}).status_code == 404


@pytest.mark.parametrize("route", ["file", "archive"])
def test_a_client_leaving_mid_download_leaves_the_server_answering(
    served: Served, route: str
) -> None:
    snapshot = served.snapshots["big"][-1]
    docs = served.sources["big"] / "docs"
    params = {"path": str(docs / "big.bin")} if route == "file" else {"path": str(docs)}
    for _ in range(3):
        url = f"/api/v1/snapshots/{snapshot}/{route}"
        with (
            httpx.Client(base_url=str(served.http.base_url), timeout=60) as leaving,
            leaving.stream("GET", url, params=params, headers=served.headers()) as response,
        ):
            assert response.status_code == 200
            taken = 0
            for chunk in response.iter_raw():
                taken += len(chunk)
                if taken > 1024 * 1024:
                    break  # the connection closes at the end of the block
            # Meanwhile, with the download open and waiting on this client, other
            # requests are answered: it holds no lock of the API's (the gate).
            started = time.monotonic()
            assert served.get("/api/v1/snapshots", params={"client": "alpha"}).status_code == 200
            assert time.monotonic() - started < 10
    started = time.monotonic()
    assert served.get("/api/v1/status").status_code == 200
    assert time.monotonic() - started < 10
    # The writer stopped and the lease is released: no lease is left in the pool.
    deadline = time.monotonic() + 30
    while any((served.site.pool_path / "locks").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any((served.site.pool_path / "locks").iterdir())
    records = served.site.run_process("audit", "--action", "download", "--json", env=ENV)
    gone = [r for r in json.loads(records.stdout) if r["outcome"] == "failed"]
    assert gone and gone[0]["detail"]["error"] == "ConnectionAbortedError"


def test_downloads_beyond_the_limit_are_refused_at_once_until_one_ends(served: Served) -> None:
    """MAX_DOWNLOADS stream at a time; the next answers 503 with Retry-After at once
    (nothing queued behind hours of transfers), and a slot is free again when a
    download ends, whether it was read to its end or its client went away."""
    from costor.server.downloads import MAX_DOWNLOADS

    big = served.snapshots["big"][-1]
    url = f"/api/v1/snapshots/{big}/archive"
    params = {"path": str(served.sources["big"]), "format": "tar"}
    clients = [
        httpx.Client(base_url=str(served.http.base_url), timeout=60)
        for _ in range(MAX_DOWNLOADS + 1)
    ]
    streams = []
    try:
        for client in clients[:MAX_DOWNLOADS]:
            stream = client.stream("GET", url, params=params, headers=served.headers())
            response = stream.__enter__()
            assert response.status_code == 200
            chunks = response.iter_bytes(65536)
            next(chunks)  # started, then not read: it stays open (while chunks is held)
            streams.append((stream, chunks))
        refused = served.get(url, params=params)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
        assert refused.json()["error"] == "ServerBusy"
        # A small file is refused too: every download holds a slot.
        readme = served.sources["alpha"] / "docs" / "readme.txt"
        alpha = served.snapshots["alpha"][-1]
        file_url = f"/api/v1/snapshots/{alpha}/file"
        assert served.get(file_url, params={"path": str(readme)}).status_code == 503
        # One client goes away: its slot is free again shortly after.
        stream, _chunks = streams.pop()
        stream.__exit__(None, None, None)
        clients[MAX_DOWNLOADS - 1].close()
        deadline = time.monotonic() + 30
        while (answer := served.get(file_url, params={"path": str(readme)})).status_code == 503:
            assert time.monotonic() < deadline, "the slot of a client that left was not freed"
            time.sleep(0.2)
        assert answer.status_code == 200 and answer.content == readme.read_bytes()
    finally:
        for stream, _chunks in streams:
            stream.__exit__(None, None, None)
        for client in clients:
            client.close()
    # All of them ended: every slot is free.
    deadline = time.monotonic() + 30
    while served.get(file_url, params={"path": str(readme)}).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize(
    "route",
    [
        "file",
        "archive",
    ],
)
def test_damage_found_midway_cuts_the_transfer(served: Served, route: str) -> None:
    """Last in the module, and it must stay last: it damages a pack of client big (a
    byte of the largest pack flipped; the server then records the damaged copy in the
    pool), so a test after it that reads big's archive fails when its reads reach that
    blob (test_downloads_beyond_the_limit_... did, when the machine was slow)."""
    packs = sorted((served.site.pool_path / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    largest = packs[-1]
    data = bytearray(largest.read_bytes())
    data[len(data) // (2 if route == "file" else 3)] ^= 0xFF  # another blob each time
    largest.write_bytes(bytes(data))
    snapshot = served.snapshots["big"][-1]
    docs = served.sources["big"] / "docs"
    params = {"path": str(docs / "big.bin")} if route == "file" else {"path": str(docs)}
    received = 0
    url = f"/api/v1/snapshots/{snapshot}/{route}"
    with (
        pytest.raises(httpx.RemoteProtocolError),
        served.http.stream("GET", url, params=params, headers=served.headers()) as response,
    ):
        assert response.status_code == 200  # sent before the damage was met
        for chunk in response.iter_bytes():
            received += len(chunk)
    assert received < BIG  # cut, never a complete-looking transfer
    records = served.site.run_process("audit", "--action", "download", "--json", env=ENV)
    newest = json.loads(records.stdout)[0]
    assert newest["outcome"] == "failed"
    assert newest["detail"]["error"] in ("DataCorruption", "ObjectDamaged")
    assert served.get("/api/v1/status").status_code == 200
