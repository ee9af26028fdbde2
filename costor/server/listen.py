"""Serving the app: uvicorn on a thread of the ``costor serve`` process, beside the
scheduler (which keeps the main thread, its signals and its forked workers).

The socket is bound here, on the caller's thread, before uvicorn starts: an address in
use or not allowed is a :class:`ListenFailed` error at once (exit 1), not a line in a
log while the daemon runs on without its API. uvicorn's own signal handlers are not
installed (the daemon's SIGTERM stops both: :meth:`HttpServer.stop`).

Plain HTTP is served on a loopback address only, unless the site says
``insecure_http = true`` (a reverse proxy or a private network protects it); with
``tls`` the server speaks HTTPS with the site's certificate and key (PEM files).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from costor.config.model import is_loopback, split_listen
from costor.errors import CostorError
from costor.server.app import create_app
from costor.server.gate import Gate
from costor.util.log import get_logger

logger = get_logger("serve")
START_TIMEOUT = 30.0  # seconds for uvicorn to start serving on its bound socket


class ListenFailed(CostorError):
    """costor serve cannot listen on {address}: {reason}"""


@dataclass(frozen=True)
class ListenSettings:
    address: str  # HOST:PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure_http: bool = False
    # False for the default address only: when another daemon on this machine serves it
    # already (a second instance sharing a PostgreSQL state), this one runs without an
    # API and says so. An address given (--listen, the site's listen) must be served.
    required: bool = True

    def check(self) -> tuple[str, int]:
        try:
            host, port = split_listen(self.address)
        except ValueError as error:
            raise ListenFailed(address=self.address, reason=str(error)) from None
        if self.tls_cert is None and not self.insecure_http and not is_loopback(host):
            raise ListenFailed(
                address=self.address,
                reason="plain HTTP is served on a loopback address only: give the site "
                "tls = { cert, key }, or insecure_http = true behind a proxy",
            )
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ListenFailed(address=self.address, reason=f"no file {path}")
        return host, port


class HttpServer:
    """The API on ``settings.address``, served until :meth:`stop`."""

    def __init__(self, inventory_path: str | Path, settings: ListenSettings) -> None:
        self.settings = settings
        self.gate = Gate(inventory_path)
        self.app = create_app(inventory_path, gate=self.gate)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = self.settings.check()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it. Without it, on a kept-alive connection every
        # response waited ~40 ms: uvicorn writes the headers and the body apart, and
        # Nagle held the body until the client's delayed ACK of the headers (a served
        # socket does not get asyncio's own TCP_NODELAY). bench/api.py measures it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError as error:
            sock.close()
            failed = ListenFailed(address=self.settings.address, reason=error.strerror)
            if self.settings.required:
                raise failed from None
            logger.warning(f"{failed}; running without the API (give --listen HOST:PORT)")
            return
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # X-Forwarded-For/-Proto believed from a proxy on this machine only (docs/
            # server.md "Behind a reverse proxy"): from anyone else they are ignored, so a
            # caller cannot choose the address the audit log records. Explicit rather
            # than uvicorn's default, which a FORWARDED_ALLOW_IPS in the environment moves.
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            ssl_certfile=str(self.settings.tls_cert) if self.settings.tls_cert else None,
            ssl_keyfile=str(self.settings.tls_key) if self.settings.tls_key else None,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=self._serve, args=(server, sock), name="costor-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ListenFailed(address=self.settings.address, reason="the server did not start")
            time.sleep(0.01)
        scheme = "https" if self.settings.tls_cert else "http"
        logger.info(f"costor serve: API on {scheme}://{self.settings.address}/api/v1")

    @staticmethod
    def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        # Not on the main thread: uvicorn installs no signal handlers (the daemon's stay).
        server.run(sockets=[sock])

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
