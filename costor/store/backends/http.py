"""A pool on another site, reached through its Backup API (``costor serve``'s
``/api/v1/pools/NAME/objects/``): a backend like any other, so ``costor pool copy``
copies to and from ``https://site:8443/api/v1/pools/NAME`` and the backend contract's
suite runs against it.

The server is not trusted more than storage: every name it lists is checked with
:func:`validate_name`, sizes must be integers, a listing must end with its end line (a
listing cut short is an error, never a shorter pool), a range must be exactly as long
as asked (shorter: :class:`ObjectTruncated`) and a whole object as long as its
``Content-Length`` (httpx checks it).

Errors: a connection that fails or is cut, a timeout, 408, 429, 502, 503 and 504 are
:class:`BackendTransient` (``Retry-After`` as ``retry_after``; 429, and the server's
storage throttling it, :class:`BackendThrottled`), so the retry filter applies; 404 is :class:`ObjectNotFound`; 507 :class:`StorageFull`; a
server's damage answer (``ObjectTruncated``, 500) is damage here too; anything else (a
token refused: 401, 403; a name or object refused: 400, 409, 413, 422) is a permanent
:class:`BackendError` carrying the server's message.

TLS: the server's certificate is checked against a CA (a PEM file) or pinned by the
SHA-256 fingerprint of its DER bytes (``sha256:<64 hex>``, colons allowed, as
``openssl x509 -fingerprint -sha256`` prints it). A pin is checked before any request is
sent, on a connection of its own, and the pinned certificate is then the only one
trusted (as a trust anchor, host name not checked: the pin is the server's identity),
so a connection to anyone else fails its handshake before the token leaves. Plain
``http://`` is for loopback addresses only (tests, a proxy on the same machine).

Thread-safe: one ``httpx.Client`` (its connection pool is) per backend.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import httpx

from costor.errors import (
    BackendError,
    BackendThrottled,
    BackendTransient,
    ObjectNotFound,
    ObjectTruncated,
    StorageFull,
)
from costor.store.backends.base import ObjectInfo, validate_name
from costor.util.net import is_loopback

_FINGERPRINT = re.compile(r"^(?:sha256:)?((?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2})$")
_POOL_PATH = re.compile(
    r"^(?P<base>(?:/[^/]+)*)/api/v1/pools/(?P<pool>[A-Za-z0-9_-][A-Za-z0-9_.-]*)/?$"
)
_TRANSIENT = {408, 429, 502, 503, 504}
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0  # a 512 MiB pack over a slow link; a stalled server still ends


def parse_fingerprint(text: str) -> str:
    """``sha256:AB:CD:…``, ``sha256:abcd…`` or ``AB:CD:…`` (as ``openssl x509
    -fingerprint -sha256`` prints it, and as ``costor --server``'s known-servers file
    keeps it) -> 64 lowercase hex digits."""
    matched = _FINGERPRINT.match(text.strip())
    if matched is None:
        raise ValueError(f"{text!r} is not a certificate fingerprint (sha256:<64 hex digits>)")
    return matched.group(1).replace(":", "").lower()


def split_location(url: str) -> tuple[str, str]:
    """``https://host:port[/base]/api/v1/pools/NAME`` -> (its URL without credentials,
    query or fragment, the pool's name); ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r}: expected https://HOST[:PORT]/api/v1/pools/NAME")
    if parts.username or parts.password:
        raise ValueError(f"{url!r}: no credentials in the URL (the token is COSTOR_TOKEN)")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: no query or fragment in a pool's location")
    matched = _POOL_PATH.match(parts.path)
    if matched is None:
        raise ValueError(f"{url!r}: the path must be /api/v1/pools/NAME")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"{url!r}: plain http:// only to a loopback address (a token sent in clear text "
            "is a token given away): use https://"
        )
    netloc = parts.netloc
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}", matched["pool"]


class HttpBackend:
    """The objects of pool ``url`` (``https://host:port/api/v1/pools/NAME``) through its
    site's Backup API, as ``token`` may (``append``: put, exists, list; ``read``: get,
    list; ``admin``: delete too)."""

    # The server hashes what arrives and refuses a mismatch, and keeps the identity file
    # and key slots write-once: a copy need not (and, with an append token, cannot)
    # read back what it wrote (costor/store/copy.py).
    verifies_on_arrival = True

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        ca_file: str | None = None,
        fingerprint: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.location, self.pool = split_location(url)
        parts = urlsplit(self.location)
        self._pin = parse_fingerprint(fingerprint) if fingerprint else None
        self._ca_file = ca_file
        self._address = (parts.hostname or "", parts.port or 443)
        self._verify: ssl.SSLContext | bool = True
        self._checked = parts.scheme == "http" or self._pin is None
        if parts.scheme == "https" and self._pin is None:
            self._verify = ssl.create_default_context(cafile=ca_file)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._headers = headers
        self._pinning = threading.Lock()
        self._client: httpx.Client | None = None if not self._checked else self._make_client()

    def __repr__(self) -> str:
        return f"HttpBackend({self.location!r})"  # never the token

    def _make_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.location}/objects/",
            headers=self._headers,
            verify=self._verify,
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    # --- TLS pinning -------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            with self._pinning:  # one probe, one client, whichever thread asks first
                if self._client is None:
                    self._verify = self._pinned_context()
                    self._client = self._make_client()
        return self._client

    def _pinned_context(self) -> ssl.SSLContext:
        """Fetch the server's certificate (nothing sent but a handshake), compare its
        fingerprint with the pin, and trust that certificate alone from now on."""
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        host, port = self._address
        try:
            with (
                socket.create_connection((host, port), timeout=self._timeout.connect) as raw,
                probe.wrap_socket(raw, server_hostname=host) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        except OSError as error:
            raise BackendTransient(name="*", reason=f"{self.location}: {error}") from error
        if der is None:
            raise BackendError(name="*", reason=f"{self.location}: no certificate presented")
        presented = hashlib.sha256(der).hexdigest()
        if presented != self._pin:
            raise BackendError(
                name="*",
                reason=f"{self.location} presents the certificate sha256:{presented}, not the "
                f"pinned sha256:{self._pin}: nothing was sent (someone may be intercepting "
                "the connection; if the server's certificate was renewed, pin the new one)",
            )
        pinned = ssl.create_default_context(cadata=ssl.DER_cert_to_PEM_cert(der))
        pinned.check_hostname = False  # the pin is the identity, not the name
        pinned.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf as its own anchor
        return pinned

    # --- the protocol --------------------------------------------------------------------

    def _request(self, method: str, name: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http().request(method, quote(name, safe="/"), **kwargs)
        except httpx.HTTPError as error:
            raise _transport_error(error, name, self.location) from error

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        validate_name(name)
        body = data if isinstance(data, bytes) else bytes(data)
        response = self._request(
            "PUT", name, content=body, headers={"Content-Type": "application/octet-stream"}
        )
        if response.status_code not in (200, 201):
            _raise_for(response, name, self.location)

    def get(self, name: str) -> bytes:
        validate_name(name)
        response = self._request("GET", name)
        if response.status_code != 200:
            _raise_for(response, name, self.location)
        return response.content

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        validate_name(name)
        if length <= 0:
            if not self.exists(name):
                raise ObjectNotFound(name=name)
            return b""
        wanted = f"bytes={offset}-{offset + length - 1}"
        response = self._request("GET", name, headers={"Range": wanted})
        if response.status_code == 416:
            raise ObjectTruncated(name=name, got=0, length=length, offset=offset)
        if response.status_code == 200:  # the whole object: a server that ignored the range
            data = response.content[offset : offset + length]
        elif response.status_code == 206:
            data = response.content
        else:
            _raise_for(response, name, self.location)
        if len(data) != length:
            raise ObjectTruncated(name=name, got=len(data), length=length, offset=offset)
        return data

    def exists(self, name: str) -> bool:
        validate_name(name)
        response = self._request("HEAD", name)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        _raise_for(response, name, self.location)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        shown = f"{prefix}*"
        try:
            with self._http().stream("GET", "", params={"prefix": prefix}) as response:
                if response.status_code != 200:
                    response.read()
                    _raise_for(response, shown, self.location)
                ended = False
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    if ended:
                        raise BackendError(name=shown, reason="the listing went on past its end")
                    entry = _listing_entry(line, shown)
                    if entry is None:
                        ended = True
                        continue
                    if not entry.name.startswith(prefix):
                        raise BackendError(
                            name=shown, reason=f"the server listed {entry.name!r}, not asked for"
                        )
                    yield entry
        except httpx.HTTPError as error:
            raise _transport_error(error, shown, self.location) from error
        if not ended:
            raise BackendTransient(name=shown, reason="the listing was cut short (no end line)")

    def delete(self, name: str) -> None:
        validate_name(name)
        response = self._request("DELETE", name)
        if response.status_code not in (200, 204, 404):
            _raise_for(response, name, self.location)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _listing_entry(line: str, shown: str) -> ObjectInfo | None:
    """One NDJSON line of a listing: an object, or None for the end line."""
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        raise BackendError(name=shown, reason="the server sent a listing line that is not JSON")
    if entry.get("end") is True:
        return None
    name, size = entry.get("name"), entry.get("size")
    if not isinstance(name, str) or type(size) is not int or size < 0:
        raise BackendError(name=shown, reason=f"the server listed a malformed entry: {line[:200]}")
    try:
        validate_name(name)
    except BackendError:
        raise BackendError(name=shown, reason=f"the server listed the name {name!r}") from None
    return ObjectInfo(name, size)


def _transport_error(error: httpx.HTTPError, name: str, location: str) -> BackendError:
    """A connection that failed: transient, but for a certificate that does not verify
    (retrying will not make it trusted)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return BackendError(
                name=name,
                reason=f"{location}: the server's certificate is not trusted ({cause.verify_message}): "
                "give its CA (COSTOR_SERVER_CA) or pin it (COSTOR_SERVER_FINGERPRINT)",
            )
        cause = cause.__cause__ or cause.__context__
    return BackendTransient(name=name, reason=f"{location}: {type(error).__name__}: {error}")


def _raise_for(response: httpx.Response, name: str, location: str) -> NoReturn:
    status = response.status_code
    kind, message = _server_error(response)
    reason = f"{location} answered {status}" + (f" ({kind}: {message})" if message else "")
    if status == 404:
        raise ObjectNotFound(name=name)
    if status == 507:
        raise StorageFull(name=name, reason=reason)
    if status in _TRANSIENT:
        retry_after = _retry_after(response.headers.get("retry-after"))
        if status == 429 or kind == "BackendThrottled":
            raise BackendThrottled(name=name, reason=reason, retry_after=retry_after)
        raise BackendTransient(name=name, reason=reason, retry_after=retry_after)
    if kind == "ObjectTruncated":
        raise ObjectTruncated(message=f"{location}: {message}", name=name)
    raise BackendError(name=name, reason=reason)


def _server_error(response: httpx.Response) -> tuple[str, str]:
    """The error shape of CoStor's server (``{"error", "message"}``), or ("", "")."""
    try:
        document = response.json()
    except ValueError:
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    kind, message = document.get("error"), document.get("message")
    return (kind if isinstance(kind, str) else "")[:100], (
        message if isinstance(message, str) else ""
    )[:500]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
