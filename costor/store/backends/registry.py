"""Backends by location scheme: one table says, for each scheme, how to parse a location
into the backend's settings, how to show them in a message (no secrets) and how to open
the backend (restic's ``internal/backend/location/registry.go``).

Every way of reaching storage goes through it: a pool of the inventory (``costor.ops``
turns its ``[pools.NAME]`` entry into :class:`BackendSettings`; the engine never sees
config) and a location typed on the command line (``costor pool copy``:
``s3://bucket/prefix``, ``file:///path``, a plain directory path, or a site's Backup
API, ``https://site:8443/api/v1/pools/NAME``).

Behaviour added on top of a backend (retries, rate limit, write verification, staging)
stays in wrappers (``filters``, ``staging``): :func:`open_backend` stacks the ones the
settings ask for around the bare backend the scheme opens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from costor.errors import UsageError
from costor.store.backends.base import Backend
from costor.store.backends.filters import StorageFilters
from costor.store.backends.local import LocalBackend
from costor.store.backends.staging import StagingBackend


@dataclass(frozen=True)
class BackendSettings:
    """Where a backend's objects are and how it is reached: plain values, so the engine
    needs no config model. ``scheme`` names the registry entry; each scheme reads only
    its own fields.

    ``filters``: the wrappers to stack around the bare backend (None: none at all, the
    backend itself); ``staging``: the local directory packs are staged in before their
    upload (``StagingBackend``, outermost), or None."""

    scheme: str
    # file
    path: Path | None = None
    # s3
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    path_style: bool = False
    # https (and http to loopback): a site's Backup API
    url: str = ""
    token: str | None = None
    server_ca: str | None = None
    server_fingerprint: str | None = None
    # wrappers
    filters: StorageFilters | None = None
    staging: Path | None = None


@dataclass(frozen=True)
class Scheme:
    """How one scheme's locations are parsed, shown and opened.

    * ``parse(text, environ)``: a location of this scheme (``text`` as typed, scheme
      included) -> its settings, taking what the text cannot carry (credentials,
      endpoint) from ``environ``; raises :class:`UsageError` on a malformed location.
    * ``redact(settings)``: the location for messages and logs — no secret, and the same
      text as the opened backend's ``location``.
    * ``open(settings)``: the bare backend (no filters).
    """

    name: str
    parse: Callable[[str, Mapping[str, str]], BackendSettings]
    redact: Callable[[BackendSettings], str]
    open: Callable[[BackendSettings], Backend]


SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> None:
    SCHEMES[scheme.name] = scheme


def scheme_of(text: str) -> str:
    """A location's scheme: the text before ``://``; a plain path is ``file``."""
    scheme, separator, _rest = text.partition("://")
    return scheme if separator else "file"


def parse_location(text: str, *, environ: Mapping[str, str] | None = None) -> BackendSettings:
    """The settings of a location typed by a user (no filters: the bare backend)."""
    scheme = SCHEMES.get(scheme_of(text))
    if scheme is None:
        names = [f"{name}://" for name in SCHEMES]
        known = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise UsageError(message=f"{text!r}: unknown location scheme (use a path, {known})")
    return scheme.parse(text, os.environ if environ is None else environ)


def redact(settings: BackendSettings) -> str:
    """The location of ``settings`` as messages show it (no credentials)."""
    return _scheme(settings).redact(settings)


def open_backend(settings: BackendSettings) -> Backend:
    """The backend of ``settings``, inside the wrappers they ask for: the filters (in
    :class:`StorageFilters`' order), then staging outermost, so uploads go through
    retry, rate limit and verification, and the barrier before index segments and
    snapshots waits for verified packs."""
    stack = _scheme(settings).open(settings)
    if settings.filters is not None:
        stack = settings.filters.wrap(stack)
    if settings.staging is not None:
        stack = StagingBackend(stack, settings.staging)
    return stack


def open_location(text: str, *, environ: Mapping[str, str] | None = None) -> Backend:
    """The bare backend of a location typed by a user."""
    return open_backend(parse_location(text, environ=environ))


def _scheme(settings: BackendSettings) -> Scheme:
    try:
        return SCHEMES[settings.scheme]
    except KeyError:
        raise ValueError(f"no backend registered for scheme {settings.scheme!r}") from None


# --- file: a directory on a local (or mounted) file system ---------------------------


def _parse_file(text: str, _environ: Mapping[str, str]) -> BackendSettings:
    return BackendSettings(scheme="file", path=Path(text.removeprefix("file://")).resolve())


def _redact_file(settings: BackendSettings) -> str:
    return str(settings.path)


def _open_file(settings: BackendSettings) -> Backend:
    assert settings.path is not None, "a file location needs a path"
    return LocalBackend(settings.path)


register(Scheme("file", _parse_file, _redact_file, _open_file))


# --- s3: a bucket (and a prefix in it) of AWS S3 or an S3-compatible server ---------


def _parse_s3(text: str, environ: Mapping[str, str]) -> BackendSettings:
    """``s3://bucket/prefix``; the endpoint, region, path style and credentials come
    from the environment (``COSTOR_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION``
    or ``AWS_DEFAULT_REGION``, ``COSTOR_S3_PATH_STYLE=1``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``)."""
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    if not bucket:
        raise UsageError(message=f"{text!r}: no bucket in the S3 location")
    return BackendSettings(
        scheme="s3",
        bucket=bucket,
        prefix=prefix,
        endpoint=environ.get("COSTOR_S3_ENDPOINT") or environ.get("AWS_ENDPOINT_URL"),
        region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"),
        access_key=environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=environ.get("AWS_SECRET_ACCESS_KEY"),
        path_style=environ.get("COSTOR_S3_PATH_STYLE") == "1",
    )


def _redact_s3(settings: BackendSettings) -> str:
    prefix = settings.prefix.strip("/")
    return f"s3://{settings.bucket}/{prefix}".rstrip("/")


def _open_s3(settings: BackendSettings) -> Backend:
    # Imported when an S3 location is opened: boto3 costs ~0.3 s of imports that a
    # command reaching only local pools does not pay.
    from costor.store.backends.s3 import S3Backend

    return S3Backend(
        bucket=settings.bucket,
        prefix=settings.prefix,
        endpoint=settings.endpoint,
        region=settings.region,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        path_style=settings.path_style,
    )


register(Scheme("s3", _parse_s3, _redact_s3, _open_s3))


# --- https: a pool on a site server, through its Backup API ---------------------------


def _parse_https(text: str, environ: Mapping[str, str]) -> BackendSettings:
    """``https://site:8443/api/v1/pools/NAME`` (``http://`` to a loopback address only);
    the token from ``COSTOR_TOKEN``, the server's certificate checked against the CA in
    ``COSTOR_SERVER_CA`` (a PEM file) or pinned by ``COSTOR_SERVER_FINGERPRINT``
    (``sha256:…``), else against the system's CAs. Bare, as every typed location: a
    caller that wants retries stacks the retry filter (its transient failures are
    :class:`~costor.errors.BackendTransient`)."""
    from costor.store.backends.http import parse_fingerprint, split_location

    try:
        url, _pool = split_location(text)
        fingerprint = environ.get("COSTOR_SERVER_FINGERPRINT") or None
        if fingerprint is not None:
            parse_fingerprint(fingerprint)
    except ValueError as error:
        raise UsageError(message=str(error)) from None
    return BackendSettings(
        scheme=scheme_of(text),
        url=url,
        token=environ.get("COSTOR_TOKEN") or None,
        server_ca=environ.get("COSTOR_SERVER_CA") or None,
        server_fingerprint=fingerprint,
    )


def _redact_https(settings: BackendSettings) -> str:
    return settings.url  # the token is never part of it


def _open_https(settings: BackendSettings) -> Backend:
    # Imported when such a location is opened, as S3's: most commands never need it.
    from costor.store.backends.http import HttpBackend

    return HttpBackend(
        settings.url,
        token=settings.token,
        ca_file=settings.server_ca,
        fingerprint=settings.server_fingerprint,
    )


register(Scheme("https", _parse_https, _redact_https, _open_https))
register(Scheme("http", _parse_https, _redact_https, _open_https))
