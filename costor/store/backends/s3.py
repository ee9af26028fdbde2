"""A pool in an S3 bucket (AWS S3 or any S3-compatible server), through boto3.

How the backend contract (``base``) maps to S3:

* **Names** become object keys: ``prefix + name``. A non-empty prefix is normalised to
  end with ``/`` so ``site-a`` never sees ``site-ab``'s objects. Names are validated
  before any request (``validate_name``), so no key has ``..``, ``.`` or ``//`` parts.
* **put is atomic**: an S3 ``PutObject`` makes the object visible whole or not at all,
  and a ``CompleteMultipartUpload`` publishes all parts at once. Objects larger than
  ``multipart_threshold`` go up as a multipart upload whose parts are sent in
  ascending order; on any failure the upload is aborted, so no orphan parts stay
  billed. Every body carries a ``Content-MD5`` so a server that checks it refuses
  bytes damaged in transit instead of storing them.
* **Consistency**: S3 has strong read-after-write consistency for PUT, GET, HEAD,
  LIST and DELETE since December 2020; the contract's "an object whose put completed
  before list began is listed" relies on that (and on the same from S3-compatible
  servers).
* **get_range** sends ``Range: bytes=a-b`` and returns exactly ``length`` bytes or
  raises ``BackendError``; a server that ignores ``Range`` (answers the whole object
  with no ``Content-Range``) is sliced locally.
* **list** pages through ``ListObjectsV2`` with continuation tokens.
* **Errors** go through :func:`translate_error` only (see there). The botocore client
  is built with ``max_attempts=1``: retrying belongs to CoStor's retry wrapper, which
  needs the ``BackendTransient``/``BackendThrottled`` distinction and ``retry_after``.
* **Threads**: one botocore client per backend, created in ``__init__`` and shared by
  all threads (clients are thread-safe; sessions are not: clients are made from one
  module-wide session under a lock, and the session is used for nothing else).

What we do NOT rely on:

* conditional writes (``If-None-Match: *``): objects are content-named and immutable,
  a second identical put is harmless; moto enforces the header, rclone ignores it.
* listing order: pages are consumed as given, with no ``StartAfter`` arithmetic and
  no assumption that keys come sorted.
* the server's checksums (``x-amz-checksum-*``): botocore's default flexible
  checksums are switched to ``when_required``; pool objects are verified by their
  BLAKE3 names and AEAD anyway.

Differences met between the two servers the tests run (moto server mode and
``rclone serve s3``), all handled here:

* rclone answers a ranged GET with ``200`` (not ``206``) plus a correct
  ``Content-Range``, and, when asked for checksums, with the *whole object's* CRC32,
  which made botocore's default response validation fail every ranged read. Hence
  ``response_checksum_validation="when_required"`` and no reliance on the status code.
* moto accepts any credentials unless its IAM authentication is switched on (the test
  fixture does so); rclone checks ``--auth-key`` pairs.
* moto ignores a wrong ``Content-MD5``; rclone rejects it (``BadDigest``).
* moto accepts keys with ``..``/``//`` segments; rclone refuses them
  (``InvalidArgument``). ``validate_name`` refuses them first, for both.
* rclone does not implement ``ListMultipartUploads`` (answers ``404 NoSuchUpload``),
  so nothing here lists uploads: a failed multipart upload is aborted by its id.
* rclone hides keys whose last segment starts with ``.rclone_temp_`` and keeps only
  top-level directories as buckets; pool names never look like that.
* continuation tokens are opaque in both (moto: a hash, rclone: base64 of a key).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
import urllib3.exceptions
from botocore import exceptions as botoerr
from botocore.config import Config

from costor.errors import (
    BackendError,
    BackendThrottled,
    BackendTransient,
    CostorError,
    ObjectNotFound,
    ObjectTruncated,
    StorageFull,
)
from costor.store.backends.base import ObjectInfo, validate_name

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PARTS = 10_000
MAX_SINGLE_PUT = 5 * 1024**3

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "BandwidthLimitExceeded",
    "ServiceUnavailable",
    "503",
    "429",
}
_TRANSIENT_CODES = {
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "RequestTimeoutException",
    "IncompleteBody",
    "BadDigest",  # body damaged in transit: sending it again can succeed
    "OperationAborted",
    "500",
    "502",
    "504",
}
_FULL_CODES = {"XMinioStorageFull", "StorageFull", "InsufficientStorage", "QuotaExceeded"}
_FRIENDLY = {
    "AccessDenied": "access denied (check the credentials and the bucket's policy)",
    "InvalidAccessKeyId": "the access key is not known to the server",
    "SignatureDoesNotMatch": "request signature does not match (wrong secret key?)",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidRange": "requested range is outside the object",
    "InvalidBucketName": "invalid bucket name",
    "RequestTimeTooSkewed": "this machine's clock is too far from the server's",
    "ExpiredToken": "the session token has expired",
    # HEAD answers carry no body, so botocore reports the bare status as the code.
    "403": "access denied: wrong credentials or no permission (no detail for HEAD)",
    "400": "bad request",
}


def translate_error(
    error: BaseException, name: str, *, location: str = "", redact: Iterable[str] = ()
) -> CostorError:
    """The one place where S3/boto failures become CoStor errors.

    * ``NoSuchKey``/``NotFound``/404 → :class:`ObjectNotFound` (``NoSuchBucket`` and
      ``NoSuchUpload`` are 404s too, but permanent :class:`BackendError`\\ s);
    * 503, 429, ``SlowDown``, ``Throttling``, ``RequestLimitExceeded``… →
      :class:`BackendThrottled` with ``retry_after`` from a ``Retry-After`` header;
    * 500/502/504, ``InternalError``, ``RequestTimeout``, connection refused/reset/
      closed, timeouts, incomplete or broken bodies → :class:`BackendTransient`;
    * 507 or a server's "storage full" code → :class:`StorageFull`;
    * everything else (403 ``AccessDenied``, ``InvalidAccessKeyId``,
      ``SignatureDoesNotMatch``, ``NoSuchBucket``, missing credentials, bad
      parameters, certificate failures…) → permanent :class:`BackendError`.

    The reason never contains a string from ``redact`` (the secret key).
    """
    where = f"{location}: " if location else ""

    def clean(text: str) -> str:
        for secret in redact:
            if secret:
                text = text.replace(secret, "***")
        return where + text

    if isinstance(error, botoerr.ClientError):
        return _translate_client_error(error, name, clean)
    return _translate_transport_error(error, name, clean)


# Failures below the HTTP answer that sending again can cure.
_TRANSIENT_ERRORS = (
    botoerr.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSL, proxy
    botoerr.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, streaming
    botoerr.IncompleteReadError,
    botoerr.ChecksumError,
    urllib3.exceptions.HTTPError,  # ProtocolError, timeouts, IncompleteRead
    http.client.IncompleteRead,
    ConnectionError,  # ConnectionResetError, BrokenPipeError, ConnectionRefusedError
    TimeoutError,
)


def _translate_client_error(
    error: botoerr.ClientError, name: str, clean: Callable[[str], str]
) -> CostorError:
    """An answer from the server: by its code, else its HTTP status."""
    details = error.response.get("Error", {}) or {}
    meta = error.response.get("ResponseMetadata", {}) or {}
    code = str(details.get("Code") or "")
    status = int(meta.get("HTTPStatusCode") or 0)
    headers = meta.get("HTTPHeaders") or {}
    reason = clean(_client_reason(error, code, status, str(details.get("Message") or "")))
    if code in _NOT_FOUND_CODES or (status == 404 and not code.startswith("NoSuch")):
        return ObjectNotFound(name=name)
    if code in _THROTTLE_CODES or status in (429, 503):
        return BackendThrottled(
            name=name, reason=reason, retry_after=_retry_after(headers.get("retry-after"))
        )
    if code in _FULL_CODES or status == 507:
        return StorageFull(name=name, reason=reason)
    if code in _TRANSIENT_CODES or status in (500, 502, 504):
        return BackendTransient(
            name=name, reason=reason, retry_after=_retry_after(headers.get("retry-after"))
        )
    return BackendError(name=name, reason=reason)


def _client_reason(error: botoerr.ClientError, code: str, status: int, message: str) -> str:
    """What the server said, in words where its code has some, with the code, the
    status and the operation."""
    operation = getattr(error, "operation_name", "") or "request"
    said = [text for text in (_FRIENDLY.get(code), message) if text and text != code]
    if code.isdigit() and _FRIENDLY.get(code):
        said = [_FRIENDLY[code]]  # "Forbidden" adds nothing to it
    text = ": ".join(said) or code or "error"
    return f"{text} ({code or 'no code'}, HTTP {status}, {operation})"


def _translate_transport_error(
    error: BaseException, name: str, clean: Callable[[str], str]
) -> CostorError:
    """No answer from the server: the connection, the credentials, the certificate."""
    kind = type(error).__name__
    detail = clean(f"{kind}: {error}")
    if isinstance(error, botoerr.SSLError) and "CERTIFICATE" in str(error).upper():
        return BackendError(name=name, reason=detail)  # a configuration problem
    if isinstance(error, botoerr.NoCredentialsError | botoerr.PartialCredentialsError):
        return BackendError(name=name, reason=clean("no usable S3 credentials were found"))
    if isinstance(error, _TRANSIENT_ERRORS):
        return BackendTransient(name=name, reason=detail)
    return BackendError(name=name, reason=detail)


def _retry_after(value: Any) -> float | None:
    """``Retry-After`` is either seconds or an HTTP date."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_SESSION_LOCK = threading.Lock()
_SESSION: Any = None


def _make_client(**kwargs: Any) -> Any:
    """Clients come from one shared session, under a lock: sessions are not
    thread-safe, but creating clients from one reuses its parsed service models
    (a fresh session per backend costs ~0.1 s). Credentials are per client."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client("s3", **kwargs)


def _md5(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


class S3Backend:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        path_style: bool = False,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunk: int = 16 * 1024 * 1024,
        list_page_size: int = 1000,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_connections: int = 32,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 backend needs a bucket")
        if multipart_chunk < MIN_PART_SIZE:
            raise ValueError(f"multipart_chunk must be at least {MIN_PART_SIZE} bytes")
        if not 0 < multipart_threshold <= MAX_SINGLE_PUT:
            raise ValueError(f"multipart_threshold must be in 1..{MAX_SINGLE_PUT}")
        if not 1 <= list_page_size <= 1000:
            raise ValueError("list_page_size must be in 1..1000")
        prefix = prefix.strip("/")
        if prefix:
            validate_name(prefix)
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.location = f"s3://{bucket}/{prefix.rstrip('/')}".rstrip("/")
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk = multipart_chunk
        self.list_page_size = list_page_size
        self._redact = tuple(s for s in (secret_key,) if s)
        config = Config(
            signature_version="s3v4",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(16, max_connections),
            s3={"addressing_style": "path" if path_style else "auto"},
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="costor",
        )
        self._client = _make_client(
            endpoint_url=endpoint,
            region_name=region or ("us-east-1" if endpoint else None),
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )

    def __repr__(self) -> str:
        return f"S3Backend({self.location!r}, endpoint={self.endpoint!r})"

    def close(self) -> None:
        """Release pooled connections (the backend is unusable afterwards)."""
        self._client.close()

    # --- helpers ----------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + validate_name(name)

    def _error(self, error: BaseException, name: str) -> CostorError:
        return translate_error(error, name, location=self.location, redact=self._redact)

    # --- the protocol -----------------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        key = self._key(name)
        view = memoryview(data)
        if view.format != "B" or not view.c_contiguous:
            view = memoryview(view.tobytes())
        if view.nbytes <= self.multipart_threshold:
            # Packs arrive as a bytearray (botocore sends one as it is): no 32 MiB copy.
            body = data if isinstance(data, bytes | bytearray) else bytes(view)
            try:
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentMD5=_md5(body)
                )
            except Exception as error:
                raise self._error(error, name) from error
        else:
            self._put_multipart(name, key, view)

    def _put_multipart(self, name: str, key: str, view: memoryview) -> None:
        size = view.nbytes
        chunk = max(self.multipart_chunk, math.ceil(size / MAX_PARTS))
        try:
            upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)[
                "UploadId"
            ]
        except Exception as error:
            raise self._error(error, name) from error
        try:
            parts = []
            for number, start in enumerate(range(0, size, chunk), start=1):
                body = bytes(view[start : start + chunk])
                answer = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentMD5=_md5(body),
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException as error:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # the original failure is what matters; lifecycle rules catch the rest
            if isinstance(error, Exception):
                raise self._error(error, name) from error
            raise

    def get(self, name: str) -> bytes:
        key = self._key(name)
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key)
            data = _read_body(answer)
        except Exception as error:
            raise self._error(error, name) from error
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        key = self._key(name)
        if offset < 0 or length < 0:
            raise BackendError(name=name, reason=f"invalid range {offset}+{length}")
        if length == 0:
            if not self.exists(name):
                raise ObjectNotFound(name=name)
            return b""
        try:
            answer = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            data = _read_body(answer)
        except Exception as error:
            raise self._error(error, name) from error
        content_range = answer.get("ContentRange")
        if content_range:
            start = _range_start(content_range)
            if start != offset:
                raise BackendError(
                    name=name, reason=f"server sent range {content_range!r} for offset {offset}"
                )
        elif len(data) > length:
            data = data[offset : offset + length]  # the server ignored Range
        if len(data) != length:
            raise ObjectTruncated(name=name, got=len(data), length=length, offset=offset)
        return data

    def exists(self, name: str) -> bool:
        key = self._key(name)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            translated = self._error(error, name)
            if isinstance(translated, ObjectNotFound):
                return False
            raise translated from error
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
            "MaxKeys": self.list_page_size,
        }
        label = f"{prefix}*"
        seen_tokens: set[str] = set()
        while True:
            try:
                page = self._client.list_objects_v2(**request)
            except Exception as error:
                raise self._error(error, label) from error
            for item in page.get("Contents", ()):
                key = item["Key"]
                if not key.startswith(self.prefix) or key.endswith("/"):
                    continue  # "directory" markers made by consoles are not objects
                yield ObjectInfo(key[len(self.prefix) :], int(item["Size"]))
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token or token in seen_tokens:
                raise BackendError(
                    name=label, reason=f"{self.location}: listing truncated without a new token"
                )
            seen_tokens.add(token)
            request["ContinuationToken"] = token

    # --- the bucket itself (not part of the backend contract) ----------------------

    def bucket_exists(self) -> bool:
        """Whether the bucket exists: ``HeadBucket`` answers 404 only for a missing
        one. Any other failure (403: no permission to ask, unreachable…) raises."""
        label = f"bucket {self.bucket}"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botoerr.ClientError as error:
            status = (error.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = str((error.response.get("Error") or {}).get("Code") or "")
            if status == 404 or code in ("NoSuchBucket", "404", "NotFound"):
                return False
            raise self._error(error, label) from error
        except Exception as error:
            raise self._error(error, label) from error
        return True

    def create_bucket(self) -> None:
        """Create the bucket, in the client's region (``us-east-1`` takes no location
        constraint). One that already exists and is ours is not an error (AWS says
        ``BucketAlreadyOwnedByYou``; rclone says ``BucketAlreadyExists`` for its own);
        a name someone else owns is (it cannot be read: ``HeadBucket`` says 403)."""
        label = f"bucket {self.bucket}"
        request: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            request["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**request)
        except botoerr.ClientError as error:
            code = str((error.response.get("Error") or {}).get("Code") or "")
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists" and self._readable():
                return
            raise self._error(error, label) from error
        except Exception as error:
            raise self._error(error, label) from error

    def _readable(self) -> bool:
        try:
            return self.bucket_exists()
        except CostorError:
            return False

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            translated = self._error(error, name)
            if not isinstance(translated, ObjectNotFound):
                raise translated from error


def _read_body(answer: dict[str, Any]) -> bytes:
    """The whole body (botocore raises if it is shorter than Content-Length); the
    stream is closed even when reading fails, so no broken connection is reused."""
    body = answer["Body"]
    try:
        data: bytes = body.read()
    finally:
        body.close()
    return data


def _range_start(content_range: str) -> int | None:
    """``bytes 10-19/100`` → 10."""
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
