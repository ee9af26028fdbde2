"""The reverse-proxy snippet of docs/server.md, run: a real nginx (Debian's, installed by
scripts/test.sh) with the server block taken from the page, terminating TLS with a
certificate of a CA the test makes, in front of a real `costor serve` on loopback.
Through it: the API answers, a download streams with its range, the audit log names
the caller's address (not the proxy's) and the proxy's request id, and a caller that
reaches the API directly cannot choose the recorded address."""

from __future__ import annotations

import io
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import httpx
import pytest
from serving import ENV, free_port, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables
from support.tlsca import Authority

from costor.cli.main import main

NGINX = "/usr/sbin/nginx"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"
USERS = """
[groups.admins]
roles = ["admin"]

[users.ada]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""
CALLER = "127.0.0.3"  # the caller's own address, as the proxy sees it

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")


def documented_server_block() -> str:
    blocks = re.findall(r"```nginx\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/server.md has one nginx block"
    return str(blocks[0])


def nginx_config(
    root: Path, block: str, *, port: int, api_port: int, cert: Path, key: Path
) -> Path:
    """The documented block with this test's address, certificate and API port, in the
    smallest nginx.conf around it (files under ``root``, no daemon, no root paths)."""
    replaced = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/costor/fullchain.pem": str(cert),
        "/etc/ssl/costor/privkey.pem": str(key),
        "http://127.0.0.1:8443": f"http://127.0.0.1:{api_port}",
    }
    for old, new in replaced.items():
        assert old in block, f"the documented block no longer has {old!r}"
        block = block.replace(old, new)
    for directory in ("client", "proxy", "logs"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {root}/logs/access.log;
    client_body_temp_path {root}/client;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/proxy;
    uwsgi_temp_path {root}/proxy;
    scgi_temp_path {root}/proxy;
{block}
}}
"""
    )
    return conf


@pytest.fixture
def proxied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Site, str, str, Path]]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "note.txt").write_text("hello through a proxy\n")
    inventory = write_tables(tmp_path, *local_tables({"alpha": [src]}), USERS)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["token", "create", "-c", str(inventory), "--user", "ada", "--scope", "admin"])
    assert code == 0, err.getvalue()
    token = out.getvalue().strip()
    process, base_url = start_serve(site)
    authority = Authority.make(tmp_path)
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    authority.issue(cert, key)
    ca = authority.path
    port = free_port()
    api_port = int(base_url.rsplit(":", 1)[1])
    conf = nginx_config(
        tmp_path / "nginx",
        documented_server_block(),
        port=port,
        api_port=api_port,
        cert=cert,
        key=key,
    )
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path / "nginx"), "-c", str(conf), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        context = ssl.create_default_context(cafile=str(ca))
        while True:
            try:
                httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context, timeout=2)
                break
            except httpx.TransportError:
                if nginx.poll() is not None or time.monotonic() > deadline:
                    message = nginx.communicate()[1].decode()
                    raise AssertionError(f"nginx did not start: {message}") from None
                time.sleep(0.1)
        yield site, f"https://127.0.0.1:{port}", token, ca
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
        stop_serve(process)
        shutil.rmtree(tmp_path / "nginx", ignore_errors=True)


def test_the_documented_nginx_block_serves_the_api(proxied: tuple[Site, str, str, Path]) -> None:
    site, url, token, ca = proxied
    transport = httpx.HTTPTransport(
        local_address=CALLER, verify=ssl.create_default_context(cafile=str(ca))
    )
    with httpx.Client(
        base_url=url, transport=transport, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        [snapshot] = http.get("/api/v1/snapshots").json()
        # A download streams through, ranges included, byte for byte.
        src = site.root / "src"
        file_url = f"/api/v1/snapshots/{snapshot['id']}/file"
        whole = http.get(file_url, params={"path": str(src / "big.bin")})
        assert whole.status_code == 200 and whole.content == (src / "big.bin").read_bytes()
        part = http.get(
            file_url, params={"path": str(src / "big.bin")}, headers={"Range": "bytes=100-199"}
        )
        assert part.status_code == 206 and part.content == (src / "big.bin").read_bytes()[100:200]
        # A job queued through the proxy is recorded with the caller's address and the
        # proxy's request id, which the answer carries too.
        queued = http.post("/api/v1/clients/alpha/backup")
        assert queued.status_code == 202, queued.text
        request_id = queued.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)  # nginx's $request_id
    records = site.cli("audit", "--json", "--action", "jobs.add").json()
    [record] = [r for r in records if r["request_id"] == request_id]
    assert record["source"] == CALLER
    access_log = (site.root / "nginx" / "logs" / "access.log").read_text()
    assert "POST /api/v1/clients/alpha/backup" in access_log


def test_forwarded_headers_from_a_caller_are_not_believed(
    proxied: tuple[Site, str, str, Path],
) -> None:
    """Straight to the API (not through the proxy), from an address other than the
    proxy's: its X-Forwarded-For is ignored and the audit log names where it came from."""
    site, _url, token, _ca = proxied
    conf = (site.root / "nginx" / "nginx.conf").read_text()
    api_url = re.findall(r"proxy_pass (\S+);", conf)[0]
    transport = httpx.HTTPTransport(local_address=CALLER)
    with httpx.Client(base_url=api_url, transport=transport, timeout=30) as http:
        queued = http.post(
            "/api/v1/clients/alpha/backup",
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.9"},
        )
    assert queued.status_code == 202, queued.text
    records = site.cli("audit", "--json", "--action", "jobs.add").json()
    [record] = [r for r in records if r["request_id"] == queued.headers["X-Request-Id"]]
    assert record["source"] == CALLER
