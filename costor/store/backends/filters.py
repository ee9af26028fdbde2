"""Storage filters: wrappers that add one behaviour each to any :class:`Backend`.

Every filter takes the backend it wraps as ``inner``, has the same ``location``, keeps
the contract of ``base`` (a filter never turns a failed ``put`` into a returned one) and
forwards, unchanged, every operation it has no business with. Behaviour is added by
stacking filters, never by flags inside a backend (as restic's and Kopia's wrappers;
docs/architecture.md, "Storage: backends and filters"):

* :class:`RetryingBackend` — retries :class:`BackendTransient` (throttling included)
  with capped exponential back-off and full jitter, honouring ``retry_after``;
* :class:`RateLimitedBackend` — at most N requests per period, plus a shared hold of
  every caller when the storage says it is throttling;
* :class:`VerifyingBackend` — reads every ``put`` back and compares BLAKE3 digests,
  re-putting up to a bound, so "``put`` returned" means "stored and readable";
* :class:`ReadVerifyingBackend` — re-reads once a whole-object ``get`` of a
  content-addressed name whose bytes do not hash to the name.

:func:`wrap` (or :class:`StorageFilters`) stacks them in the one order that makes sense;
its docstring says why. Every filter is safe to call from several threads at once: the
only shared state is counters and the rate limiter's window, all under a lock, and no
lock is held while the inner backend is called or while a caller sleeps.

Time and sleeping go through ``clock`` / ``sleep`` parameters (``time.monotonic`` /
``time.sleep`` by default) so tests run on a fake clock.
"""

from __future__ import annotations

import builtins
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import blake3

from costor.errors import (
    BackendThrottled,
    BackendTransient,
    ObjectNotFound,
    WriteNotVerified,
)
from costor.store.backends.base import Backend, ForwardingBackend, ObjectInfo
from costor.util import hashthreads

Clock = Callable[[], float]
Sleep = Callable[[float], None]
T = TypeVar("T")


def full_jitter(cap: float) -> float:
    """A delay drawn uniformly from ``[0, cap]`` ("full jitter": callers that failed
    together spread out instead of retrying in lock-step)."""
    return random.uniform(0.0, cap)


def _digest(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data, max_threads=hashthreads.max_threads()).digest()


# --- retrying ------------------------------------------------------------------------


class RetryingBackend:
    """Retry operations that failed with :class:`BackendTransient`.

    * Only transient errors are retried (:class:`BackendThrottled` included). Permanent
      ones — any other ``BackendError`` (``ObjectNotFound``, ``WriteNotVerified``, a
      short read, a refused name), ``StorageFull``, anything that is not a backend
      error — propagate at once.
    * Every operation is retried: the contract makes them all idempotent. ``list`` is
      read to the end inside each attempt (a listing that fails half-way is started
      again, so nothing is yielded twice or skipped); this keeps one listing in memory.
    * The delay before retry *n* (1-based) is ``jitter(min(max_delay, base_delay *
      2**(n-1)))`` — full jitter by default — or the error's ``retry_after`` when that
      is longer. ``retry_after`` is what the server asked for, so it is honoured even
      above ``max_delay``.
    * After ``attempts`` calls in all, the last error is raised again as the same kind
      (``BackendThrottled`` or ``BackendTransient``, so layers above still see it as
      transient), its reason saying how many attempts were made, chained ``from`` it.

    Defaults: ``attempts=5``, ``base_delay=0.2`` s, ``max_delay=10.0`` s: four retries
    over at most ~3 s of back-off, enough for a dropped connection or a short burst of
    throttling, short enough that a dead storage fails the backup within seconds.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Sleep = time.sleep,
        jitter: Callable[[float], float] = full_jitter,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays cannot be negative")
        self.inner = inner
        self.location = inner.location
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.jitter = jitter
        self.retries = 0  # retries made (not counting first attempts)
        self.gave_up = 0  # operations that failed after every attempt
        self._lock = threading.Lock()

    def backoff(self, retry: int, error: BackendTransient) -> float:
        """The delay before retry number ``retry`` (1-based) after ``error``."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** min(retry - 1, 64))
        delay = self.jitter(cap)
        if error.retry_after is not None and error.retry_after > delay:
            delay = error.retry_after
        return delay

    def _call(self, operation: str, name: str, call: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except BackendTransient as error:
                if attempt == self.attempts:
                    with self._lock:
                        self.gave_up += 1
                    raise _gave_up(error, operation, name, self.attempts) from error
                with self._lock:
                    self.retries += 1
                self.sleep(self.backoff(attempt, error))
        raise AssertionError("unreachable")  # the loop returns or raises

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._call("put", name, lambda: self.inner.put(name, data))

    def get(self, name: str) -> bytes:
        return self._call("get", name, lambda: self.inner.get(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._call("get_range", name, lambda: self.inner.get_range(name, offset, length))

    def exists(self, name: str) -> bool:
        return self._call("exists", name, lambda: self.inner.exists(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        yield from self._call(
            "list", prefix or "(all)", lambda: builtins.list(self.inner.list(prefix))
        )

    def delete(self, name: str) -> None:
        self._call("delete", name, lambda: self.inner.delete(name))


def _gave_up(error: BackendTransient, operation: str, name: str, attempts: int) -> BackendTransient:
    """The last error again, same kind, its reason saying that retrying did not help."""
    kind = BackendThrottled if isinstance(error, BackendThrottled) else BackendTransient
    fields = dict(error.fields)
    fields.setdefault("name", name)
    reason = fields.get("reason", error.message)
    fields["reason"] = f"{reason} (gave up after {attempts} attempts at {operation})"
    return kind(retry_after=error.retry_after, **fields)


# --- rate limiting -------------------------------------------------------------------


class RateLimitedBackend:
    """At most ``requests`` requests in any ``per_seconds`` window, and a shared hold
    when the storage throttles.

    * **Budget**: a sliding window — a request starts only when fewer than
      ``requests`` requests started in the last ``per_seconds`` — so the limit holds
      over *every* window, bursts included (a token bucket would allow up to twice the
      rate across a window boundary). Every call is one request; ``list`` is one request
      per call, taken when its iteration starts. Callers block (sleep) until allowed.
    * **Reactive hold**: when the inner backend raises :class:`BackendThrottled`, every
      request from every thread is held until the storage has had its rest:
      ``retry_after`` seconds when the error says, else ``hold`` seconds (default 1 s),
      doubling with each further throttle up to ``max_hold`` (default 60 s) and back to
      ``hold`` after a request succeeds. Throttles of requests that were already in
      flight when the hold was set are one burst and do not double it again. The error
      still propagates: whether to retry is :class:`RetryingBackend`'s decision.

    Counters for reporting: ``requests_made`` (requests let through), ``throttled``
    (throttle errors seen), ``waited`` (seconds callers spent blocked, summed).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        requests: int,
        per_seconds: float,
        hold: float = 1.0,
        max_hold: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("rate limit needs requests >= 1 and per_seconds > 0")
        self.inner = inner
        self.location = inner.location
        self.requests = requests
        self.per_seconds = per_seconds
        self.hold = hold
        self.max_hold = max_hold
        self.clock = clock
        self.sleep = sleep
        self.requests_made = 0
        self.throttled = 0
        self.waited = 0.0
        self._lock = threading.Lock()
        self._starts: deque[float] = deque(maxlen=requests)  # the last N start times
        self._hold_until = -math.inf
        self._next_hold = hold
        self._hold_ticket = 0  # requests_made when the current hold was decided

    def _admit(self) -> int:
        """Block until a request may start; returns its ticket (1, 2, …)."""
        while True:
            with self._lock:
                now = self.clock()
                ready = self._hold_until
                if len(self._starts) == self.requests:
                    ready = max(ready, self._starts[0] + self.per_seconds)
                if ready <= now:
                    self._starts.append(now)
                    self.requests_made += 1
                    return self.requests_made
                wait = ready - now
                self.waited += wait
            # Re-checked after waking: another caller may have taken the slot, or a
            # throttle may have extended the hold meanwhile.
            self.sleep(wait)

    def _on_throttled(self, error: BackendThrottled, ticket: int) -> None:
        with self._lock:
            self.throttled += 1
            now = self.clock()
            if error.retry_after is not None:
                hold = error.retry_after
            elif ticket > self._hold_ticket:
                hold = self._next_hold
                self._next_hold = min(self._next_hold * 2, self.max_hold)
            else:
                return  # in flight before the current hold: same burst, already held
            self._hold_until = max(self._hold_until, now + hold)
            self._hold_ticket = self.requests_made

    def _on_success(self, ticket: int) -> None:
        with self._lock:
            if ticket > self._hold_ticket:  # admitted after the last hold: storage recovered
                self._next_hold = self.hold

    def _request(self, call: Callable[[], T]) -> T:
        ticket = self._admit()
        try:
            result = call()
        except BackendThrottled as error:
            self._on_throttled(error, ticket)
            raise
        self._on_success(ticket)
        return result

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._request(lambda: self.inner.put(name, data))

    def get(self, name: str) -> bytes:
        return self._request(lambda: self.inner.get(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._request(lambda: self.inner.get_range(name, offset, length))

    def exists(self, name: str) -> bool:
        return self._request(lambda: self.inner.exists(name))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        ticket = self._admit()
        try:
            yield from self.inner.list(prefix)
        except BackendThrottled as error:
            self._on_throttled(error, ticket)
            raise
        self._on_success(ticket)

    def delete(self, name: str) -> None:
        self._request(lambda: self.inner.delete(name))


# --- verifying -----------------------------------------------------------------------


class VerifyingBackend(ForwardingBackend):
    """Read every ``put`` back and compare its BLAKE3 digest with what was written.

    After each ``put`` (and a wait of ``delay`` seconds, for storage that makes new
    objects visible late), the object is read back whole. If it is missing
    (``ObjectNotFound``) or its bytes differ, it is put again and checked again, up to
    ``attempts`` puts in all (default 3); then :class:`WriteNotVerified` is raised. So a
    ``put`` that returns has been read back intact — never an unverified return.

    Any other error (transient, permanent, ``StorageFull``) propagates unchanged from
    the put or the read-back: retrying transient ones belongs to a
    :class:`RetryingBackend` *inside* this filter, so a throttled read-back is retried
    alone instead of uploading the object again. Reads, ``list``, ``exists`` and
    ``delete`` are forwarded. Costs one whole ``get`` per ``put``.

    Counters: ``verified`` (puts read back intact), ``rewrites`` (extra puts after a
    missing or differing read-back).
    """

    def __init__(
        self, inner: Backend, *, attempts: int = 3, delay: float = 0.0, sleep: Sleep = time.sleep
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        super().__init__(inner)
        self.attempts = attempts
        self.delay = delay
        self.sleep = sleep
        self.verified = 0
        self.rewrites = 0
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        expected = _digest(data)
        reason = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                with self._lock:
                    self.rewrites += 1
            self.inner.put(name, data)
            if self.delay > 0:
                self.sleep(self.delay)
            try:
                stored = self.inner.get(name)
            except ObjectNotFound:
                reason = "the object was not there when read back"
                continue
            if _digest(stored) == expected:
                with self._lock:
                    self.verified += 1
                return
            reason = f"read back {len(stored)} bytes that differ from the {len(data)} written"
        raise WriteNotVerified(name=name, attempts=self.attempts, reason=reason)


# Packs, index segments and snapshots are named by the unkeyed BLAKE3-256 of their
# stored bytes (docs/format.md, ``costor.store.pool``): ``packs/6e/fa/<hex>``,
# ``index/<hex>``, ``snapshots/<hex>``. Key slots and the identity file are not.
_CONTENT_ADDRESSED = re.compile(r"(?:packs/[0-9a-f]{2}/[0-9a-f]{2}|index|snapshots)/([0-9a-f]{64})")


def content_address(name: str) -> str | None:
    """The hex BLAKE3-256 a pool object's bytes must hash to, or None for names that
    are not content-addressed."""
    match = _CONTENT_ADDRESSED.fullmatch(name)
    return match.group(1) if match else None


class ReadVerifyingBackend(ForwardingBackend):
    """Re-read once a whole-object ``get`` whose bytes do not hash to their name.

    Only content-addressed names are checked (``expected_digest``, by default
    :func:`content_address`: packs, index segments, snapshots); others pass through.
    A mismatch is read again once — a corrupted transfer is not corrupted storage. If
    the second read is still wrong its bytes are returned as they are: the caller
    (``Pool.read_segment``, ``Pool.load_snapshot``, the checker) compares them with the
    name itself and reports ``DataCorruption`` with the context it has (the checker
    names the damaged blobs). This filter never raises for a mismatch.

    Ranged reads (``get_range``) are not checked: a range cannot be compared with a
    whole-object hash. The pool verifies each blob it reads by AEAD and blob id and
    raises ``DataCorruption`` for a corrupted range, so a restore that meets a
    corrupted ranged read fails loudly rather than writing wrong bytes.

    Counters: ``rereads`` (second reads made), ``mismatches`` (second read still wrong).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        expected_digest: Callable[[str], str | None] = content_address,
    ) -> None:
        super().__init__(inner)
        self.expected_digest = expected_digest
        self.rereads = 0
        self.mismatches = 0
        self._lock = threading.Lock()

    def get(self, name: str) -> bytes:
        data = self.inner.get(name)
        expected = self.expected_digest(name)
        if expected is None or _digest(data).hex() == expected:
            return data
        with self._lock:
            self.rereads += 1
        data = self.inner.get(name)
        if _digest(data).hex() != expected:
            with self._lock:
                self.mismatches += 1
        return data


# --- composition ---------------------------------------------------------------------


@dataclass(frozen=True)
class StorageFilters:
    """Which filters a pool's backend gets; :meth:`wrap` stacks them.

    The stack, outermost first (each layer calls the one below)::

        VerifyingBackend        verify_writes
        ReadVerifyingBackend    verify_reads
        RetryingBackend         retry
        RateLimitedBackend      rate_limit
        <the backend>

    Why this order:

    * **Rate limit innermost**, right on the backend, so it counts and paces every
      request the storage sees: retries, read-backs, re-puts and re-reads included.
      It is also where a throttle error is first seen, so the hold starts at once.
    * **Retry above the rate limit**: every retry passes the limiter again, so it waits
      out a throttling hold and cannot exceed the budget.
    * **Verify above retry**: transient failures of the put *or* of its read-back are
      retried by the retry layer, one request at a time (a throttled read-back does not
      re-upload a 32 MiB pack). Verification acts only on real evidence — the object
      missing or different — and gives up with ``WriteNotVerified``, a permanent error
      nothing below retries and nothing above loops on: at most ``verify_attempts`` ×
      ``retry_attempts`` uploads per ``put``. (Retry outermost instead would re-run the
      whole verified put for a transient read-back error, for the same guarantees.)
    * **Read verification between them**: the write verifier's read-back of a
      content-addressed object passes through it, so a read corrupted in transit is
      re-read instead of causing a needless re-upload, and its re-read is retried and
      rate limited like any read.

    Defaults: no verification, no rate limit, retries on (5 attempts, back-off from
    0.2 s: see :class:`RetryingBackend`), 3 verified-write attempts.
    """

    verify_writes: bool = False
    verify_delay: float = 0.0
    verify_attempts: int = 3
    verify_reads: bool = False
    rate_limit: tuple[int, float] | None = None  # (requests, per_seconds)
    retry: bool = True
    retry_attempts: int = 5
    retry_base_delay: float = 0.2

    def wrap(self, backend: Backend) -> Backend:
        stacked: Backend = backend
        if self.rate_limit is not None:
            requests, per_seconds = self.rate_limit
            stacked = RateLimitedBackend(stacked, requests=requests, per_seconds=per_seconds)
        if self.retry:
            stacked = RetryingBackend(
                stacked, attempts=self.retry_attempts, base_delay=self.retry_base_delay
            )
        if self.verify_reads:
            stacked = ReadVerifyingBackend(stacked)
        if self.verify_writes:
            stacked = VerifyingBackend(
                stacked, attempts=self.verify_attempts, delay=self.verify_delay
            )
        return stacked


def wrap(
    backend: Backend,
    *,
    verify_writes: bool = False,
    verify_delay: float = 0.0,
    rate_limit: tuple[int, float] | None = None,
    retry: bool = True,
    verify_reads: bool = False,
    retry_base_delay: float = 0.2,
) -> Backend:
    """``backend`` inside the filters asked for, in the order :class:`StorageFilters`
    explains. With nothing asked for (``retry=False``) it is ``backend`` itself."""
    return StorageFilters(
        verify_writes=verify_writes,
        verify_delay=verify_delay,
        rate_limit=rate_limit,
        retry=retry,
        verify_reads=verify_reads,
        retry_base_delay=retry_base_delay,
    ).wrap(backend)


F = TypeVar("F")


def find_filter(backend: object, kind: type[F]) -> F | None:
    """The first filter of type ``kind`` in a stack (following ``inner``), e.g. the
    rate limiter whose counters a backup report shows; None when there is none."""
    layer: object | None = backend
    while layer is not None:
        if isinstance(layer, kind):
            return layer
        layer = getattr(layer, "inner", None)
    return None
