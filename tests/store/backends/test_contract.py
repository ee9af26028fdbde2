"""One conformance suite for every backend (the contract in costor/store/backends/base.py).

The names are a pool's own (docs/format.md): packs and index segments named by the
BLAKE3-256 of their bytes, key slots by 32 hex digits, so that a backend that accepts
only a pool's objects, verified against their names (a site's Backup API, "http"), runs
the same suite."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
)
from support.fixtures import Site
from support.inventory import PASSPHRASE, PASSPHRASE_ENV, local_tables, write_tables
from support.s3servers import (  # noqa: F401  (moto_server, rclone_server: fixtures)
    ConnectionCutter,
    S3Server,
    client_environment,
    dead_endpoint,
    make_s3_backend,
    moto_server,
    rclone_server,
    start_rclone,
)
from urllib3.exceptions import ProtocolError

from costor.errors import (
    BackendError,
    BackendThrottled,
    BackendTransient,
    ObjectNotFound,
    ObjectTruncated,
    StorageFull,
)
from costor.store.backends import Backend, LocalBackend
from costor.store.backends.http import HttpBackend
from costor.store.backends.memory import MemoryBackend
from costor.store.backends.s3 import S3Backend, translate_error
from costor.store.crypto import object_hash

MIB = 1024 * 1024
# S3's smallest part size, so that the large-object test below is a 3-part upload, and
# small listing pages, so that every listing of more than 50 objects takes several.
S3_CONTRACT = {"multipart_threshold": 5 * MIB, "multipart_chunk": 5 * MIB, "list_page_size": 50}


def pack(data: bytes) -> str:
    """A pack's name: packs/<h[0:2]>/<h[2:4]>/<h>, h the BLAKE3-256 of its bytes."""
    digest = object_hash(data)
    return f"packs/{digest[:2]}/{digest[2:4]}/{digest}"


def segment(data: bytes) -> str:
    return f"index/{object_hash(data)}"


def slot(number: int) -> str:
    return f"keys/{number:032x}"


class BackupApiServer:
    """A real `costor serve` on loopback whose pool "main" the Backup API serves, with
    an admin token (the suite deletes); each test empties the pool's directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        inventory = write_tables(root, *local_tables({}), USERS)
        self.site = Site(root, inventory, root / "pool")
        env = {PASSPHRASE_ENV: PASSPHRASE, "COSTOR_TEST_USER_PASSWORD": "a long test password"}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            assert self.site.cli("apply", "--auto-approve").code == 0
            created = self.site.cli("token", "create", "--user", "admin", "--scope", "admin")
            assert created.code == 0, created.stderr
        self.token = created.stdout.strip()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/api/v1/pools/main"
        self.process = self.site.process("serve", "--listen", f"127.0.0.1:{port}", env=env)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.process.communicate()[1].decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "costor serve did not answer /healthz"
                time.sleep(0.1)

    def empty_backend(self) -> HttpBackend:
        for child in self.site.pool_path.iterdir():
            if child.is_dir():
                for path in sorted(child.rglob("*"), reverse=True):
                    path.unlink() if path.is_file() else path.rmdir()
                child.rmdir()
            else:
                child.unlink()
        return HttpBackend(self.url, token=self.token)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


USERS = """
[groups.admins]
roles = ["admin"]

[users.admin]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""


@pytest.fixture(scope="module")
def backup_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackupApiServer]:
    server = BackupApiServer(tmp_path_factory.mktemp("backup-api"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["memory", "local", "s3-moto", "s3-rclone", "http"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
    elif request.param == "local":
        yield LocalBackend(tmp_path / "objects")
    elif request.param == "http":
        server: BackupApiServer = request.getfixturevalue("backup_api")
        http = server.empty_backend()
        yield http
        http.close()
    else:
        s3: S3Server = request.getfixturevalue(request.param.removeprefix("s3-") + "_server")
        # A prefix, so every contract test also checks that keys map back to names.
        backend = make_s3_backend(s3, s3.new_bucket(), "pools/main", **S3_CONTRACT)
        yield backend
        backend.close()


def test_put_get_roundtrip(backend: Backend) -> None:
    name = pack(b"payload")
    backend.put(name, b"payload")
    assert backend.get(name) == b"payload"
    assert backend.exists(name)


def test_put_is_idempotent(backend: Backend) -> None:
    name = segment(b"same")
    backend.put(name, b"same")
    backend.put(name, b"same")
    assert backend.get(name) == b"same"
    assert [i.name for i in backend.list("index/")] == [name]


def test_missing_object_raises_not_found(backend: Backend) -> None:
    missing = f"snapshots/{object_hash(b'nope')}"
    with pytest.raises(ObjectNotFound):
        backend.get(missing)
    with pytest.raises(ObjectNotFound):
        backend.get_range(missing, 0, 1)
    assert not backend.exists(missing)


def test_get_range_exact_or_error(backend: Backend) -> None:
    name = pack(bytes(range(100)))
    backend.put(name, bytes(range(100)))
    assert backend.get_range(name, 10, 5) == bytes(range(10, 15))
    with pytest.raises(ObjectTruncated):  # a BackendError that is damage (exit 3)
        backend.get_range(name, 98, 5)


def test_list_by_prefix_with_sizes(backend: Backend) -> None:
    a, b, c = pack(b"1"), pack(b"22"), segment(b"333")
    backend.put(a, b"1")
    backend.put(b, b"22")
    backend.put(c, b"333")
    listed = {i.name: i.size for i in backend.list("packs/")}
    assert listed == {a: 1, b: 2}
    assert {i.name for i in backend.list("")} == {a, b, c}


def test_delete_missing_is_not_an_error(backend: Backend) -> None:
    backend.put(slot(1), b"x")
    backend.delete(slot(1))
    backend.delete(slot(1))
    assert not backend.exists(slot(1))


@pytest.mark.parametrize("name", ["../escape", "/abs", "a//b", "a/./b", "", "a/../b"])
def test_names_that_escape_are_refused(backend: Backend, name: str) -> None:
    with pytest.raises(BackendError):
        backend.put(name, b"x")


def test_concurrent_puts(backend: Backend) -> None:
    def writer(n: int) -> None:
        for i in range(20):
            backend.put(pack(bytes([n, i]) * 100), bytes([n, i]) * 100)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(backend.list("packs/"))) == 160
    assert backend.get(pack(bytes([3, 7]) * 100)) == bytes([3, 7]) * 100


def test_large_object_roundtrips_byte_identically(backend: Backend) -> None:
    """On S3 this is a multipart upload (5 + 5 + 2 MiB parts)."""
    data = os.urandom(12 * MIB + 3)
    name = pack(data)
    backend.put(name, memoryview(data))
    assert backend.get(name) == data
    across_parts = 5 * MIB - 10
    assert backend.get_range(name, across_parts, 20) == data[across_parts:][:20]
    assert backend.get_range(name, 12 * MIB, 3) == data[-3:]
    assert {i.name: i.size for i in backend.list("packs/")} == {name: len(data)}


def test_put_accepts_any_bytes_like(backend: Backend) -> None:
    backend.put(slot(1), bytearray(b"ba"))
    backend.put(slot(2), memoryview(b"xxmvxx")[2:4])
    backend.put(slot(3), b"")
    assert backend.get(slot(1)) == b"ba"
    assert backend.get(slot(2)) == b"mv"
    assert backend.get(slot(3)) == b""
    assert backend.get_range(slot(2), 1, 0) == b""
    assert {i.name: i.size for i in backend.list("keys/")} == {slot(1): 2, slot(2): 2, slot(3): 0}


def test_list_returns_every_object_of_a_long_listing(backend: Backend) -> None:
    """Several S3 listing pages (50 keys each here): continuation must lose nothing."""
    contents = {pack(f"obj{i}".encode()): f"obj{i}".encode() for i in range(230)}
    names = set(contents)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: backend.put(name, contents[name]), names))
    backend.put(segment(b"y"), b"y")
    listed = [i.name for i in backend.list("packs/")]
    assert len(listed) == len(names) and set(listed) == names


def test_local_put_leaves_no_partial_object(tmp_path: Path) -> None:
    """A temporary file from a killed writer is never listed as an object."""
    backend = LocalBackend(tmp_path / "objects")
    backend.put("packs/aa/bb/done", b"complete")
    partial = tmp_path / "objects" / "packs" / "aa" / "bb" / "next.tmp-123456"
    partial.write_bytes(b"half")
    assert [i.name for i in backend.list("packs/")] == ["packs/aa/bb/done"]
    assert backend.cleanup_temporaries() == 1


# --- S3: what the generic contract cannot see ------------------------------------------


@pytest.fixture(params=["moto", "rclone"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    return server


def _s3(server: S3Server, bucket: str, prefix: str = "", **kwargs: Any) -> S3Backend:
    backend: S3Backend = make_s3_backend(server, bucket, prefix, **kwargs)
    return backend


def _every_operation(backend: S3Backend) -> list[Callable[[], object]]:
    return [
        lambda: backend.put("keys/new", b"x"),
        lambda: backend.get("keys/k"),
        lambda: backend.get_range("keys/k", 0, 1),
        lambda: backend.exists("keys/k"),
        lambda: list(backend.list("keys/")),
        lambda: backend.delete("keys/k"),
    ]


def test_s3_multipart_upload_roundtrips_and_leaves_no_parts(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    backend = _s3(s3_server, bucket, "p", multipart_threshold=5 * MIB, multipart_chunk=5 * MIB)
    data = os.urandom(11 * MIB + 1)
    backend.put("packs/aa/bb/big", data)
    assert backend.get("packs/aa/bb/big") == data
    assert backend.get_range("packs/aa/bb/big", 10 * MIB, MIB + 1) == data[10 * MIB :]
    # The server holds one complete object, no upload in progress.
    head = s3_server.client().head_object(Bucket=bucket, Key="p/packs/aa/bb/big")
    assert head["ContentLength"] == len(data)
    assert _uploads_in_progress(s3_server, bucket) == 0


class _FailingPart:
    """Fault injection around the real client: the connection drops on part 2."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.aborted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_part(self, **kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            raise ConnectionClosedError(endpoint_url="http://127.0.0.1/injected")
        return self._client.upload_part(**kwargs)

    def abort_multipart_upload(self, **kwargs: Any) -> Any:
        self.aborted += 1
        return self._client.abort_multipart_upload(**kwargs)


def test_s3_failed_multipart_upload_is_aborted(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    backend = _s3(s3_server, bucket, multipart_threshold=5 * MIB, multipart_chunk=5 * MIB)
    real_client = backend._client
    faulty = backend._client = _FailingPart(real_client)
    data = os.urandom(12 * MIB)
    with pytest.raises(BackendTransient) as caught:
        backend.put("packs/cc/dd/big", data)
    assert caught.value.fields["name"] == "packs/cc/dd/big"
    assert faulty.aborted == 1
    assert not backend.exists("packs/cc/dd/big")
    assert list(backend.list("")) == []
    assert _uploads_in_progress(s3_server, bucket) == 0
    backend._client = real_client  # the connection is back: the same put now works
    backend.put("packs/cc/dd/big", data)
    assert backend.get("packs/cc/dd/big") == data


def _uploads_in_progress(server: S3Server, bucket: str) -> int:
    """moto lists multipart uploads; rclone does not implement ListMultipartUploads,
    but keeps each upload as a temporary file in the bucket's directory."""
    if server.kind == "moto":
        return len(server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    assert server.root is not None
    deadline = time.monotonic() + 5  # rclone removes an aborted stream asynchronously
    while True:
        temporary = [p for p in (server.root / bucket).rglob(".rclone_temp_*") if p.is_file()]
        if not temporary or time.monotonic() > deadline:
            return len(temporary)
        time.sleep(0.05)


def test_s3_prefix_isolates_backends_in_one_bucket(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    site_a = _s3(s3_server, bucket, "site-a")
    site_ab = _s3(s3_server, bucket, "/site-ab/")  # normalised to "site-ab/"
    whole = _s3(s3_server, bucket)
    assert (site_a.location, site_ab.location, whole.location) == (
        f"s3://{bucket}/site-a",
        f"s3://{bucket}/site-ab",
        f"s3://{bucket}",
    )
    site_a.put("keys/k", b"a")
    site_ab.put("keys/k", b"ab")
    site_ab.put("index/i", b"i")
    assert (site_a.get("keys/k"), site_ab.get("keys/k")) == (b"a", b"ab")
    assert [(i.name, i.size) for i in site_a.list("")] == [("keys/k", 1)]
    assert {i.name for i in site_ab.list("")} == {"keys/k", "index/i"}
    assert {i.name for i in whole.list("site-a")} == {
        "site-a/keys/k",
        "site-ab/keys/k",
        "site-ab/index/i",
    }
    assert not site_a.exists("index/i")
    site_a.delete("keys/k")
    assert not site_a.exists("keys/k") and site_ab.get("keys/k") == b"ab"


def test_s3_listing_one_key_per_page(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    backend = _s3(s3_server, bucket, "pool", list_page_size=1)
    _s3(s3_server, bucket, "other").put("packs/00/00/x", b"not ours")
    names = {f"packs/{i:02x}/00/o" for i in range(7)}
    for name in names:
        backend.put(name, b"1")
    assert sorted(i.name for i in backend.list("packs/")) == sorted(names)


def test_s3_wrong_credentials_are_a_permanent_error_naming_no_secret(
    s3_server: S3Server,
) -> None:
    bucket = s3_server.new_bucket()
    _s3(s3_server, bucket).put("keys/k", b"x")
    wrong_secret = "WrongSecret" + os.urandom(8).hex()
    backends = [
        _s3(s3_server, bucket, secret_key=wrong_secret),
        _s3(s3_server, bucket, access_key="AKIAUNKNOWNKEY000000", secret_key=wrong_secret),
    ]
    for backend in backends:
        assert wrong_secret not in backend.location + repr(backend)
        for operation in _every_operation(backend):
            with pytest.raises(BackendError) as caught:
                operation()
            error = caught.value
            assert not isinstance(error, BackendTransient | ObjectNotFound), error
            assert wrong_secret not in str(error) + repr(error.fields) + repr(error.__cause__)
            assert "403" in str(error)
    assert _s3(s3_server, bucket).get("keys/k") == b"x"  # nothing was changed


def test_s3_missing_bucket_is_a_permanent_error(s3_server: S3Server) -> None:
    backend = _s3(s3_server, "costor-no-such-bucket")
    for operation in (
        lambda: backend.put("keys/k", b"x"),
        lambda: backend.get("keys/k"),
        lambda: list(backend.list("")),
    ):
        with pytest.raises(BackendError) as caught:
            operation()
        assert not isinstance(caught.value, BackendTransient | ObjectNotFound)
        assert "bucket does not exist" in str(caught.value)


def test_s3_unreachable_endpoint_is_transient() -> None:
    backend = S3Backend(
        bucket="costor-any",
        endpoint=dead_endpoint(),
        access_key="key",
        secret_key="secret-not-shown",
        path_style=True,
        connect_timeout=2,
    )
    started = time.monotonic()
    for operation in _every_operation(backend):
        with pytest.raises(BackendTransient) as caught:
            operation()
        assert caught.value.fields["name"] in ("keys/k", "keys/new", "keys/*")
        assert "secret-not-shown" not in str(caught.value)
    assert time.monotonic() - started < 10  # refused at once, not retried


def test_s3_dropped_connections_are_transient(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    data = os.urandom(MIB)
    _s3(s3_server, bucket).put("packs/00/00/p", data)
    with ConnectionCutter(s3_server.endpoint, limit=4096) as truncating:
        cut = _s3(s3_server, bucket, endpoint=truncating.endpoint)
        for operation in (
            lambda: cut.get("packs/00/00/p"),
            lambda: cut.get_range("packs/00/00/p", 1000, 100_000),
        ):
            with pytest.raises(BackendTransient) as caught:
                operation()
            assert caught.value.fields["name"] == "packs/00/00/p"
    with ConnectionCutter(s3_server.endpoint, limit=0) as closing:
        dropped = _s3(s3_server, bucket, endpoint=closing.endpoint)
        with pytest.raises(BackendTransient):
            dropped.put("packs/00/00/q", b"the answer never comes")
        with pytest.raises(BackendTransient):
            dropped.exists("packs/00/00/p")


def test_s3_throttling_by_a_real_server(tmp_path: Path) -> None:
    """rclone answers SlowDown when a user has too many multipart uploads open."""
    with client_environment():
        server = start_rclone(tmp_path / "rclone", "--multipart-max-uploads", "1")
        try:
            bucket = server.new_bucket()
            server.client().create_multipart_upload(Bucket=bucket, Key="held/open")
            backend = _s3(server, bucket, multipart_threshold=5 * MIB, multipart_chunk=5 * MIB)
            with pytest.raises(BackendThrottled) as caught:
                backend.put("packs/ee/ff/big", os.urandom(6 * MIB))
            assert "SlowDown" in str(caught.value)
            backend.put("packs/ee/ff/small", b"single PUTs are not limited")
        finally:
            server.stop()


def _client_error(code: str, status: int, headers: dict[str, str] | None = None) -> Exception:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"message of {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("NoSuchKey", 404), ObjectNotFound),
        (_client_error("404", 404), ObjectNotFound),
        (_client_error("NoSuchBucket", 404), BackendError),
        (_client_error("NoSuchUpload", 404), BackendError),
        (_client_error("SlowDown", 503), BackendThrottled),
        (_client_error("ServiceUnavailable", 503), BackendThrottled),
        (_client_error("Throttling", 400), BackendThrottled),
        (_client_error("RequestLimitExceeded", 400), BackendThrottled),
        (_client_error("TooManyRequests", 429), BackendThrottled),
        (_client_error("InternalError", 500), BackendTransient),
        (_client_error("BadGateway", 502), BackendTransient),
        (_client_error("GatewayTimeout", 504), BackendTransient),
        (_client_error("RequestTimeout", 400), BackendTransient),
        (_client_error("XMinioStorageFull", 507), StorageFull),
        (_client_error("AccessDenied", 403), BackendError),
        (_client_error("InvalidAccessKeyId", 403), BackendError),
        (_client_error("SignatureDoesNotMatch", 403), BackendError),
        (_client_error("InvalidRange", 416), BackendError),
        (_client_error("NotImplemented", 501), BackendError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), BackendTransient),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), BackendTransient),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), BackendTransient),
        (IncompleteReadError(actual_bytes=1, expected_bytes=2), BackendTransient),
        (ProtocolError("Connection broken"), BackendTransient),
        (ConnectionResetError(104, "reset"), BackendTransient),
        (NoCredentialsError(), BackendError),
        (ValueError("anything else"), BackendError),
    ],
)
def test_s3_error_mapping(error: Exception, expected: type[Exception]) -> None:
    translated = translate_error(error, "packs/00/00/p", location="s3://b/p")
    assert type(translated) is expected
    assert translated.fields["name"] == "packs/00/00/p"


def test_s3_retry_after_is_passed_on() -> None:
    seconds = translate_error(_client_error("SlowDown", 503, {"retry-after": "7"}), "n")
    assert isinstance(seconds, BackendThrottled) and seconds.retry_after == 7
    date = translate_error(
        _client_error("InternalError", 500, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        "n",
    )
    assert isinstance(date, BackendTransient) and date.retry_after == 0
    none = translate_error(_client_error("SlowDown", 503), "n")
    assert isinstance(none, BackendThrottled) and none.retry_after is None


def test_s3_reasons_never_contain_the_secret() -> None:
    error = _client_error("AccessDenied", 403)
    error.response["Error"]["Message"] = "denied for s3cr3t-value"  # type: ignore[attr-defined]
    assert "s3cr3t-value" in str(translate_error(error, "n"))
    translated = translate_error(error, "n", redact=["s3cr3t-value"])
    assert "s3cr3t-value" not in str(translated) and "***" in str(translated)


def test_s3_configuration_is_checked() -> None:
    common: dict[str, Any] = {"bucket": "b", "endpoint": dead_endpoint()}
    assert S3Backend(prefix="/a/b/", **common).prefix == "a/b/"
    assert S3Backend(**common).location == "s3://b"
    with pytest.raises(BackendError):
        S3Backend(prefix="a/../b", **common)
    with pytest.raises(ValueError):
        S3Backend(multipart_chunk=MIB, **common)
    with pytest.raises(ValueError):
        S3Backend(list_page_size=1001, **common)
