"""`costor serve` with its API: where it may listen (plain HTTP on loopback only, TLS
with the site's certificate), jobs forked while requests are served, SIGTERM stopping
both. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serving import ENV, free_port, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, site_table, write_tables

from costor.server.listen import ListenFailed, ListenSettings


def test_plain_http_is_for_loopback_only(tmp_path: Path) -> None:
    assert ListenSettings("127.0.0.1:8443").check() == ("127.0.0.1", 8443)
    assert ListenSettings("[::1]:8443").check() == ("::1", 8443)
    assert ListenSettings("localhost:8443").check() == ("localhost", 8443)
    for address in ("0.0.0.0:8443", "192.0.2.7:8443", "backup.example.org:8443"):
        with pytest.raises(ListenFailed, match="loopback address only"):
            ListenSettings(address).check()
        assert ListenSettings(address, insecure_http=True).check()[1] == 8443
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    with pytest.raises(ListenFailed, match="no file"):
        ListenSettings("0.0.0.0:8443", tls_cert=cert, tls_key=key).check()
    cert.write_text("x")
    key.write_text("x")
    assert ListenSettings("0.0.0.0:8443", tls_cert=cert, tls_key=key).check()[1] == 8443
    with pytest.raises(ListenFailed, match="expected HOST:PORT"):
        ListenSettings("8443").check()


def test_serve_refuses_plain_http_off_loopback_before_binding(tmp_path: Path, source: Path) -> None:
    inventory = write_tables(tmp_path, *local_tables({"alpha": [source]}))
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.run_process("serve", "--listen", "0.0.0.0:1", timeout=60)
    assert result.code == 1
    assert "cannot listen on 0.0.0.0:1: plain HTTP is served on a loopback" in result.stderr


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made by the test (its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "costor test site")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "site.crt", directory / "site.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_from_the_site_table(tmp_path: Path, source: Path) -> None:
    cert, _key = self_signed(tmp_path)
    port = free_port()
    tables = local_tables({"alpha": [source]})
    tables[0] = site_table(
        "hq", f'listen = "127.0.0.1:{port}"', 'tls = { cert = "site.crt", key = "site.key" }'
    )
    inventory = write_tables(tmp_path, *tables)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    process = site.process("serve", "--tick", "0.2", env=ENV)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200
        with pytest.raises(httpx.TransportError):  # no plain HTTP on a TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        with pytest.raises(httpx.TransportError):  # an unknown certificate is refused
            httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        stop_serve(process)


def test_jobs_run_while_the_api_answers_and_sigterm_stops_both(
    tmp_path: Path, source: Path
) -> None:
    """The daemon forks each job while the API thread serves: jobs finish (no lock or
    SQLite connection of the API is inherited mid-use), then SIGTERM ends both."""
    inventory = write_tables(tmp_path, *local_tables({"alpha": [source]}))
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    process, base_url = start_serve(site, "--workers", "2")
    try:
        for _ in range(3):
            assert site.cli("jobs", "add", "backup", "alpha").code == 0
        deadline = time.monotonic() + 240
        while True:
            response = httpx.get(f"{base_url}/metrics", timeout=30)
            assert response.status_code == 200
            jobs = json.loads(site.cli("jobs", "--json").stdout)
            if all(job["state"] == "succeeded" for job in jobs) and len(jobs) == 3:
                break
            assert not any(job["state"] in ("failed", "interrupted") for job in jobs), jobs
            assert time.monotonic() < deadline, jobs
    finally:
        log = stop_serve(process)
    assert "stopped" in log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/healthz", timeout=5)
