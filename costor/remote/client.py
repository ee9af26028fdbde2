"""``ApiClient``: one method per Admin API route the CLI uses (docs/server.md), each
answering the route's JSON document, or raising the :mod:`costor.errors` class the
API's error names.

The server is untrusted: a JSON answer is read up to :data:`MAX_DOCUMENT` bytes and
must have the route's shape (an object or a list); an error's message reaches the
terminal without control characters; a download that ends early (the server cuts the
connection when it meets damage midway) is an error, never a complete-looking file.
Proxies from the environment are not used: the connection goes where the URL says,
and the token with it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import quote

import httpx

from costor import __version__, errors
from costor.errors import (
    CostorError,
    NotAuthenticated,
    RemoteApiError,
    ServerCertificateUntrusted,
    ServerUnreachable,
    SiteServerError,
    UsageError,
)
from costor.remote.tls import TlsTrust
from costor.util.net import is_loopback

API = "/api/v1"
# A JSON answer larger than this is refused: a page of 1,000 snapshots is ~1 MiB, the
# largest documents (a directory of 100,000 entries) ~30 MiB.
MAX_DOCUMENT = 256 * 1024 * 1024
MAX_MESSAGE = 2000  # characters of a server's error message shown
PAGE = 1000  # snapshots asked per page (the API's largest)
MAX_PAGES = 10_000  # a server that never ends its list is refused past 10 million snapshots
ENDED = ("succeeded", "failed", "cancelled", "interrupted")  # a job's last states
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_KINDS = {  # job kind -> the collection its target is in
    "backup": "clients",
    "forget": "clients",
    "selftest": "clients",
    "check": "pools",
    "prune": "pools",
}


class ApiClient:
    """The Admin API of the site at ``url`` (``https://HOST[:PORT][/PREFIX]``; plain
    ``http://`` to a loopback address only), as the bearer ``token``."""

    def __init__(
        self, url: str, token: str, tls: TlsTrust | None = None, *, timeout: float = 300.0
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as error:
            raise UsageError(message=f"--server {url!r} is not a URL: {error}") from None
        if parsed.scheme not in ("https", "http") or not parsed.host:
            raise UsageError(message=f"--server {url!r}: expected https://HOST[:PORT]")
        if parsed.scheme == "http" and not is_loopback(parsed.host):
            raise UsageError(
                message=f"--server {url!r}: plain http:// only to this machine (a loopback "
                "address): a token crossing a network in clear text is given away; use https://"
            )
        if parsed.query or parsed.fragment or parsed.userinfo:
            raise UsageError(message=f"--server {url!r}: no query, fragment or user in it")
        if not _TOKEN.match(token):
            raise NotAuthenticated(
                reason="the token given is not one (printable characters without spaces, as "
                "`costor token create` prints it)"
            )
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
        self.server = f"{host}:{port}"
        self.url = str(parsed).rstrip("/")
        verify: Any = True
        if parsed.scheme == "https":
            verify = (tls or TlsTrust()).context(self.server)
        self._http = httpx.Client(
            base_url=self.url + API,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"costor/{__version__}"},
            verify=verify,
            timeout=timeout,
            trust_env=False,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``GET /status``: ``costor status --json`` (a limited caller: its clients)."""
        return self._object("GET", "/status")

    def snapshots(self, *, client: str | None = None, pool: str | None = None) -> list[Any]:
        """Every snapshot ``GET /snapshots`` lists, page after page, oldest first."""
        found: list[Any] = []
        for _page in range(MAX_PAGES):
            params = {"limit": PAGE, "offset": len(found), "client": client, "pool": pool}
            page = self._list("GET", "/snapshots", params=_given(params))
            found.extend(page)
            if len(page) < PAGE:
                return found
        raise self._malformed("/snapshots", f"more than {MAX_PAGES} pages of {PAGE} snapshots")

    def snapshot(self, ref: str) -> dict[str, Any]:
        """``GET /snapshots/{ref}``: one snapshot, as in ``snapshots --json``."""
        return self._object("GET", f"/snapshots/{_segment(ref)}")

    def tree(self, ref: str, path: str) -> list[Any]:
        """``GET /snapshots/{ref}/tree``: ``costor ls REF PATH --json``."""
        return self._list("GET", f"/snapshots/{_segment(ref)}/tree", params={"path": path})

    def jobs(
        self, *, state: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[Any]:
        """``GET /jobs``: ``costor jobs --json``, newest first."""
        params = _given({"state": state, "kind": kind, "limit": limit})
        return self._list("GET", "/jobs", params=params)

    def job(self, job_id: int) -> dict[str, Any]:
        """``GET /jobs/{id}``: one job, as in ``costor jobs --json``."""
        return self._object("GET", f"/jobs/{int(job_id)}")

    def job_log(self, job_id: int, after: int | None = None) -> dict[str, Any]:
        """``GET /jobs/{id}/log``: the job's log lines after ``after`` (``costor jobs log
        ID --json``)."""
        params = {} if after is None else {"after": after}
        return self._object("GET", f"/jobs/{int(job_id)}/log", params=params)

    def archive(self, ref: str, path: str, format: str, sink: IO[bytes]) -> int:
        """``GET /snapshots/{ref}/archive``: ``path`` as a ``format`` archive, written to
        ``sink`` as it arrives; the bytes written."""
        url = f"/snapshots/{_segment(ref)}/archive"
        written = 0
        params = {"path": path, "format": format}
        with self._calling(), self._http.stream("GET", url, params=params) as response:
            if response.status_code != 200:
                raise self._error(response, _bounded(response.iter_bytes(), MAX_DOCUMENT))
            try:
                for chunk in response.iter_bytes():
                    sink.write(chunk)
                    written += len(chunk)
            except httpx.TransportError as error:
                raise SiteServerError(
                    server=self.server,
                    reason=f"the download stopped after {written} bytes, before its end "
                    f"({_describe(error)}): the archive is incomplete; the site's log "
                    f"says why (request {_clean(response.headers.get('X-Request-Id', '?'))})",
                ) from None
        return written

    # --- changing ------------------------------------------------------------------------

    def queue(self, kind: str, target: str) -> dict[str, Any]:
        """Queue a job now (``POST /clients/{c}/backup`` and the other action routes):
        the job's document."""
        collection = _KINDS.get(kind)
        if collection is None:
            choices = "|".join(_KINDS)
            raise UsageError(message=f"with --server, jobs add takes one of {{{choices}}}")
        return self._object("POST", f"/{collection}/{_segment(target)}/{kind}")

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        """``POST /jobs/{id}/cancel``: the job's document, cancelled."""
        return self._object("POST", f"/jobs/{int(job_id)}/cancel")

    def restore(
        self,
        ref: str,
        *,
        path: str,
        target: str,
        client: str | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> dict[str, Any]:
        """``POST /snapshots/{ref}/restore``: a restore job writing ``path`` into the
        directory ``target`` of the snapshot's client's machine (or ``client``'s); the
        job's document."""
        body = {
            "path": path,
            "target": target,
            "client": client,
            "include": include or [],
            "exclude": exclude or [],
        }
        return self._object("POST", f"/snapshots/{_segment(ref)}/restore", json=body)

    def follow(
        self,
        job_id: int,
        *,
        interval: float = 1.0,
        seen: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Read job ``job_id`` every ``interval`` seconds until it has ended; its last
        document (``seen`` is told each one read before)."""
        while True:
            job = self.job(job_id)
            if job.get("state") in ENDED:
                return job
            if seen is not None:
                seen(job)
            time.sleep(interval)

    # --- the exchange --------------------------------------------------------------------

    def _object(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        document = self._document(method, url, **kwargs)
        if not isinstance(document, dict):
            raise self._malformed(url, "not a JSON object")
        return document

    def _list(self, method: str, url: str, **kwargs: Any) -> list[Any]:
        document = self._document(method, url, **kwargs)
        if not isinstance(document, list) or not all(isinstance(d, dict) for d in document):
            raise self._malformed(url, "not a JSON list of objects")
        return document

    def _document(self, method: str, url: str, **kwargs: Any) -> Any:
        with self._calling(), self._http.stream(method, url, **kwargs) as response:
            body = _bounded(response.iter_bytes(), MAX_DOCUMENT)
            if body is None:
                raise self._malformed(url, f"larger than {MAX_DOCUMENT} bytes")
            if response.status_code >= 400:
                raise self._error(response, body)
            if response.status_code not in (200, 202):
                raise self._malformed(url, f"status {response.status_code}")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise self._malformed(url, "not JSON") from None

    def _calling(self) -> _Calling:
        return _Calling(self.server)

    def _malformed(self, url: str, what: str) -> SiteServerError:
        return SiteServerError(
            server=self.server, reason=f"the answer to {API}{url} is {what}: is this a CoStor site?"
        )

    def _error(self, response: httpx.Response, body: bytes | None) -> CostorError:
        """The error an answer of status >= 400 says: its class by name (the API's
        ``{"error", "message", "request_id"}``), else :class:`RemoteApiError`."""
        try:
            document = json.loads(body or b"")
        except (ValueError, UnicodeDecodeError):
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("error"), str):
            return RemoteApiError(
                server=self.server,
                status=response.status_code,
                error=_clean(response.reason_phrase or "")[:64] or "(no reason)",
                detail="not a CoStor error document: is this a CoStor site?",
            )
        name, message = document["error"], _clean(str(document.get("message", "")))
        request_id = _clean(str(document.get("request_id") or ""))
        cls = error_class(name)
        if cls is None or not message:
            detail = message or "no message"
            return RemoteApiError(
                server=self.server,
                status=response.status_code,
                error=_clean(name)[:64],
                detail=f"{detail} (request {request_id})" if request_id else detail,
            )
        error = cls.__new__(cls)
        # The message as the site made it; the class's own __init__ wants its fields.
        CostorError.__init__(error, message, request_id=request_id)
        if isinstance(error, errors.InventoryInvalid):
            error.diagnostics = []
        return error


class _Calling:
    """Turns the HTTP stack's failures to reach the server into CostorErrors."""

    def __init__(self, server: str) -> None:
        self.server = server

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: Any
    ) -> None:
        if isinstance(error, httpx.TransportError):
            reason = _describe(error)
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                raise ServerCertificateUntrusted(server=self.server, reason=reason) from None
            raise ServerUnreachable(server=self.server, reason=reason) from None


def error_class(name: str) -> type[CostorError] | None:
    """The class of :mod:`costor.errors` named ``name``, if there is one."""
    pending: list[type[CostorError]] = [CostorError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name and cls.__module__ == errors.__name__:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def _bounded(chunks: Iterator[bytes], limit: int) -> bytes | None:
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return _clean(text)


def _clean(text: str) -> str:
    """A server's text as the terminal may show it: no control characters, bounded."""
    cleaned = _CONTROL.sub("?", text)
    return cleaned if len(cleaned) <= MAX_MESSAGE else cleaned[:MAX_MESSAGE] + "…"


def _segment(value: str) -> str:
    """``value`` as one path segment of a URL."""
    return quote(value, safe=":@")


def _given(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}
