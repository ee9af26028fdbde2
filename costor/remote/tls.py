"""Whom ``costor --server`` trusts: the site's certificate pinned at first use, or a CA.

**Pinned** (the default, as ssh trusts host keys): the client checks no CA and no host
name; right after the TLS handshake, before a byte of HTTP (the token included) is
sent, it compares the SHA-256 fingerprint of the certificate the server presents with
the one pinned for that ``HOST:PORT`` in the known-servers file. The first connection
pins it (and the CLI says so on stderr, with the fingerprint, for the user to compare
with the site's administrator); a different certificate later is refused
(:class:`~costor.errors.ServerCertificateChanged`, which names the file and the line to
delete if the certificate was replaced on purpose).

**A CA** (``--server-ca FILE``): ordinary verification against that CA, host name
included; nothing is pinned.

The check runs in :meth:`PinningContext.wrap_socket`, which the HTTP stack calls to
start TLS on each new connection, so every connection is checked, kept-alive ones
being reused only after their check.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costor.errors import ServerCertificateChanged, ServerCertificateUntrusted, UsageError
from costor.remote import known_servers
from costor.remote.known_servers import Pin

# Told when a server is pinned for the first time: (server, pin). The CLI prints it.
PinnedNotice = Callable[[str, Pin], None]


@dataclass(frozen=True)
class TlsTrust:
    """What to trust: a CA file, else the pins of ``known_servers`` (default: the file
    of :func:`costor.remote.known_servers.default_file`); ``on_pin`` hears of new pins."""

    ca_file: Path | None = None
    known_servers: Path | None = None
    on_pin: PinnedNotice | None = field(default=None, compare=False)

    def context(self, server: str) -> ssl.SSLContext:
        """The client context for ``server`` (``HOST:PORT``)."""
        if self.ca_file is not None:
            try:
                return ssl.create_default_context(cafile=str(self.ca_file))
            except (OSError, ssl.SSLError) as error:
                raise UsageError(
                    message=f"--server-ca {self.ca_file}: not a readable PEM CA "
                    f"certificate ({error})"
                ) from None
        return PinningContext.pinning(
            server, self.known_servers or known_servers.default_file(), self.on_pin
        )


class PinningContext(ssl.SSLContext):
    """A client context that trusts exactly the certificate pinned for one server."""

    server: str
    known_servers: Path
    on_pin: PinnedNotice | None

    @classmethod
    def pinning(cls, server: str, file: Path, on_pin: PinnedNotice | None = None) -> PinningContext:
        context = cls(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The certificate is checked by its fingerprint below, not by a CA or a name.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.server = server
        context.known_servers = file
        context.on_pin = on_pin
        return context

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
        tls = super().wrap_socket(sock, *args, **kwargs)
        try:
            self.check(tls.getpeercert(binary_form=True))
        except BaseException:
            tls.close()
            raise
        return tls

    def check(self, certificate_der: bytes | None) -> None:
        """Refuse, pin, or accept the certificate the server presented."""
        if not certificate_der:
            raise ServerCertificateUntrusted(
                server=self.server, reason="it presented no certificate"
            )
        presented = known_servers.fingerprint(certificate_der)
        pin = known_servers.lookup(self.known_servers, self.server)
        if pin is None:
            pin = known_servers.record(self.known_servers, self.server, presented)
            if self.on_pin is not None:
                self.on_pin(self.server, pin)
        elif pin.fingerprint != presented:
            raise ServerCertificateChanged(
                server=self.server,
                file=pin.file,
                line=pin.line,
                recorded=pin.fingerprint,
                presented=presented,
            )
